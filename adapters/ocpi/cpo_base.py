"""OCPI CPO (``cpo.py``): the state every part shares and the outbox of callbacks.

The outbox: callbacks (ChargingProfileResult, ActiveChargingProfile) persisted before the answer
that promises them, sent at most ``IN_FLIGHT`` at a time, retried with backoff until their
``timeout``; a result can wait for the charger to hold the cap first (``_release``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, Protocol

import aiohttp
from aiohttp import web

from adapters.http_body import loads, read_body, token_matches
from adapters.ocpi.messages import (
    encode_token,
)
from adapters.store_memory import OutboxItem
from adapters.store_port import Store
from balancer.control import Controller
from balancer.events import Event, ProfileResult
from balancer.model import Config, OcpiSettings

__all__ = ["CAP_TOLERANCE_A", "EVSE_STATUS", "HOLD_RESULT_S", "IN_FLIGHT", "MAX_BACKOFF_S", "RECENT_SESSIONS",
           "UPDATE_CHECK_S", "CpoBase", "Handler", "SharedOutbox", "cap_at", "token_hash"]

log = logging.getLogger("balancer.ocpi")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class SharedOutbox(Protocol):
    """Cluster mode: the cluster's outbox (``adapters.cluster.pg_store.PgStore``), channel ``ocpi``."""

    def enqueue(self, path: str, body: dict[str, Any], headers: dict[str, str], site_id: str | None = None, *,
                channel: str = ..., next_try: float = ...) -> int: ...

    def due(self, now: float, limit: int = ..., channel: str = ...) -> list[OutboxItem]: ...

    def delivered(self, item_id: int, channel: str = ...) -> None: ...

    def retry_later(self, item_id: int, next_try: float, channel: str = ...) -> None: ...

    def drop(self, item_id: int, channel: str = ...) -> None: ...

    def hurry(self, item_ids: list[int]) -> None: ...

    def outbox_size(self, channel: str = ...) -> int: ...

MAX_BACKOFF_S = 30.0
IN_FLIGHT = 64
"""Callbacks sent at the same time at most."""
RECENT_SESSIONS = 500
"""Ended sessions kept for the Sessions list, per site."""
UPDATE_CHECK_S = 1.0
HOLD_RESULT_S = 5.0
"""A ChargingProfileResult waits at most this long for the charger to hold the cap (then goes out:
the cap is in force in the controller and reaches the charger when it can)."""
CAP_TOLERANCE_A = 0.05


def cap_at(record: dict[str, Any], t: float) -> float | None:
    """The cap of a stored profile at ``t`` [epoch s] [A], None when none is in force."""
    until = record.get("until")
    if until is not None and t >= until:
        return None
    found = None
    for start, limit in record["periods"]:
        if start > t:
            break
        found = float(limit)
    return found

# OCPP connector status -> OCPI EVSE status.
EVSE_STATUS = {
    "Available": "AVAILABLE", "Preparing": "CHARGING", "Charging": "CHARGING", "SuspendedEV": "CHARGING",
    "SuspendedEVSE": "CHARGING", "Finishing": "CHARGING", "Occupied": "CHARGING", "Reserved": "RESERVED",
    "Unavailable": "INOPERATIVE", "Faulted": "OUTOFORDER",
}


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class CpoBase:
    """The CPO's state, the edge helpers and the outbox of callbacks; ``OcpiCpo`` builds on it."""

    def __init__(self, config: Config, store: Store, controllers: dict[str, Controller],
                 on_event: Callable[[Event], None], now: Callable[[], datetime]) -> None:
        assert config.ocpi is not None
        self.settings: OcpiSettings = config.ocpi
        self.config = config
        self.store = store
        self.controllers = controllers
        self.on_event = on_event
        self.now = now
        self.parties: dict[str, dict[str, Any]] = {}
        self._by_token: dict[str, str] = {}  # hash of the token a party calls us with -> party key
        self._used_a: set[str] = set(store.get_json("ocpi:token_a_used") or [])
        self._registering: set[str] = set()
        self._pending: set[str] = set()
        """Hashes of our tokens B offered to a party we register with: it reads our versions with them."""
        self._buckets: dict[str, list[float]] = {}
        self._outbox: dict[int, dict[str, Any]] = {}
        self._outbox_prefix = "ocpi:outbox:"
        self.shared: SharedOutbox | None = None
        """Cluster mode: the callbacks go through the cluster's outbox (set by the cluster node),
        delivered by the owner of the session's site (``_deliver_shared``), not kept here."""
        self._held: dict[int, tuple[str, float]] = {}
        """Cluster mode: the shared outbox's results held until a charger holds a cap: id -> (charger, cap).
        Only ends a hold early: the hold itself is the row's ``next_try``, so the next owner of a site
        lost meanwhile sends the result when the hold ends."""
        self._stopping = False
        self.controls: Callable[[str], bool] = lambda site_id: True
        """Cluster mode: whether this instance controls a site (only its owner sends the site's updates)."""
        self.refresh: Callable[[str], bool] = lambda prefix: False
        """Cluster mode: read the keys under a prefix again (records other instances wrote); True when read."""
        self.forward: Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]] | None = None
        """Cluster mode: a session command (``OcpiCpo.command``'s message) run by the owner of the
        session's site, and its reply; set by the cluster node."""
        self.gather: Callable[[str], Awaitable[dict[str, Any] | None]] | None = None
        """Cluster mode: a site's part of the Locations and Sessions lists from its owner
        (``CpoSessions.site_part``), None when no owner answers; set by the cluster node."""
        self.stale: Callable[[str], None] = lambda site_id: None
        """Cluster mode: read a site's last snapshot (and ended sessions) from PostgreSQL again."""
        self._charger_site = {c.id: s.id for s in config.sites for c in s.chargers}
        self._waiting: set[int] = set()
        self._id_tags: dict[str, str] = {}
        self._sessions: dict[str, tuple[str, str]] = {}
        """Session id -> (site id, charger id): the index ``_session`` keeps."""
        """The id tag (token uid) each session was started with, by session id (memory only)."""
        """Outbox items held until a charger holds a cap (``_release``)."""
        self._in_flight: set[int] = set()
        self._send_tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._http: aiohttp.ClientSession | None = None
        self.counters: dict[str, float] = {"ocpi_requests": 0, "ocpi_rejected": 0, "ocpi_profiles_set": 0,
                                           "ocpi_callbacks_sent": 0, "ocpi_callbacks_retried": 0,
                                           "ocpi_callbacks_dropped": 0, "ocpi_updates_sent": 0}
        self._load_parties()
        for key in store.keys(self._outbox_prefix) if config.cluster is None else ():
            item = store.get_json(key)
            self._outbox[int(item["id"])] = item
            if "wait_charger" in item:
                self._waiting.add(int(item["id"]))
        self._next_id = max(self._outbox, default=0) + 1

    def _load_parties(self) -> None:
        """The registered parties from the store (in a cluster: registered with any instance)."""
        parties: dict[str, dict[str, Any]] = {}
        by_token: dict[str, str] = {}
        for key in self.store.keys("ocpi:party:"):
            party = self.store.get_json(key)
            parties[party["key"]] = party
            by_token[token_hash(party["token_in"])] = party["key"]
        self.parties, self._by_token = parties, by_token

    def _site_of_session(self, session_id: str) -> str | None:
        """The site of the charger a session id (``{charger_id}-{transaction_id}``) names, if any."""
        cid = session_id
        while "-" in cid:
            cid = cid.rsplit("-", 1)[0]
            if cid in self._charger_site:
                return self._charger_site[cid]
        return None

    def _token_a(self, token: str) -> str | None:
        """The configured token A ``token`` is, if it is one and has not been used yet."""
        for candidate in self.settings.token_a:
            if token_matches(token, candidate) and token_hash(candidate) not in self._used_a:
                return candidate
        return None

    async def _body(self, request: web.Request) -> Any:
        return loads(await read_body(request, self.config.http.max_body_bytes))

    def _base(self, request: web.Request) -> str:
        return self.settings.public_base_url or f"{request.scheme}://{request.host}"


    @staticmethod
    def _headers(token: str) -> dict[str, str]:
        return {"Authorization": encode_token(token), "X-Request-ID": str(uuid.uuid4()),
                "X-Correlation-ID": str(uuid.uuid4()), "Content-Type": "application/json"}


    # ----------------------------------------------------------------- outbox
    def _enqueue(self, method: str, url: str, body: Any, party: str | None, now: datetime, *, site_id: str,
                 wait_for: tuple[str, float] | None = None) -> None:
        """Persist a callback (with everything pending in the store) and wake the sender.

        ``wait_for`` (charger id, cap [A]): hold it until that charger accepts a profile at or below
        the cap (``_release``), at most ``HOLD_RESULT_S`` (or half the timeout). In a cluster it is
        a row of the shared outbox for ``site_id``'s owner.
        """
        created = time.time()
        timeout = self.settings.profile_timeout_s
        if self.shared is not None:
            hold = created + min(HOLD_RESULT_S, timeout / 2) if wait_for is not None else 0.0
            item_id = self.shared.enqueue(url, {"method": method, "body": body, "party": party,
                                                "deadline": created + timeout},
                                          {"X-Request-ID": str(uuid.uuid4()), "X-Correlation-ID": str(uuid.uuid4())},
                                          site_id, channel="ocpi", next_try=hold)
            if wait_for is not None:
                self._held[item_id] = wait_for
            self._wake.set()
            return
        item_id = self._next_id
        self._next_id += 1
        item: dict[str, Any] = {"id": item_id, "method": method, "url": url, "body": body, "party": party,
                                "created": created, "deadline": created + timeout, "attempts": 0, "next_try": 0.0}
        if wait_for is not None:
            item["wait_charger"], item["wait_cap_a"] = wait_for
            item["next_try"] = created + min(HOLD_RESULT_S, timeout / 2)
            self._waiting.add(item_id)
        self._outbox[item_id] = item
        self.store.put_json(self._outbox_key(item_id), item)
        self._wake.set()

    def _release(self, event: ProfileResult) -> None:
        """A charger accepted a profile: the results waiting for it to hold a cap go out now."""
        if event.result != "Accepted" or event.idle or event.detail.startswith("failsafe"):
            return
        if self.shared is not None and self._held:
            ready = [i for i, (cid, cap) in self._held.items()
                     if cid == event.charger_id and event.limit_a <= cap + CAP_TOLERANCE_A]
            for item_id in ready:
                del self._held[item_id]
            if ready:
                self.shared.hurry(ready)
                self._wake.set()
        if not self._waiting:
            return
        for item_id in list(self._waiting):
            item = self._outbox.get(item_id)
            if item is None:
                self._waiting.discard(item_id)
                continue
            if item.get("wait_charger") == event.charger_id and event.limit_a <= item["wait_cap_a"] + CAP_TOLERANCE_A:
                self._waiting.discard(item_id)
                item["next_try"] = 0.0
                del item["wait_charger"], item["wait_cap_a"]
                self.store.put_json(self._outbox_key(item_id), item, flush=False)
                self._wake.set()

    def _outbox_key(self, item_id: int) -> str:
        return f"{self._outbox_prefix}{item_id:012d}"

    def outbox_size(self) -> int:
        return len(self._outbox) if self.shared is None else self.shared.outbox_size(channel="ocpi")

    def kick(self) -> None:
        """Deliver now (cluster mode: this instance just took sites over)."""
        self._wake.set()

    async def _deliver_loop(self) -> None:
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=0.5)
            self._wake.clear()
            if self.shared is not None:
                await self._deliver_shared(self.shared)
                continue
            now = time.time()
            for item_id, item in list(self._outbox.items()):
                if len(self._in_flight) >= IN_FLIGHT:
                    break
                if item_id in self._in_flight or item["next_try"] > now:
                    continue
                self._in_flight.add(item_id)
                task = asyncio.create_task(self._send(item))
                self._send_tasks.add(task)
                task.add_done_callback(self._send_tasks.discard)

    async def _deliver_shared(self, shared: SharedOutbox) -> None:
        """Claim the due callbacks of the sites this instance controls and send them side by side
        (all begun at once, within the claim's ``post_by``); the next claim waits for every answer."""
        items = shared.due(time.time(), IN_FLIGHT, channel="ocpi")
        if items and time.monotonic() <= min(item.post_by for item in items):
            await asyncio.gather(*(self._send_shared(shared, item) for item in items))
            self._wake.set()  # more may be due

    async def _send_shared(self, shared: SharedOutbox, item: OutboxItem) -> None:
        meta = item.body
        party = self.parties.get(meta.get("party") or "")
        ok = False
        if party is not None and self._http is not None:
            headers = {**self._headers(party["token_out"]), **item.headers}  # the same ids at every try
            try:
                async with self._http.request(meta["method"], item.path, json=meta["body"],
                                              headers=headers) as response:
                    await response.read()
                    ok = 200 <= response.status < 300
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                log.debug("OCPI callback to %s failed: %r", item.path, exc)
        self._held.pop(item.id, None)
        if ok:
            self.counters["ocpi_callbacks_sent"] += 1
            shared.delivered(item.id, channel="ocpi")
            return
        next_try = time.time() + min(MAX_BACKOFF_S, 0.5 * 2 ** item.attempts)
        if party is None or next_try > meta["deadline"]:
            self.counters["ocpi_callbacks_dropped"] += 1
            log.warning("OCPI callback %s %s dropped after %d attempts", meta["method"], item.path, item.attempts + 1)
            shared.drop(item.id, channel="ocpi")  # never sent again; marked dropped, not delivered
            return
        self.counters["ocpi_callbacks_retried"] += 1
        shared.retry_later(item.id, next_try, channel="ocpi")

    async def _send(self, item: dict[str, Any]) -> None:
        item_id = int(item["id"])
        try:
            party = self.parties.get(item["party"] or "")
            ok = False
            if party is not None and self._http is not None:
                try:
                    async with self._http.request(item["method"], item["url"], json=item["body"],
                                                  headers=self._headers(party["token_out"])) as response:
                        await response.read()
                        ok = 200 <= response.status < 300
                except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                    log.debug("OCPI callback to %s failed: %r", item["url"], exc)
            key = self._outbox_key(item_id)
            if ok:
                self.counters["ocpi_callbacks_sent"] += 1
                self._outbox.pop(item_id, None)
                self.store.delete_json(key)
                return
            now = time.time()
            item["attempts"] += 1
            item["next_try"] = now + min(MAX_BACKOFF_S, 0.5 * 2 ** (item["attempts"] - 1))
            if party is None or item["next_try"] > item["deadline"]:
                self.counters["ocpi_callbacks_dropped"] += 1
                log.warning("OCPI callback %s %s dropped after %d attempts", item["method"], item["url"],
                            item["attempts"])
                self._outbox.pop(item_id, None)
                self.store.delete_json(key)
                return
            self.counters["ocpi_callbacks_retried"] += 1
            self.store.put_json(key, item)
        finally:
            self._in_flight.discard(item_id)
            self._wake.set()
