"""State store: keys by prefix and deletes that reach the file (OCPI keeps one key per item)."""

from __future__ import annotations

from pathlib import Path

from adapters.store import StateStore


def test_delete_and_keys_survive_a_reopen(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.sqlite")
    for i in range(3):
        store.put_json(f"ocpi:outbox:{i:03d}", {"id": i})
    store.put_json("other", 1)
    store.delete_json("ocpi:outbox:001")
    store.delete_json("never-there")
    assert store.keys("ocpi:outbox:") == ["ocpi:outbox:000", "ocpi:outbox:002"]
    store.put_json("ocpi:outbox:003", {"id": 3}, flush=False)
    store.delete_json("ocpi:outbox:003", flush=False)  # written and removed before a flush: nothing left
    store.close()
    again = StateStore(tmp_path / "state.sqlite")
    assert again.keys("ocpi:outbox:") == ["ocpi:outbox:000", "ocpi:outbox:002"]
    assert again.get_json("ocpi:outbox:001") is None and again.get_json("other") == 1
    again.close()
