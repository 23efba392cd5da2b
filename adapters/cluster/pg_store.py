"""The state store on PostgreSQL, for cluster mode: the same contract as the SQLite ``StateStore``.

Memory is what the service runs on; the database follows it. Every key is read at start and kept
in memory, writes go out in one transaction per ``flush()`` and a failed write stays pending and
is retried (``fault``, ``failures``, a rate-limited log line), exactly as with SQLite. Only the
keys this instance changed are written, so instances writing different keys (each the sites it
owns) never overwrite each other; ``refresh()`` reads keys again that another instance may have
written (a site's state when it is taken over).

Calls are synchronous, from the event loop's thread, like SQLite's, but the database work runs
on one writer thread and the caller waits at most ``WAIT_S`` for it: a database that went away
(or a route that silently drops packets) costs one call that long, later calls fail at once while
that write is still stuck, and control goes on from memory. The connection also has short
timeouts of its own (``connect_timeout``, ``tcp_user_timeout``, ``statement_timeout``). None of
them ends a query sent into a middlebox that acknowledges every packet and forwards none (a
proxy or NAT on the far side of a partition): nothing stays unacknowledged, keep-alives are
answered. Such a call is cut short by shutting its connection's socket down (``_abort``) once it
has run ``STUCK_S``, and at once by ``close()``: the process waits for the writer thread at exit.

The outbox is the cluster's, not the instance's (``adapters.cluster.shared_outbox``): a queued
message is written at once (kept in memory only until that write succeeds); ``due`` claims the
rows of the sites this instance controls (``owned``, set by the cluster node), ``delivered`` and
``retry_later`` mark them. Two channels, each with its own delivery loop: ``oscp`` (the OSCP
client's messages) and ``ocpi`` (the OCPI callbacks). Ids: each start draws a block from the
``outbox_block`` sequence and numbers its messages ``block << 32 | n``, so ids are unique across
instances.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import psycopg

from adapters.cluster.migrations import migrate
from adapters.cluster.shared_outbox import CHANNELS, POST_WINDOW_S, claim, mark
from adapters.store_memory import SEEN_KEEP_S, MemoryFirstStore, OutboxItem

__all__ = ["PgStore", "connect"]

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 3
TCP_USER_TIMEOUT_MS = 3000
STATEMENT_TIMEOUT_MS = 5000
WAIT_S = 1.0
"""How long a call waits for the database before it reports a fault and goes on from memory."""
STUCK_S = STATEMENT_TIMEOUT_MS / 1000 + 2
"""A call without an answer for this long will get none (the server ends each statement within
``statement_timeout``; a call is a few short ones): its connection is shut down, so later calls
get the writer thread back (on a new connection)."""
CLOSE_WAIT_S = CONNECT_TIMEOUT_S + 2
"""How long ``close()`` waits for the writer thread: a stuck call cut short ends at once, a
connection attempt within its ``connect_timeout``."""


def connect(url: str, *, application_name: str = "balancer", autocommit: bool = True) -> psycopg.Connection[Any]:
    """A connection that fails within seconds, never hangs, when the database is cut off."""
    return psycopg.connect(url, autocommit=autocommit, connect_timeout=CONNECT_TIMEOUT_S,
                           application_name=application_name, keepalives=1, keepalives_idle=2,
                           keepalives_interval=1, keepalives_count=2, tcp_user_timeout=TCP_USER_TIMEOUT_MS,
                           options=f"-c statement_timeout={STATEMENT_TIMEOUT_MS}")


class PgStore(MemoryFirstStore):
    """JSON key-value state and the outbox in PostgreSQL (see the module docstring).

    The database must answer at start (the migrations run then); afterwards it may come and go.
    """

    def __init__(self, url: str, instance_id: str, *, clock: Callable[[], float] = time.time) -> None:
        self.url = url
        self.instance_id = instance_id
        super().__init__(clock)
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pg-store")
        self._busy: Future[Any] | None = None  # the database call under way (maybe stuck)
        self._busy_since = 0.0  # monotonic start of that call
        self._swap = threading.Lock()  # held while the connection is closed or replaced, and by _abort
        self._db: psycopg.Connection[Any] | None = connect(url, application_name=f"balancer-store:{instance_id}")
        migrate(self._db)
        self._kv = {str(k): str(v) for k, v in self._db.execute("SELECT key, value FROM kv").fetchall()}
        self.owned: Callable[[], dict[str, int]] = dict
        """The sites this instance controls now, with the epoch it took each at (the cluster node's)."""
        self.lead_site = ""
        """The site whose owner delivers the messages of no site (heartbeats, handshake answers)."""
        self._claimed: dict[str, set[int]] = {c: set() for c in CHANNELS}  # by the last ``due``, not marked yet
        self._sent: list[int] = []  # delivered, the mark not written yet
        self._retries: dict[int, float] = {}  # failed, the mark not written yet
        self._dropped: list[int] = []  # given up on, the mark not written yet
        self.dropped = 0
        """Messages marked dropped by this instance (given up on: never sent)."""
        self._waiting = dict.fromkeys(CHANNELS, 0)
        self.duplicates = 0
        block = self._db.execute("SELECT nextval('outbox_block')").fetchone()
        self._next_id = (int(block[0]) << 32) + 1 if block else 1

    def close(self) -> None:
        release = sorted(set().union(*self._claimed.values()))
        if self.flush() and release:  # what this instance claimed and did not send: free for others
            with contextlib.suppress(psycopg.Error, OSError, TimeoutError):
                self._call(lambda: claim(self._connection(), self.instance_id, {}, self.lead_site, 0.0, 0, release))
        if self._busy is not None and not self._busy.done():
            self._abort()  # the server rolls it back; what it carried was not stored, as if we were killed
        with contextlib.suppress(FutureTimeout):
            self._worker.submit(self._close_connection).result(timeout=CLOSE_WAIT_S)
        self._worker.shutdown(wait=False)

    def _close_connection(self) -> None:
        with self._swap:
            if self._db is not None:
                self._db.close()
                self._db = None

    def _abort(self) -> None:
        """End the call under way: shut its connection's socket down (from this thread).

        The writer thread, waiting on that socket, then gets an error at once and the connection
        counts as broken. Neither ``conn.cancel()`` (a new connection, into the same partition)
        nor ``close()`` (frees what the writer thread is using) can do that. Shutting down a
        duplicate of the descriptor acts on the connection, and leaves the descriptor to psycopg.
        """
        with self._swap, contextlib.suppress(psycopg.Error, OSError):
            if self._db is not None and not self._db.closed:
                log.warning("PostgreSQL call without an answer for %.0f s: its connection is shut down",
                            time.monotonic() - self._busy_since)
                with socket.socket(fileno=os.dup(self._db.pgconn.socket)) as sock:
                    sock.shutdown(socket.SHUT_RDWR)

    def _call(self, work: Callable[[], Any]) -> Any:
        """Run ``work`` on the writer thread; waits ``WAIT_S`` at most (raises TimeoutError then)."""
        if self._busy is not None and not self._busy.done():
            if time.monotonic() - self._busy_since > STUCK_S:
                self._abort()
            raise TimeoutError("the previous database call is still under way")
        self._busy_since = time.monotonic()
        self._busy = self._worker.submit(work)
        try:
            return self._busy.result(timeout=WAIT_S)
        except FutureTimeout:
            raise TimeoutError(f"no answer from PostgreSQL within {WAIT_S:g} s") from None

    # ----------------------------------------------------------------- reading
    def refresh(self, keys: Iterable[str] = (), prefix: str | None = None) -> bool:
        """Read ``keys`` (and every key under ``prefix``) from the database again.

        For state another instance wrote: a site taken over, a forecast stored by the instance the
        grid operator called. Keys with a change of ours still pending keep ours. False when the
        database did not answer (memory unchanged).
        """
        wanted = set(keys)
        pattern = None if prefix is None else \
            prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"

        def read() -> list[tuple[Any, ...]]:
            db = self._connection()
            rows = db.execute("SELECT key, value FROM kv WHERE key = ANY(%s)", (sorted(wanted),)).fetchall()
            if pattern is not None:
                rows += db.execute("SELECT key, value FROM kv WHERE key LIKE %s", (pattern,)).fetchall()
            return rows

        try:
            rows = self._call(read)
        except (psycopg.Error, OSError, TimeoutError) as exc:
            self._failed(exc, self.clock())
            return False
        found = {str(k): str(v) for k, v in rows}
        if prefix is not None:  # the keys under it here (some deleted since) and in the database (some new)
            wanted |= {k for k in self._kv if k.startswith(prefix)} | set(found)
        for key in wanted - self._kv_pending:
            if key in found:
                self._kv[key] = found[key]
            else:
                self._kv.pop(key, None)
        return True

    # ----------------------------------------------------------------- requests received
    def seen_request(self, request_id: str) -> bool:
        """As with SQLite, but in the cluster's table: a repeat reaching another instance is known
        there too. Unknown (False: applied, at least once) when the database does not answer."""
        def read() -> bool:
            return self._connection().execute(
                "SELECT 1 FROM seen_requests WHERE request_id = %s AND at > now() - make_interval(secs => %s)",
                (request_id, SEEN_KEEP_S)).fetchone() is not None

        try:
            return bool(self._call(read))
        except (psycopg.Error, OSError, TimeoutError) as exc:
            self._failed(exc, self.clock())
            return False

    def remember_request(self, request_id: str) -> None:
        def write() -> None:
            db = self._connection()
            with db.transaction():
                db.execute("INSERT INTO seen_requests (request_id) VALUES (%s) "
                           "ON CONFLICT (request_id) DO UPDATE SET at = now()", (request_id,))
                db.execute("DELETE FROM seen_requests WHERE at < now() - make_interval(secs => %s)", (SEEN_KEEP_S,))

        try:
            self._call(write)
        except (psycopg.Error, OSError, TimeoutError) as exc:
            self._failed(exc, self.clock())

    # ----------------------------------------------------------------- outbox
    def enqueue(self, path: str, body: dict[str, Any], headers: dict[str, str], site_id: str | None = None, *,
                channel: str = "oscp", next_try: float = 0.0) -> int:
        """Queue a message on ``channel`` (``CHANNELS``: the OSCP client's ``path``, an OCPI
        callback's URL), due from ``next_try``; written at once."""
        item_id = self._next_id
        self._next_id += 1
        self._outbox[item_id] = OutboxItem(item_id, path, body, headers, 0, next_try, self.clock(), site_id,
                                           channel=channel)
        self._outbox_pending.add(item_id)
        self.flush()
        return item_id

    def due(self, now: float, limit: int = 50, channel: str = "oscp") -> list[OutboxItem]:
        """Claim what is due of the controlled sites' messages on ``channel`` (none when the
        database is away). One delivery loop per channel: the rows it claimed before are released
        (or claimed again) here, so it must have nothing in flight when it calls."""
        if not self._write_marks():
            return []
        release = sorted(self._claimed[channel])
        post_by = time.monotonic() + POST_WINDOW_S  # taken before the claim: on the safe side
        try:
            claimed: tuple[list[OutboxItem], int] = self._call(lambda: claim(
                self._connection(), self.instance_id, self.owned(), self.lead_site, now, limit, release, channel))
        except (psycopg.Error, OSError, TimeoutError) as exc:
            self._failed(exc, self.clock())
            return []
        items, self._waiting[channel] = claimed
        self._claimed[channel] = {item.id for item in items}
        for item in items:
            item.post_by = post_by
        return items

    def delivered(self, item_id: int, channel: str = "oscp") -> None:
        self._claimed[channel].discard(item_id)
        self._sent.append(item_id)
        self._write_marks()

    def retry_later(self, item_id: int, next_try: float, channel: str = "oscp") -> None:
        self._claimed[channel].discard(item_id)
        self._retries[item_id] = next_try
        self._write_marks()

    def drop(self, item_id: int, channel: str = "oscp") -> None:
        """Give up on a message (its sender's deadline passed, its receiver is gone): marked
        ``dropped_at``, never sent again, and told apart from a delivered one."""
        self._claimed[channel].discard(item_id)
        self._dropped.append(item_id)
        self.dropped += 1
        self._write_marks()

    def hurry(self, item_ids: list[int]) -> None:
        """Make messages due now (an OCPI result held until the charger holds its cap, which it does)."""
        try:
            self._call(lambda: self._connection().execute(
                "UPDATE outbox SET next_try = 0 WHERE id = ANY(%s) AND sent_at IS NULL AND dropped_at IS NULL",
                (item_ids,)))
        except (psycopg.Error, OSError, TimeoutError) as exc:  # it goes out when its hold ends
            self._failed(exc, self.clock())

    def outbox_size(self, channel: str = "oscp") -> int:
        """Messages not written yet, and those of the controlled sites waiting in the database."""
        return sum(1 for item in self._outbox.values() if item.channel == channel) + self._waiting[channel]

    def _write_marks(self) -> bool:
        if not self._sent and not self._retries and not self._dropped:
            return True
        sent, retries, dropped = list(self._sent), dict(self._retries), list(self._dropped)
        try:
            again = self._call(lambda: mark(self._connection(), self.instance_id, sent, retries, dropped))
        except (psycopg.Error, OSError, TimeoutError) as exc:
            self._failed(exc, self.clock())
            return False
        if again:
            self.duplicates += again
            log.warning("outbox: %d message(s) had been delivered by another instance already (sent again "
                        "with the same X-Request-ID)", again)
        del self._sent[:len(sent)]
        del self._dropped[:len(dropped)]
        for item_id in retries:
            self._retries.pop(item_id, None)
        return True

    # ----------------------------------------------------------------- writing
    def _target(self) -> str:
        return "PostgreSQL"

    def _connection(self) -> psycopg.Connection[Any]:
        if self._db is None or self._db.closed or self._db.broken:
            self._close_connection()
            self._db = connect(self.url, application_name=f"balancer-store:{self.instance_id}")
        return self._db

    def flush(self) -> bool:
        """Write everything pending in one transaction; False (and the fault kept) when that fails."""
        now = self.clock()
        try:
            if self._kv_pending or self._outbox_pending:
                upserts = [(key, self._kv[key], now) for key in sorted(self._kv_pending) if key in self._kv]
                deletes = [key for key in self._kv_pending if key not in self._kv]
                kept = [(item.id, self.instance_id, item.path, json.dumps(item.body), json.dumps(item.headers),
                         item.attempts, item.next_try, item.created, item.site_id, item.channel)
                        for item in (self._outbox.get(i) for i in sorted(self._outbox_pending)) if item is not None]
                self._call(lambda: self._write(self._connection(), upserts, deletes, kept))
        except (psycopg.Error, OSError, TimeoutError) as exc:
            self._failed(exc, now)
            return False
        self._kv_pending.clear()
        for item_id in self._outbox_pending:  # in the database now: the site's owner delivers it
            self._outbox.pop(item_id, None)
        self._outbox_pending.clear()
        self.saved_at = now
        if self.fault is not None:
            log.warning("state written to PostgreSQL again after %.0f s and %d failed writes",
                        now - (self.fault_since or now), self._fault_failures)
            self.fault = None
            self.fault_since = None
        return self._write_marks()

    @property
    def pending(self) -> int:
        """Keys, new messages and delivery marks not written yet."""
        return len(self._kv_pending) + len(self._outbox_pending) + len(self._sent) + len(self._retries) \
            + len(self._dropped)

    @staticmethod
    def _write(db: psycopg.Connection[Any], upserts: list[tuple[str, str, float]], deletes: list[str],
               kept: list[tuple[Any, ...]]) -> None:
        """One transaction (on the writer thread, from copies: memory may change meanwhile)."""
        with db.transaction(), db.cursor() as cur:
            if upserts:
                cur.executemany("INSERT INTO kv (key, value, updated) VALUES (%s, %s, %s) ON CONFLICT (key) "
                                "DO UPDATE SET value = excluded.value, updated = excluded.updated", upserts)
            if deletes:
                cur.execute("DELETE FROM kv WHERE key = ANY(%s)", (deletes,))
            if kept:
                cur.executemany(
                    "INSERT INTO outbox (id, instance_id, path, body, headers, attempts, next_try, created, site_id, "
                    "channel) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING", kept)
