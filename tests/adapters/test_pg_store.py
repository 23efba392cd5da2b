"""What the PostgreSQL store adds for a cluster: migrations at start, instances side by side, a silent database."""

from __future__ import annotations

import threading
import time
from urllib.parse import urlsplit

import psycopg

from adapters.cluster.migrations import MIGRATIONS, migrate
from adapters.cluster.pg_store import WAIT_S, PgStore
from tests.tcp_proxy import TcpProxy


def test_migrations_run_once_even_when_instances_start_together(pg_url: str) -> None:
    ran: list[int] = []

    def start() -> None:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            ran.append(migrate(conn))

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(ran) == [0, 0, 0, len(MIGRATIONS)]
    with psycopg.connect(pg_url) as conn:
        versions = [r[0] for r in conn.execute("SELECT version FROM schema_migrations ORDER BY version")]
    assert versions == list(range(1, len(MIGRATIONS) + 1))
    PgStore(pg_url, "late").close()  # a later start finds everything done


def test_instances_write_their_own_keys_and_read_each_others_on_refresh(pg_url: str) -> None:
    a, b = PgStore(pg_url, "a"), PgStore(pg_url, "b")
    a.put_json("controller:north", {"CP1": "a"})
    b.put_json("controller:south", {"CP9": "b"})
    a.put_json("forecast:south", {"kw": 1}, flush=False)  # pending here: a refresh keeps it
    assert a.get_json("controller:south") is None  # memory first: not read until asked
    assert a.refresh(["controller:south", "forecast:south"])
    assert a.get_json("controller:south") == {"CP9": "b"} and a.get_json("forecast:south") == {"kw": 1}
    b.delete_json("controller:south")
    assert a.refresh(prefix="controller:") and a.keys("controller:") == ["controller:north"]
    assert a.flush()
    a.close()
    b.close()
    again = PgStore(pg_url, "c")
    assert again.keys("") == ["controller:north", "forecast:south"]
    again.close()


def test_outbox_ids_are_unique_across_instances_and_each_delivers_its_own(pg_url: str) -> None:
    a, b = PgStore(pg_url, "a"), PgStore(pg_url, "b")
    ids_a = [a.enqueue("heartbeat", {"from": "a", "n": n}, {}) for n in range(3)]
    ids_b = [b.enqueue("heartbeat", {"from": "b", "n": n}, {}) for n in range(3)]
    assert not set(ids_a) & set(ids_b)
    a.close()
    b.close()
    again = PgStore(pg_url, "a")
    assert [i.id for i in again.due(1.0)] == ids_a
    assert again.enqueue("x", {}, {}) > max(ids_a + ids_b) and again.outbox_size() == 4
    again.close()


def test_a_database_that_goes_silent_costs_one_wait_and_nothing_is_lost(pg_url: str) -> None:
    url = urlsplit(pg_url)
    proxy = TcpProxy("127.0.0.1", int(url.port or 5432))
    try:
        store = PgStore(f"postgresql://postgres@127.0.0.1:{proxy.port}{url.path}", "a")
        store.put_json("forecast:depot", {"kw": 40})
        proxy.cut()
        started = time.monotonic()
        store.put_json("forecast:depot", {"kw": 12})
        first = time.monotonic() - started
        started = time.monotonic()
        for n in range(20):
            store.put_json("meter_import_wh:depot", n)
        later = time.monotonic() - started
        assert first < WAIT_S + 0.5 and later < 0.5, (first, later)
        assert store.fault is not None and store.pending == 2 and store.get_json("forecast:depot") == {"kw": 12}
        proxy.heal()
        end = time.monotonic() + 15
        while not store.flush():
            assert time.monotonic() < end, store.fault
            time.sleep(0.2)
        assert store.fault is None and store.pending == 0
        store.close()
    finally:
        proxy.close()
    check = PgStore(pg_url, "b")
    assert check.get_json("forecast:depot") == {"kw": 12} and check.get_json("meter_import_wh:depot") == 19
    check.close()
