"""Local controller mode (``upstream``): a relay's plumbing and its websocket to the CSMS.

Connecting with the charger's subprotocol and reconnecting with backoff, going offline and
replaying the persisted queue in order once the CSMS is back. What the relay does with each frame
is ``upstream_relay``.
"""


from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import random
import ssl
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp

from adapters.ocpp.upstream_frames import (
    map_tx,
)
from balancer.model import UpstreamSettings

if TYPE_CHECKING:
    from adapters.ocpp.guard import FrameGuard
    from adapters.ocpp.link import ChargerLink
    from adapters.ocpp.upstream import UpstreamHub

__all__ = ["BACKOFF_BASE_S", "LOCAL_ONLY", "REASSERT", "UPSTREAM_COUNTERS", "CsmsConnection", "Forwarded", "basic_auth"]


log = logging.getLogger("adapters.ocpp.upstream")

LOCAL_ONLY = frozenset({"Heartbeat", "Authorize"})
"""Charger calls answered locally while the CSMS is away and not delivered later: they change
nothing at the CSMS after the fact (a transaction's id tag travels in its StartTransaction)."""
BACKOFF_BASE_S = 1.0
UPSTREAM_COUNTERS = ("upstream_forwarded", "upstream_queued", "upstream_replayed", "upstream_local_answers",
                     "upstream_connects", "upstream_connect_failures")
REASSERT = "_reassert_stack_level"
"""Marks a station maximum profile the relay sends again (never leaves this process)."""


def basic_auth(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


@dataclass
class Forwarded:
    """A charger CALL on its way to the CSMS (or answered by the balancer in its stead)."""

    action: str
    frame: str
    expect_csms: bool = False
    """Sent to the CSMS, whose answer is awaited (and consumed if the charger has one already)."""
    local: bool = False
    """The balancer's answer goes to the charger."""
    routed: bool = False
    answered: bool = False
    local_answer: str | None = None
    local_tx: str | None = None
    queue_seq: int | None = None
    timer: asyncio.TimerHandle | None = None



class CsmsConnection:
    """One charger's relay, its plumbing and connection to the CSMS; ``Relay`` adds the frame rules."""

    def __init__(self, hub: UpstreamHub, link: ChargerLink, guard: FrameGuard, authorization: str | None) -> None:
        self.hub = hub
        self.link = link
        self.guard = guard
        self.charger_id = link.charger_id
        self.dialect = link.dialect
        self.remote_id = link.charger.upstream_id or link.charger_id
        self.authorization = authorization
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.online = False
        """Connected to the CSMS with the queue delivered: charger calls go straight through."""
        self._replaying = False
        self.forwarded: dict[str, Forwarded] = {}
        self.from_csms: set[str] = set()
        """Ids of CSMS calls waiting for the charger's answer."""
        self.own: set[str] = set()
        """Ids of the balancer's own calls waiting for the charger's answer."""
        self.replay_waiters: dict[str, asyncio.Future[list[Any]]] = {}
        self.csms_max: dict[Any, dict[str, Any]] = {}
        """The CSMS's station maximum profiles by profile id: the lowest limit of all caps ours."""
        self.our_max: dict[int, dict[str, Any]] = {}
        self.tx_out = hub.queue.tx_map(self.charger_id)
        self.tx_in = {remote: local for local, remote in self.tx_out.items()}
        self.first_try = asyncio.Event()
        if link.cp is not None:
            # The package's documented hook for call ids (``ChargePoint._unique_id_generator``).
            link.cp._unique_id_generator = self._own_id
        self._closed = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._spawn(self._run())

    # ----------------------------------------------------------------- plumbing
    def _own_id(self) -> str:
        """An id for the balancer's own call: never one of a CSMS call still waiting for the
        charger's answer (and a CSMS call reusing one of ours is refused, ``_csms_call``)."""
        while True:
            uid = str(uuid.uuid4())
            if uid not in self.from_csms:
                return uid

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @property
    def settings(self) -> UpstreamSettings:
        return self.hub.settings

    @property
    def voltage_v(self) -> float:
        return self.hub.server.voltage.get(self.charger_id, 230.0)

    def _headers(self) -> dict[str, str]:
        settings = self.settings
        if settings.auth == "config":
            password = self.link.charger.upstream_password or settings.password or ""
            return {"Authorization": basic_auth(self.remote_id, password)}
        return {"Authorization": self.authorization} if self.authorization else {}

    async def _to_charger(self, message: str) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.guard.ws.send_str(message)

    async def _to_csms(self, message: str) -> bool:
        ws = self.ws
        if ws is None or ws.closed:
            return False
        try:
            await ws.send_str(message)
        except (ConnectionError, RuntimeError):
            return False
        return True

    async def _route(self, raw: str) -> None:
        """Let the balancer's handlers see ``raw``, as in standalone mode."""
        cp = self.link.cp
        if cp is None:
            return
        try:
            await cp.route_message(raw)
        except Exception as exc:  # nothing a charger sends may end the relay
            log.warning("charger %s: message failed: %r", self.charger_id, exc)

    def _map_tx(self, local: str, remote: str) -> None:
        if self.tx_out.get(local) == remote:
            return
        self.tx_out[local] = remote
        self.tx_in[remote] = local
        self.hub.queue.map_tx(self.charger_id, local, remote)
        log.info("charger %s: transaction %s is %s at the CSMS", self.charger_id, local, remote)

    # ----------------------------------------------------------------- connection to the CSMS
    async def _run(self) -> None:
        attempt = 0
        while not self._closed:
            connected = False
            try:
                connected = await self._connect_and_serve()
            except (aiohttp.ClientError, OSError, TimeoutError, ConnectionError, ssl.SSLError) as exc:
                self.hub.counters["upstream_connect_failures"] += 1
                log.info("charger %s: CSMS not reachable: %r", self.charger_id, exc)
            except Exception:
                log.exception("charger %s: CSMS link failed", self.charger_id)
            finally:
                self.first_try.set()
                await self._went_offline()
            if self._closed:
                return
            attempt = 0 if connected else attempt + 1
            ceiling = min(self.settings.reconnect_max_s, BACKOFF_BASE_S * 2 ** min(attempt, 16))
            await asyncio.sleep(random.uniform(0.05 * ceiling, ceiling))  # full jitter: no stampede

    async def _connect_and_serve(self) -> bool:
        url = f"{self.settings.url.rstrip('/')}/{self.remote_id}"
        ws = await asyncio.wait_for(
            self.hub.session().ws_connect(url, protocols=(self.dialect.subprotocol,), headers=self._headers(),
                                          heartbeat=30.0, max_msg_size=0, ssl=self.hub.ssl_context()),
            self.settings.answer_timeout_s)
        if ws.protocol != self.dialect.subprotocol:
            await ws.close()
            raise ConnectionError(f"CSMS did not accept subprotocol {self.dialect.subprotocol}")
        self.hub.counters["upstream_connects"] += 1
        self.ws = ws
        self.first_try.set()
        log.info("charger %s: connected to the CSMS as %s", self.charger_id, self.remote_id)
        replay = asyncio.get_running_loop().create_task(self._replay())
        try:
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    await self._from_csms(str(msg.data))
                elif msg.type in (aiohttp.WSMsgType.ERROR, aiohttp.WSMsgType.CLOSE):
                    break
        finally:
            replay.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await replay
        return True

    async def _went_offline(self) -> None:
        """The CSMS is gone: answer what it left unanswered, queue what it may not have seen."""
        ws, self.ws, self.online = self.ws, None, False
        if ws is not None and not ws.closed:
            with contextlib.suppress(Exception):
                await ws.close()
        for future in self.replay_waiters.values():
            if not future.done():
                future.set_exception(ConnectionError("CSMS connection lost"))
        self.replay_waiters.clear()
        self.from_csms.clear()
        if self._closed:
            return  # the charger left: what the CSMS was sent, it has; nothing more to answer
        # Sent before anything now queued (the queue was empty, or held back behind them): to its
        # front, last first, so the CSMS still gets everything in the charger's order.
        for uid, entry in reversed(list(self.forwarded.items())):
            if not entry.expect_csms:
                continue
            entry.expect_csms = False
            if entry.timer is not None:
                entry.timer.cancel()
            if entry.action not in LOCAL_ONLY:
                entry.queue_seq = self.hub.queue.push_front(self.charger_id, entry.frame)
                self.hub.counters["upstream_queued"] += 1
                if entry.local_tx is not None:
                    self.hub.queue.set_local_tx(entry.queue_seq, entry.local_tx)
            if not entry.answered:
                await self._answer_locally(entry)
            self.forwarded.pop(uid, None)

    async def _replay(self) -> None:
        """Deliver the queue in order, one call at a time; then the relay is online."""
        if self._replaying:
            return
        self._replaying = True
        try:
            await self._deliver_queue()
        finally:
            self._replaying = False

    async def _deliver_queue(self) -> None:
        queue = self.hub.queue
        loop = asyncio.get_running_loop()
        while self.ws is not None:
            item = queue.head(self.charger_id)
            if item is None:
                self.online = True
                return
            frame = json.loads(item.frame)
            uid, action = str(frame[1]), str(frame[2])
            future: asyncio.Future[list[Any]] = loop.create_future()
            self.replay_waiters[uid] = future
            if not await self._to_csms(map_tx(self.dialect, item.frame, self.tx_out)):
                return
            try:
                answer = await asyncio.wait_for(future, self.settings.answer_timeout_s)
            except TimeoutError:
                self.replay_waiters.pop(uid, None)
                continue  # a slow CSMS: the same call again, still at the head
            except ConnectionError:
                return
            if answer[0] == 3 and action == "StartTransaction" and item.local_tx is not None \
                    and isinstance(answer[2], dict) and answer[2].get("transactionId") is not None:
                self._map_tx(item.local_tx, str(answer[2]["transactionId"]))
            elif answer[0] == 4:
                log.warning("charger %s: CSMS refused queued %s: %s", self.charger_id, action, answer[2:4])
            queue.remove(item.seq)
            self.hub.counters["upstream_replayed"] += 1

    async def _from_csms(self, raw: str) -> None:
        """A frame from the CSMS (``Relay``)."""
        raise NotImplementedError

    async def _answer_locally(self, entry: Forwarded) -> None:
        """The balancer's held answer goes to the charger (``Relay``)."""
        raise NotImplementedError
