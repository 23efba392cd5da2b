"""The state store on a real file system that runs full: nothing raises, nothing is lost."""

from __future__ import annotations

from pathlib import Path

from adapters.store import StateStore
from tests.disk import fill, small_tmpfs


def test_writes_on_a_full_disk_are_kept_and_written_when_space_returns(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "state", "1m") as state:
        store = StateStore(state / "state.sqlite")
        store.put_json("forecast:depot", {"kw": 40})
        first = store.enqueue("heartbeat", {"n": 1}, {})
        filler = fill(state / "filler")

        store.put_json("forecast:depot", {"kw": 12})  # no exception: memory first
        second = store.enqueue("heartbeat", {"n": 2}, {})
        store.delivered(first)
        store.retry_later(second, 0.0)
        assert store.get_json("forecast:depot") == {"kw": 12}
        assert [item.body for item in store.due(1.0)] == [{"n": 2}]
        assert store.fault is not None and "full" in store.fault
        assert store.pending == 3 and store.failures >= 1
        assert not store.flush()

        filler.unlink()
        assert store.flush() and store.fault is None and store.pending == 0
        store.close()
        again = StateStore(state / "state.sqlite")
        assert again.get_json("forecast:depot") == {"kw": 12}
        assert [(item.id, item.body, item.attempts) for item in again.due(1.0)] == [(second, {"n": 2}, 1)]
        assert again.enqueue("heartbeat", {"n": 3}, {}) > second  # ids are never reused
        again.close()
