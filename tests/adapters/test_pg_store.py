"""What the PostgreSQL store adds for a cluster: migrations at start, instances side by side, a silent database."""

from __future__ import annotations

import threading
import time
from urllib.parse import urlsplit

import psycopg
import pytest

from adapters.cluster.migrations import MIGRATIONS, migrate
from adapters.cluster.pg_store import WAIT_S, PgStore
from adapters.cluster.shared_outbox import POST_WINDOW_S, STALE_CLAIM_S, claim, mark
from adapters.oscp.client import POST_TIMEOUT_S
from tests.cluster_fixtures import hold_sites
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
    b.put_json("controller:west", {"CP5": "b"})  # a key new to ``a``: a prefix's refresh reads it too
    assert a.refresh(prefix="controller:") and a.keys("controller:") == ["controller:north", "controller:west"]
    b.delete_json("controller:west")
    assert a.refresh(prefix="controller:") and a.keys("controller:") == ["controller:north"]
    assert a.flush()
    a.close()
    b.close()
    again = PgStore(pg_url, "c")
    assert again.keys("") == ["controller:north", "forecast:south"]
    again.close()


def test_outbox_ids_are_unique_across_instances_and_the_sites_owner_delivers_every_message(pg_url: str) -> None:
    a, b = PgStore(pg_url, "a"), PgStore(pg_url, "b")
    holder, epochs = hold_sites(pg_url, "a", ["north"])
    for store in (a, b):
        store.lead_site = "north"
    ids_a = [a.enqueue("heartbeat", {"from": "a", "n": n}, {}, site_id="north") for n in range(3)]
    ids_b = [b.enqueue("handshake_acknowledge", {"from": "b", "n": n}, {}) for n in range(3)]  # no site: the lead's
    assert not set(ids_a) & set(ids_b)
    b.owned = lambda: epochs  # b believes it owns north (say, a stale view): the lock says otherwise
    assert b.due(1.0) == []
    a.owned = lambda: epochs
    assert sorted(i.id for i in a.due(1.0)) == sorted(ids_a + ids_b)
    a.close()  # its claims are given back
    b.close()
    again = PgStore(pg_url, "a")
    again.lead_site, again.owned = "north", lambda: epochs
    assert sorted(i.id for i in again.due(1.0)) == sorted(ids_a + ids_b)
    assert again.outbox_size() == 6  # waiting for north, as of the last claim
    assert again.enqueue("x", {}, {}) > max(ids_a + ids_b)
    again.close()
    holder.close()


def test_a_new_owner_sends_what_the_old_one_claimed_once_its_post_has_timed_out(
        pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    old, new = PgStore(pg_url, "old"), PgStore(pg_url, "new")
    holder, epochs = hold_sites(pg_url, "old", ["north"])
    old.owned = lambda: epochs
    sent = old.enqueue("update_group_measurements", {"n": 1}, {"X-Request-ID": "r1"}, site_id="north")
    claimed = old.enqueue("update_group_measurements", {"n": 2}, {"X-Request-ID": "r2"}, site_id="north")
    assert [i.id for i in old.due(1.0)] == [sent, claimed]
    old.delivered(sent)
    holder.close()  # "old" dies mid-POST of the second message (its lock goes with its backend)
    holder, taken = hold_sites(pg_url, "new", ["north"])
    assert taken["north"] == epochs["north"] + 1
    new.owned = lambda: taken
    assert new.due(1.0) == []  # the claim is fresh: old's POST may still be under way
    monkeypatch.setattr("adapters.cluster.shared_outbox.STALE_CLAIM_S", 0.0)
    again = new.due(1.0)
    assert [(i.id, i.headers) for i in again] == [(claimed, {"X-Request-ID": "r2"})]  # same request id
    new.delivered(claimed)
    old.delivered(claimed)  # old's POST had gone through after all: counted, not hidden
    assert old.duplicates == 1 and new.duplicates == 0
    with psycopg.connect(pg_url) as conn:
        rows = conn.execute("SELECT id, sent_by, claims FROM outbox ORDER BY id").fetchall()
    assert rows == [(sent, "old", 1), (claimed, "new", 2)]
    for store in (old, new):
        store.close()
    holder.close()


def test_rows_of_a_claim_whose_answer_came_too_late_are_claimed_again_and_posted_only_while_fresh(
        pg_url: str) -> None:
    store = PgStore(pg_url, "a")
    holder, epochs = hold_sites(pg_url, "a", ["north"])
    store.owned, store.lead_site = (lambda: epochs), "north"
    ids = [store.enqueue("heartbeat", {"n": n}, {"X-Request-ID": f"r{n}"}, site_id="north") for n in range(2)]
    with psycopg.connect(pg_url, autocommit=True) as conn:  # a claim that ran, its answer lost (WAIT_S)
        claim(conn, "a", epochs, "north", 1.0, 50, [])
    started = time.monotonic()
    items = store.due(1.0)
    assert [i.id for i in items] == ids  # not stuck as claimed by a for good
    assert all(started < i.post_by <= time.monotonic() + POST_WINDOW_S for i in items)
    # a POST begun within the window is over before another owner may claim the row again
    assert POST_WINDOW_S + POST_TIMEOUT_S < STALE_CLAIM_S
    store.close()
    holder.close()


def test_a_late_answer_to_our_own_mark_is_not_counted_as_a_message_sent_twice(pg_url: str) -> None:
    store = PgStore(pg_url, "a")
    holder, epochs = hold_sites(pg_url, "a", ["north"])
    store.owned, store.lead_site = (lambda: epochs), "north"
    sent = store.enqueue("heartbeat", {}, {"X-Request-ID": "r1"}, site_id="north")
    assert [i.id for i in store.due(1.0)] == [sent]
    with psycopg.connect(pg_url, autocommit=True) as conn:
        assert mark(conn, "a", [sent], {}) == 0
        assert mark(conn, "a", [sent], {}) == 0  # the same mark again (its first answer came too late)
        assert mark(conn, "b", [sent], {}) == 1  # b sent it too: a double
    store.close()
    holder.close()


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
