"""The cluster's one outbox in PostgreSQL: each message delivered by its site's owner, once.

Any instance may queue a message (a compliance error of a site it controls, the acknowledgement
of a handshake the grid operator sent it); the row names its site (``site_id``, NULL for the
whole deployment, delivered by the owner of the first site of the config, the *lead* site). Only
the instance controlling a row's site delivers it, so a message survives its author: the next
owner sends what a dead one queued.

A delivery runs in three short transactions, never one held across the HTTP call:

* **claim**: rows of sites whose ``cluster_sites`` row says this instance owns them at the epoch
  it believes, *and* whose advisory lock a backend of this instance holds (the fencing check),
  are marked ``claimed_by`` / ``claim_epoch`` in the same transaction (``FOR UPDATE SKIP LOCKED``).
  A row claimed under an older epoch (its claimer lost the site, maybe mid-POST) is claimed again
  only after ``STALE_CLAIM_S``, when that POST has timed out.
* **post** (outside the database), each row only within ``POST_WINDOW_S`` of its claim: a POST
  started then has ended (``POST_TIMEOUT_S``) before anyone may claim the row again, even if this
  instance lost the site meanwhile; the rest of the batch is claimed again first,
* **mark**: ``sent_at`` right after each 2xx (a retry for a failure, the claim released), or
  ``dropped_at`` for a message its sender gave up on (an OCPI callback past its timeout): a row
  is pending while it has neither.

Rows this instance claimed and still holds when it claims again (a claim whose answer came too
late, after ``WAIT_S``) are its own to claim again: its one drainer has nothing in flight then.

Exactly once, except when an owner dies (or is cancelled) between a POST the grid operator
accepted and its mark: the next owner sends it again with the same ``X-Request-ID`` (kept in the
row), which is what OSCP offers a receiver to drop a repeat (our own endpoint does). ``mark``
counts rows another instance had marked sent already.
"""

from __future__ import annotations

import json
from typing import Any

import psycopg

from adapters.cluster.ownership import LOCK_NAMESPACE
from adapters.oscp.client import POST_TIMEOUT_S
from adapters.store_memory import OutboxItem

__all__ = ["CHANNELS", "KEEP_DROPPED_S", "KEEP_SENT_S", "POST_WINDOW_S", "STALE_CLAIM_S", "claim", "mark"]

CHANNELS = ("oscp", "ocpi")
"""What a row is: an OSCP message to the grid operator, or an OCPI callback to a party."""

POST_WINDOW_S = 1.0
"""A claimed row is POSTed only this soon after its claim (then claimed again first)."""
STALE_CLAIM_S = POST_WINDOW_S + POST_TIMEOUT_S + 1.0
"""A claim under an older epoch is taken over after this long: its POST started within
``POST_WINDOW_S`` and has ended (``POST_TIMEOUT_S``) by then, with a second to spare."""
KEEP_SENT_S = 3600.0
"""Sent rows are kept this long (who sent what when), then deleted."""
KEEP_DROPPED_S = 7 * 86400.0
"""Dropped rows are kept this long: what a party never got, for the operator to look into."""

_CLAIM = """
WITH mine AS (
    SELECT s.site_id, s.epoch FROM cluster_sites s
    JOIN unnest(%(sites)s::text[], %(epochs)s::bigint[]) AS m(site_id, epoch) ON m.site_id = s.site_id
    WHERE s.epoch = m.epoch AND s.owner = %(me)s AND EXISTS (
        SELECT 1 FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
        WHERE l.locktype = 'advisory' AND l.granted AND l.classid = %(ns)s::oid
          AND l.objid = s.lock_key::oid AND l.objsubid = 2 AND a.application_name = %(app)s)
), picked AS (
    SELECT o.id, mine.epoch FROM outbox o JOIN mine ON mine.site_id = coalesce(o.site_id, %(lead)s)
    WHERE o.sent_at IS NULL AND o.dropped_at IS NULL AND o.next_try <= %(now)s AND o.channel = %(channel)s
      AND (o.claimed_by IS NULL OR o.claimed_by = %(me)s
           OR (o.claim_epoch < mine.epoch AND o.claimed_at < now() - make_interval(secs => %(stale)s)))
    ORDER BY o.created, o.id LIMIT %(limit)s
    FOR UPDATE OF o SKIP LOCKED
)
UPDATE outbox o SET claimed_by = %(me)s, claim_epoch = picked.epoch, claimed_at = now(), claims = o.claims + 1
FROM picked WHERE o.id = picked.id
RETURNING o.id, o.path, o.body, o.headers, o.attempts, o.next_try, o.created, o.site_id, o.channel
"""
_WAITING = """
SELECT count(*) FROM outbox o WHERE o.sent_at IS NULL AND o.dropped_at IS NULL
    AND coalesce(o.site_id, %(lead)s) = ANY(%(sites)s) AND o.channel = %(channel)s
"""


def claim(db: psycopg.Connection[Any], me: str, owned: dict[str, int], lead: str, now: float,
          limit: int, release: list[int], channel: str = "oscp") -> tuple[list[OutboxItem], int]:
    """Release ``release`` (claimed earlier and neither sent nor failed), claim what is due on
    ``channel`` of the sites in ``owned`` (site -> epoch), in one transaction; returns the rows and
    how many messages of those sites wait on the channel in all."""
    with db.transaction():
        if release:
            db.execute("UPDATE outbox SET claimed_by = NULL WHERE id = ANY(%s) AND claimed_by = %s "
                       "AND sent_at IS NULL", (release, me))
        sites = sorted(owned)
        params = {"sites": sites, "epochs": [owned[s] for s in sites], "me": me, "app": f"balancer:{me}",
                  "ns": LOCK_NAMESPACE, "lead": lead, "now": now, "stale": STALE_CLAIM_S, "limit": limit,
                  "channel": channel}
        rows = db.execute(_CLAIM, params).fetchall() if sites else []
        found = db.execute(_WAITING, params).fetchone() if sites else None
    items = [OutboxItem(int(r[0]), r[1], json.loads(r[2]), json.loads(r[3]), r[4], r[5], r[6], r[7], channel=r[8])
             for r in sorted(rows, key=lambda r: (r[6], r[0]))]
    return items, int(found[0]) if found else 0


def mark(db: psycopg.Connection[Any], me: str, sent: list[int], retries: dict[int, float],
         dropped: list[int] | None = None) -> int:
    """Record deliveries, failures and messages given up on (one transaction); returns how many
    ``sent`` rows another instance had marked sent already (delivered twice: a mark of ours whose
    answer came too late is not one), and deletes rows sent more than ``KEEP_SENT_S`` ago (dropped,
    ``KEEP_DROPPED_S``)."""
    with db.transaction():
        again = 0
        if sent:
            db.execute("UPDATE outbox SET sent_at = now(), sent_by = %s, claimed_by = NULL "
                       "WHERE id = ANY(%s) AND sent_at IS NULL", (me, sent))
            found = db.execute("SELECT count(*) FROM outbox WHERE id = ANY(%s) AND sent_by <> %s",
                               (sent, me)).fetchone()
            again = int(found[0]) if found else 0
        for item_id, next_try in retries.items():  # not when another instance has claimed it since
            db.execute("UPDATE outbox SET claimed_by = NULL, attempts = attempts + 1, next_try = %s "
                       "WHERE id = %s AND coalesce(claimed_by, %s) = %s AND sent_at IS NULL AND dropped_at IS NULL",
                       (next_try, item_id, me, me))
        if dropped:
            db.execute("UPDATE outbox SET dropped_at = now(), dropped_by = %s, claimed_by = NULL "
                       "WHERE id = ANY(%s) AND sent_at IS NULL AND dropped_at IS NULL", (me, dropped))
        db.execute("DELETE FROM outbox WHERE sent_at < now() - make_interval(secs => %s) "
                   "OR dropped_at < now() - make_interval(secs => %s)", (KEEP_SENT_S, KEEP_DROPPED_S))
    return again
