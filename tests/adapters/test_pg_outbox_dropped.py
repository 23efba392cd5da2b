"""A message of the cluster's outbox given up on is recorded as dropped, never as delivered."""

from __future__ import annotations

import psycopg

from adapters.cluster.pg_store import PgStore
from tests.cluster_fixtures import hold_sites


def test_a_dropped_message_is_marked_dropped_not_sent_and_never_claimed_again(pg_url: str) -> None:
    store = PgStore(pg_url, "a")
    holder, epochs = hold_sites(pg_url, "a", ["north"])
    store.lead_site, store.owned = "north", lambda: epochs
    given_up = store.enqueue("https://party/results/1", {"n": 1}, {}, site_id="north", channel="ocpi")
    retried = store.enqueue("https://party/results/2", {"n": 2}, {}, site_id="north", channel="ocpi")
    sent = store.enqueue("https://party/results/3", {"n": 3}, {}, site_id="north", channel="ocpi")
    assert sorted(i.id for i in store.due(1.0, channel="ocpi")) == [given_up, retried, sent]
    store.drop(given_up, channel="ocpi")
    store.retry_later(retried, 0.0, channel="ocpi")
    store.delivered(sent, channel="ocpi")
    assert [i.id for i in store.due(1.0, channel="ocpi")] == [retried]  # the dropped one is done with
    assert store.outbox_size(channel="ocpi") == 1 and store.dropped == 1 and store.pending == 0
    with psycopg.connect(pg_url) as conn:
        rows = conn.execute("SELECT id, sent_at IS NOT NULL, dropped_at IS NOT NULL, dropped_by FROM outbox "
                            "ORDER BY id").fetchall()
        dropped = conn.execute("SELECT id FROM outbox WHERE dropped_at IS NOT NULL").fetchall()
    assert rows == [(given_up, False, True, "a"), (retried, False, False, None), (sent, True, False, None)], rows
    assert dropped == [(given_up,)]  # what an operator asks to see what was never delivered
    store.close()
    holder.close()
