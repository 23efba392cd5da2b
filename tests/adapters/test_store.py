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


def test_a_restart_on_a_full_disk_reads_the_state_and_writes_it_later(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "state", "1m") as state:
        store = StateStore(state / "state.sqlite")
        store.put_json("controller:depot", {"CP1": "tx1"})
        item = store.enqueue("heartbeat", {"n": 1}, {})
        store.close()  # a clean close leaves no -wal or -shm: opening would have to create them
        filler = fill(state / "filler")

        again = StateStore(state / "state.sqlite")
        assert again.get_json("controller:depot") == {"CP1": "tx1"}
        assert [i.id for i in again.due(1.0)] == [item]
        assert again.fault is not None
        again.put_json("controller:depot", {"CP1": "tx1", "CP2": "tx2"})
        assert not again.flush()

        filler.unlink()
        assert again.flush() and again.fault is None
        again.close()
        assert StateStore(state / "state.sqlite").get_json("controller:depot") == {"CP1": "tx1", "CP2": "tx2"}


def test_a_first_start_on_a_full_disk_runs_from_memory(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "state", "1m") as state:
        filler = fill(state / "filler")
        store = StateStore(state / "state.sqlite")
        assert store.get_json("forecast:depot") is None and store.fault is not None
        store.put_json("forecast:depot", {"kw": 12})
        filler.unlink()
        assert store.flush()
        store.close()
        assert StateStore(state / "state.sqlite").get_json("forecast:depot") == {"kw": 12}
