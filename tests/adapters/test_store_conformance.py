"""One suite, two engines: the SQLite ``StateStore`` and the PostgreSQL ``PgStore`` keep the same contract.

Each test gets a ``Backend``: ``open()`` a store on the same persistent state (a restart),
``cut()`` the engine away so writes fail, ``heal()`` it again.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from adapters.store import StateStore
from adapters.store_port import Store
from tests.cluster_fixtures import hold_sites
from tests.disk import fill, small_tmpfs


class Backend:
    def open(self) -> Store:
        raise NotImplementedError

    def cut(self) -> None:
        raise NotImplementedError

    def heal(self) -> None:
        raise NotImplementedError


class SqliteBackend(Backend):
    def __init__(self, state: Path) -> None:
        self.state = state
        self.filler: Path | None = None

    def open(self) -> Store:
        return StateStore(self.state / "state.sqlite")

    def cut(self) -> None:
        self.filler = fill(self.state / "filler")

    def heal(self) -> None:
        assert self.filler is not None
        self.filler.unlink()


class PgBackend(Backend):
    """The store of instance ``one``, which controls the one site its messages are about."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.admin = url.rsplit("/", 1)[0] + "/postgres"
        self.name = url.rsplit("/", 1)[1]
        self.holder: Any = None
        self.epochs: dict[str, int] = {}

    def open(self) -> Store:
        from adapters.cluster.pg_store import PgStore

        store = PgStore(self.url, "one")
        if self.holder is None or self.holder.closed or self.holder.broken:
            self.holder, self.epochs = hold_sites(self.url, "one", ["depot"])
        store.owned = lambda: self.epochs
        store.lead_site = "depot"
        return store

    def cut(self) -> None:
        with psycopg.connect(self.admin, autocommit=True) as conn:
            conn.execute(f"ALTER DATABASE {self.name} ALLOW_CONNECTIONS false".encode())
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (self.name,))

    def heal(self) -> None:
        with psycopg.connect(self.admin, autocommit=True) as conn:
            conn.execute(f"ALTER DATABASE {self.name} ALLOW_CONNECTIONS true".encode())
        self.holder, self.epochs = hold_sites(self.url, "one", ["depot"])  # its lock went with its backend


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "sqlite":
        with small_tmpfs(tmp_path / "state", "1m") as state:
            yield SqliteBackend(state)
    else:
        yield PgBackend(request.getfixturevalue("pg_url"))


def test_keys_round_trip_and_survive_a_restart(backend: Backend) -> None:
    store = backend.open()
    store.put_json("forecast:depot", {"kw": 40, "blocks": [1.5, None]})
    store.put_json("forecast:yard", [1, 2])
    store.put_json("controller:depot", {"CP1": "tx1"})
    store.delete_json("forecast:yard")
    store.delete_json("never:there")
    assert store.keys("forecast:") == ["forecast:depot"]
    assert store.get_json("forecast:depot") == {"kw": 40, "blocks": [1.5, None]}
    assert store.get_json("forecast:yard") is None
    assert store.pending == 0 and store.fault is None
    store.close()
    again = backend.open()
    assert again.keys("") == ["controller:depot", "forecast:depot"]
    assert again.get_json("controller:depot") == {"CP1": "tx1"}
    again.close()


def test_unflushed_changes_wait_for_flush_and_unchanged_values_cost_nothing(backend: Backend) -> None:
    store = backend.open()
    store.put_json("a", 1)
    store.put_json("a", 1, flush=False)
    assert store.pending == 0  # the same value again is no change
    store.put_json("a", 2, flush=False)
    store.delete_json("a", flush=False)
    store.put_json("b", "x", flush=False)
    assert store.pending == 2
    other = backend.open()  # another reader sees only what was written
    assert other.get_json("a") == 1 and other.get_json("b") is None
    other.close()
    before = store.saved_at
    assert store.flush() and store.pending == 0 and store.saved_at >= before
    store.close()
    again = backend.open()
    assert again.get_json("a") is None and again.get_json("b") == "x"
    again.close()


def test_the_outbox_keeps_order_attempts_and_never_reuses_an_id(backend: Backend) -> None:
    store = backend.open()
    ids = [store.enqueue("heartbeat", {"n": n}, {"X-Request-ID": str(n)}) for n in range(4)]
    assert ids == sorted(ids) and len(set(ids)) == 4
    store.retry_later(ids[1], 1000.0)
    store.delivered(ids[2])
    store.delivered(ids[2])  # twice: nothing more happens
    assert [i.id for i in store.due(999.0)] == [ids[0], ids[3]]
    assert [i.id for i in store.due(999.0, limit=1)] == [ids[0]]
    assert [i.id for i in store.due(1000.0)] == [ids[0], ids[1], ids[3]]
    assert store.outbox_size() == 3
    store.close()
    again = backend.open()
    items = {i.id: i for i in again.due(1000.0)}
    assert list(items) == [ids[0], ids[1], ids[3]]
    assert items[ids[1]].attempts == 1 and items[ids[1]].next_try == 1000.0
    assert items[ids[3]].body == {"n": 3} and items[ids[3]].headers == {"X-Request-ID": "3"}
    assert again.enqueue("heartbeat", {"n": 4}, {}) > ids[3]
    again.close()


def test_writes_while_the_engine_is_away_are_kept_and_written_when_it_returns(backend: Backend) -> None:
    store = backend.open()
    store.put_json("forecast:depot", {"kw": 40})
    first = store.enqueue("heartbeat", {"n": 1}, {})
    backend.cut()
    try:
        store.put_json("forecast:depot", {"kw": 12})  # no exception: memory first
        second = store.enqueue("heartbeat", {"n": 2}, {})
        store.delivered(first)
        assert store.get_json("forecast:depot") == {"kw": 12}
        # One process delivers from memory; a cluster member cannot check who owns the message
        # without its database, so it delivers nothing until the database is back.
        expected = [{"n": 2}] if isinstance(backend, SqliteBackend) else []
        assert [item.body for item in store.due(1.0)] == expected
        assert store.fault is not None and store.failures >= 1 and store.pending == 3
        assert not store.flush()
    finally:
        backend.heal()
    assert store.flush() and store.fault is None and store.pending == 0
    store.close()
    again = backend.open()
    assert again.get_json("forecast:depot") == {"kw": 12}
    assert [i.id for i in again.due(1.0)] == [second]
    again.close()


def test_request_ids_applied_are_remembered_across_a_restart(backend: Backend) -> None:
    store = backend.open()
    assert not store.seen_request("r1")
    store.remember_request("r1")
    assert store.seen_request("r1") and not store.seen_request("r2")
    store.close()
    again = backend.open()
    assert again.seen_request("r1") and not again.seen_request("r2")
    again.close()
