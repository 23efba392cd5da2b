"""Which instance controls which site: PostgreSQL session advisory locks, held on a dedicated connection.

Why advisory locks rather than leases in a table: PostgreSQL itself releases a session lock the
moment the holding backend ends (the process died, the connection was closed or cut and the
server's TCP keep-alive / user timeout noticed), with no clock shared between instances and no
lease to renew in the write path. What a lock cannot say by itself is when the *former* holder
stopped acting on it; two rules close that gap, so no two instances ever control a site:

* An owner stops controlling every site once ``LEASE_S`` has passed since it *sent* its last
  confirmed heartbeat (a query on the lock connection, every ``POLL_S``, answered within
  ``QUERY_TIMEOUT_S``). A backend that still answered at time t held its locks at t.
* A new owner waits ``GRACE_S`` (> ``LEASE_S``) after taking a lock before it controls the site,
  unless the former owner released the site cleanly (it stopped first, then marked the row
  ``clean``, then unlocked). Its locks were gone at the latest when it took the lock, so the
  former owner has stopped by then.

The lock connection and its checks run on a thread of their own (with its own event loop), so a
busy service (a reconnect storm keeping its event loop seconds behind) still answers its checks and
keeps its sites; the service's event loop only reads the outcome (``controls``, checked against
the lease at every call) and runs ``on_gained`` / ``on_lost``.

Each site's row in ``cluster_sites`` carries an ``epoch`` that grows with every take-over (a
fencing token for logs and for the site JSON) and the ``owner``. Ownership is spread evenly: an
instance takes unowned sites while it holds fewer than ceil(sites / live instances), and hands
back what it holds above that. Live instances are the lock connections open in the
database (``application_name`` ``balancer:<instance_id>``): a dead one is gone as soon as its
locks are.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

__all__ = ["GRACE_S", "LEASE_S", "POLL_S", "SiteOwnership"]

log = logging.getLogger(__name__)

LOCK_NAMESPACE = 0x62616C32
"""First key of every site lock (two-key advisory locks); the second is ``cluster_sites.lock_key``."""
POLL_S = 1.0
QUERY_TIMEOUT_S = 1.5
LEASE_S = 4.0
GRACE_S = 5.0
SERVER_KEEPALIVE = ("SET tcp_keepalives_idle = 2; SET tcp_keepalives_interval = 1; "
                    "SET tcp_keepalives_count = 2; SET tcp_user_timeout = 3000")
"""So the server ends a cut-off holder's backend (and frees its locks) within seconds."""

_VIEW = """
SELECT s.site_id, s.lock_key, l.pid, a.application_name
FROM cluster_sites s
LEFT JOIN pg_locks l ON l.locktype = 'advisory' AND l.granted AND l.classid = %(ns)s::oid
    AND l.objid = s.lock_key::oid AND l.objsubid = 2
    AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
LEFT JOIN pg_stat_activity a ON a.pid = l.pid
WHERE s.site_id = ANY(%(sites)s)
"""
_LIVE = """
SELECT DISTINCT application_name FROM pg_stat_activity
WHERE datname = current_database() AND application_name LIKE 'balancer:%%'
"""
_TAKE = """
UPDATE cluster_sites s SET epoch = s.epoch + 1, owner = %(me)s, clean = false
FROM (SELECT site_id, clean FROM cluster_sites WHERE site_id = %(site)s FOR UPDATE) old
WHERE s.site_id = old.site_id RETURNING s.epoch, old.clean
"""


@dataclass
class _Held:
    lock_key: int
    epoch: int
    control_from: float  # monotonic time from which this instance may control the site
    releasing: bool = False  # to be handed back: not controlled any more
    stopped: bool = False  # the service has stopped controlling it (on_lost ran): safe to unlock


def _rank(instance_id: str, site_id: str) -> bytes:
    """Rendezvous order: each instance tries the sites in its own order, so they rarely collide."""
    return hashlib.sha256(f"{instance_id}\0{site_id}".encode()).digest()


class SiteOwnership:
    """Takes, holds and hands back site locks; tells the service when it gains or loses control.

    ``on_gained(site_id)`` runs (on the service's event loop) when this instance may control the
    site (after ``GRACE_S`` or a clean hand-over), ``on_lost(site_id)`` when it may not; a lock is
    given back only after ``on_lost`` ran.
    """

    def __init__(self, url: str, instance_id: str, site_ids: Sequence[str], *,
                 on_gained: Callable[[str], None], on_lost: Callable[[str], None]) -> None:
        self.url = url
        self.instance_id = instance_id
        self.site_ids = list(site_ids)
        self.on_gained = on_gained
        self.on_lost = on_lost
        self.owners: dict[str, str | None] = dict.fromkeys(self.site_ids)
        """Every site's controlling instance as last seen (None: nobody holds its lock)."""
        self.epochs: dict[str, int] = {}
        self.live_instances = 0
        self.live: set[str] = set()
        """The instances whose lock connection is open, as of the last poll (each second)."""
        self._lock = threading.Lock()
        self._held: dict[str, _Held] = {}  # written by the lock thread, under _lock
        self._controlling: set[str] = set()  # the service's side: on_gained ran, on_lost not yet
        self._confirmed_sent = 0.0  # monotonic send time of the last answered check
        self._stopping = False
        self._exit = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: psycopg.AsyncConnection[Any] | None = None  # the lock thread's
        self._watch: asyncio.Task[None] | None = None

    # ----------------------------------------------------------------- the service's side
    def _lease_ok(self) -> bool:
        return not self._stopping and time.monotonic() - self._confirmed_sent <= LEASE_S

    def controls(self, site_id: str) -> bool:
        """True while this instance may control the site (checked against the lease at each call)."""
        if site_id not in self._controlling or not self._lease_ok():
            return False
        held = self._held.get(site_id)
        return held is not None and not held.releasing

    def controlled(self) -> list[str]:
        return sorted(s for s in self._controlling if self.controls(s))

    async def start(self) -> None:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), name="site-ownership",
                                        daemon=True)
        self._thread.start()
        self._watch = asyncio.create_task(self._reconcile_loop(), name="site-ownership-watch")

    async def stop(self) -> None:
        """Stop controlling, then hand every site back cleanly so others take over at once."""
        self._stopping = True
        self._reconcile()
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        self._exit.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 8.0)

    async def _reconcile_loop(self) -> None:
        while True:
            await asyncio.sleep(0.1)
            self._reconcile()

    def _reconcile(self) -> None:
        """Bring what the service controls in line with the locks held and the lease."""
        now = time.monotonic()
        lease_ok = self._lease_ok()
        with self._lock:
            held = dict(self._held)
        wanted = {s for s, h in held.items() if lease_ok and not h.releasing and now >= h.control_from}
        if self._controlling - wanted and not lease_ok and not self._stopping:
            log.warning("site ownership: no answer from the database for %.1f s: giving up every site",
                        now - self._confirmed_sent)
        for site_id in sorted(self._controlling - wanted):
            self._controlling.discard(site_id)
            log.info("site %s: no longer controlled by %s", site_id, self.instance_id)
            self.on_lost(site_id)
        for h in held.values():
            if (h.releasing or self._stopping) and not h.stopped:
                h.stopped = True  # after on_lost: the lock thread may unlock it now
        for site_id in sorted(wanted - self._controlling):
            self._controlling.add(site_id)
            log.info("site %s: controlled by %s (epoch %d)", site_id, self.instance_id, held[site_id].epoch)
            self.on_gained(site_id)

    # ----------------------------------------------------------------- the lock thread
    async def _run(self) -> None:
        while not self._exit.is_set():
            started = time.monotonic()
            try:
                async with asyncio.timeout(QUERY_TIMEOUT_S * 4):
                    await self._poll()
            except (psycopg.Error, OSError, TimeoutError) as exc:
                log.warning("site ownership: database connection lost (%s): giving up every site", exc)
                await self._drop_connection()
            except Exception:  # a bug here must not leave sites controlled without a lock
                log.exception("site ownership poll failed: giving up every site")
                await self._drop_connection()
            if self._held and time.monotonic() - self._confirmed_sent > LEASE_S:
                await self._drop_connection()
            await asyncio.to_thread(self._exit.wait, max(POLL_S - (time.monotonic() - started), 0.05))
        await self._release_all()

    async def _release_all(self) -> None:
        conn = self._conn
        if conn is not None and not conn.closed:
            end = time.monotonic() + 3
            while any(not h.stopped for h in self._held.values()) and time.monotonic() < end:
                await asyncio.sleep(0.05)  # the service stops controlling first
            with contextlib.suppress(psycopg.Error, OSError, TimeoutError):
                async with asyncio.timeout(3):
                    for site_id, held in list(self._held.items()):
                        if held.stopped:
                            await self._release(conn, site_id, held)
            with contextlib.suppress(psycopg.Error, OSError, TimeoutError):
                async with asyncio.timeout(2):
                    await conn.close()
        with self._lock:
            self._held.clear()
        self._conn = None

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        conn = await psycopg.AsyncConnection.connect(
            self.url, autocommit=True, connect_timeout=3, application_name=f"balancer:{self.instance_id}",
            keepalives=1, keepalives_idle=2, keepalives_interval=1, keepalives_count=2, tcp_user_timeout=3000)
        async with asyncio.timeout(QUERY_TIMEOUT_S * 2):
            await conn.execute(SERVER_KEEPALIVE)
            async with conn.cursor() as cur:
                await cur.executemany("INSERT INTO cluster_sites (site_id) VALUES (%s) ON CONFLICT DO NOTHING",
                                      [(s,) for s in self.site_ids])
        return conn

    async def _poll(self) -> None:
        if self._conn is None:
            self._conn = await self._connect()
        conn = self._conn
        sent = time.monotonic()
        async with asyncio.timeout(QUERY_TIMEOUT_S):
            me_row = await (await conn.execute("SELECT pg_backend_pid()")).fetchone()
            rows = await (await conn.execute(_VIEW, {"ns": LOCK_NAMESPACE, "sites": self.site_ids})).fetchall()
            live_rows = await (await conn.execute(_LIVE)).fetchall()
        self._confirmed_sent = sent
        me = me_row[0] if me_row else None
        self.live = {str(r[0]).removeprefix("balancer:") for r in live_rows}
        self.live_instances = max(len(self.live), 1)
        keys: dict[str, int] = {}
        mine: set[str] = set()
        for site_id, lock_key, pid, app in rows:
            keys[site_id] = int(lock_key)
            if pid is not None and pid == me:
                mine.add(site_id)
            app_name = str(app) if app else None
            self.owners[site_id] = app_name.removeprefix("balancer:") if app_name else None
        with self._lock:
            for site_id in set(self._held) - mine:  # cannot happen while the backend lives; never trust it
                log.error("site %s: lock no longer held by this instance", site_id)
                del self._held[site_id]
        for site_id, held in list(self._held.items()):
            if held.releasing and held.stopped:
                async with asyncio.timeout(QUERY_TIMEOUT_S):
                    await self._release(conn, site_id, held)
                with self._lock:
                    self._held.pop(site_id, None)
                self.owners[site_id] = None
                log.info("site %s: handed back by %s to even out ownership", site_id, self.instance_id)
        share = math.ceil(len(self.site_ids) / self.live_instances)
        kept = [s for s, h in self._held.items() if not h.releasing]
        if len(kept) < share and len(self._held) < share:
            await self._take(conn, share, keys)
        for site_id in sorted(kept, key=lambda s: _rank(self.instance_id, s), reverse=True)[:max(len(kept) - share, 0)]:
            self._held[site_id].releasing = True  # handed back once the service has stopped it

    async def _take(self, conn: psycopg.AsyncConnection[Any], share: int, keys: dict[str, int]) -> None:
        free = sorted((s for s in self.site_ids if self.owners.get(s) is None and s in keys),
                      key=lambda s: _rank(self.instance_id, s))
        for site_id in free:
            if len(self._held) >= share:
                return
            async with asyncio.timeout(QUERY_TIMEOUT_S):
                got = await (await conn.execute("SELECT pg_try_advisory_lock(%s, %s)",
                                                (LOCK_NAMESPACE, keys[site_id]))).fetchone()
                if not (got and got[0]):
                    continue
                row = await (await conn.execute(_TAKE, {"me": self.instance_id, "site": site_id})).fetchone()
            epoch, was_clean = (int(row[0]), bool(row[1])) if row else (0, False)
            wait = 0.0 if was_clean else GRACE_S
            with self._lock:
                self._held[site_id] = _Held(keys[site_id], epoch, time.monotonic() + wait)
            self.owners[site_id] = self.instance_id
            self.epochs[site_id] = epoch
            log.info("site %s: lock taken by %s (epoch %d), control in %.1f s", site_id, self.instance_id,
                     epoch, wait)

    async def _release(self, conn: psycopg.AsyncConnection[Any], site_id: str, held: _Held) -> None:
        """Mark the site clean (the service has stopped controlling it), then unlock."""
        await conn.execute("UPDATE cluster_sites SET clean = true WHERE site_id = %s AND epoch = %s",
                           (site_id, held.epoch))
        await conn.execute("SELECT pg_advisory_unlock(%s, %s)", (LOCK_NAMESPACE, held.lock_key))

    async def _drop_connection(self) -> None:
        """Forget every lock (``controls`` is False at once); the server frees them when the backend ends."""
        with self._lock:
            for site_id in self._held:
                self.owners[site_id] = None
            self._held.clear()
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error, OSError, TimeoutError):
                async with asyncio.timeout(1):
                    await conn.close()
