"""Local controller mode (DESIGN 3.11): each charger forwarded to the operator's CSMS, balanced here.

For each connected charger a ``Relay`` holds a websocket to ``{url}/{upstream_id or id}`` with the
charger's subprotocol and passes frames both ways with their message ids unchanged. It sits at the
charger connection's frame boundary (``FrameGuard``): ``inbound`` sees every frame from the charger
before the ``ocpp`` package does, ``outbound`` every frame the package writes to the charger.

- A charger CALL goes to the CSMS and, as in standalone mode, to the balancer's handlers, whose
  answer is held back; the charger gets the CSMS's answer. A 1.6 StartTransaction is observed once
  the CSMS has answered, so the balancer knows the session by the CSMS's transaction id.
- The CSMS's CALLs go to the charger and the charger's answers back, except station maximum
  profiles, which are combined with the balancer's (``upstream_frames``) and answered Accepted.
- The balancer's own CALLs go to the charger with the package's uuid4 ids; answers to ids the CSMS
  did not send are the balancer's, and never leave for the CSMS.
- No answer from the CSMS within ``answer_timeout_s``, or no CSMS at all: the balancer's held
  answer goes to the charger (Authorize and StartTransaction per ``offline_authorize``); the
  charger's calls wait in the persisted queue (``upstream_queue``) and go out in order, one at a
  time, when the CSMS is back. Until the queue is empty new calls join its tail, so the CSMS sees
  everything in the order the charger sent it. Transaction ids the balancer gave are mapped to the
  CSMS's from then on. Reconnects back off exponentially with full jitter.
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
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

from adapters.ocpp.trusted_call import call_trusted
from adapters.ocpp.upstream_frames import (
    clamp_station_max,
    clear_reaches_ours,
    clears_station_max,
    is_station_max,
    map_tx,
    station_max_cap_a,
)
from adapters.ocpp.upstream_queue import UpstreamQueue
from adapters.store import private_dir
from balancer.model import UpstreamSettings

if TYPE_CHECKING:
    from adapters.ocpp.guard import FrameGuard
    from adapters.ocpp.link import ChargerLink
    from adapters.ocpp.server import OcppServer

__all__ = ["Relay", "UpstreamHub"]

log = logging.getLogger(__name__)

LOCAL_ONLY = frozenset({"Heartbeat", "Authorize"})
"""Charger calls answered locally while the CSMS is away and not delivered later: they change
nothing at the CSMS after the fact (a transaction's id tag travels in its StartTransaction)."""
BACKOFF_BASE_S = 1.0
UPSTREAM_COUNTERS = ("upstream_forwarded", "upstream_queued", "upstream_replayed", "upstream_local_answers",
                     "upstream_connects", "upstream_connect_failures")
REASSERT = "_reassert_stack_level"
"""Marks a station maximum profile the relay sends again (never leaves this process)."""


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


@dataclass
class _Forwarded:
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


class UpstreamHub:
    """The relays of all connected chargers, their queue and one HTTP client session."""

    def __init__(self, server: OcppServer) -> None:
        self.server = server
        assert server.config.ocpp.upstream is not None
        self._settings = server.config.ocpp.upstream
        self.queue = UpstreamQueue(private_dir(Path(server.config.state_dir)) / "upstream.sqlite")
        self.relays: dict[str, Relay] = {}
        self._session: aiohttp.ClientSession | None = None
        self._ssl: tuple[str, ssl.SSLContext] | None = None
        self.counters = server.counters
        """The server's: ``balancer_ocpp_upstream_*_total`` in /metrics."""
        for name in UPSTREAM_COUNTERS:
            self.counters.setdefault(name, 0)

    @property
    def settings(self) -> UpstreamSettings:
        """The newest ``ocpp.upstream`` (a reload's keys apply to the next call or connection); a
        reload that drops the section keeps the last one: the mode itself changes at a restart."""
        settings = self.server.config.ocpp.upstream
        if settings is not None:
            self._settings = settings
        return self._settings

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # No pool limit: one long-lived websocket per charger (aiohttp's default of 100 would
            # leave the 101st charger waiting for a free connection forever).
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        return self._session

    def ssl_context(self) -> ssl.SSLContext | bool:
        """TLS for ``wss://``: the system's CAs, and ``ca_file``'s when set (True: aiohttp's default)."""
        ca_file = self.settings.ca_file
        if not ca_file:
            return True
        if self._ssl is None or self._ssl[0] != ca_file:
            context = ssl.create_default_context()
            context.load_verify_locations(cafile=ca_file)
            self._ssl = (ca_file, context)
        return self._ssl[1]

    def attach(self, link: ChargerLink, guard: FrameGuard, authorization: str | None) -> Relay:
        """A charger connected: its relay, connecting to the CSMS in the background."""
        old = self.relays.get(link.charger_id)
        if old is not None:
            old.detach()
        relay = Relay(self, link, guard, authorization)
        self.relays[link.charger_id] = relay
        return relay

    def status(self, charger_id: str) -> dict[str, Any]:
        relay = self.relays.get(charger_id)
        return {"upstream_connected": relay is not None and relay.ws is not None,
                "upstream_queued": self.queue.size(charger_id)}

    async def close(self) -> None:
        for relay in list(self.relays.values()):
            await relay.close()
        if self._session is not None:
            await self._session.close()
        self.queue.close()


class Relay:
    """One charger's link to the CSMS (see the module docstring)."""

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
        self.forwarded: dict[str, _Forwarded] = {}
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
            return {"Authorization": _basic(self.remote_id, password)}
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

    # ----------------------------------------------------------------- CSMS -> charger
    async def _from_csms(self, raw: str) -> None:
        try:
            frame = json.loads(raw)
        except ValueError:
            log.warning("charger %s: CSMS sent invalid JSON: %r", self.charger_id, raw[:200])
            return
        if not isinstance(frame, list) or len(frame) < 3 or not isinstance(frame[1], str):
            log.warning("charger %s: CSMS sent no OCPP frame: %r", self.charger_id, raw[:200])
            return
        if frame[0] == 2 and len(frame) == 4 and isinstance(frame[3], dict):
            await self._csms_call(frame[1], str(frame[2]), frame[3], raw)
        elif frame[0] in (3, 4):
            await self._csms_answer(frame, raw)

    async def _csms_call(self, uid: str, action: str, payload: dict[str, Any], raw: str) -> None:
        if action == "SetChargingProfile" and is_station_max(self.dialect, payload):
            if station_max_cap_a(self.dialect, payload, self.voltage_v) is None:
                log.warning("charger %s: CSMS station maximum without a usable period refused: %r", self.charger_id,
                            raw[:500])
                await self._to_csms(json.dumps([3, uid, {"status": "Rejected"}]))
                return
            profile = self.dialect.profile_of(payload) or {}
            key = profile.get("chargingProfileId", profile.get("id"))
            self.csms_max[key if isinstance(key, (int, str)) else repr(key)] = payload
            await self._to_csms(json.dumps([3, uid, {"status": "Accepted"}]))
            self._spawn(self._reassert())
            return
        if action == "ClearChargingProfile" and clears_station_max(self.dialect, payload):
            status = "Accepted" if self.csms_max else "Unknown"
            self.csms_max.clear()
            await self._to_csms(json.dumps([3, uid, {"status": status}]))
            self._spawn(self._reassert())
            return
        if uid in self.own:
            await self._to_csms(json.dumps([4, uid, "GenericError", "message id in use, send again", {}]))
            return
        if action == "ClearChargingProfile" and clear_reaches_ours(self.dialect, payload):
            self._spawn(self._narrowed_clear(uid, payload))
            return
        self.from_csms.add(uid)
        await self._to_charger(map_tx(self.dialect, raw, self.tx_in))

    async def _narrowed_clear(self, uid: str, payload: dict[str, Any]) -> None:
        """A CSMS ClearChargingProfile naming no id or purpose would take the balancer's station
        maximum profiles (its failsafe among them) too: the charger gets it once per purpose the
        CSMS may hold there (TxDefaultProfile, TxProfile), the CSMS's own station maximums are
        dropped here, and the CSMS gets one answer: Accepted when anything was cleared."""
        cleared = bool(self.csms_max)
        self.csms_max.clear()
        cp = self.link.cp
        for purpose in ("TxDefaultProfile", "TxProfile"):
            narrowed = self.dialect.narrow_clear(payload, purpose)
            if cp is None:
                break
            with contextlib.suppress(Exception):
                answer = await call_trusted(cp, "ClearChargingProfile", narrowed)
                cleared = cleared or answer.get("status") == "Accepted"
        await self._to_csms(json.dumps([3, uid, {"status": "Accepted" if cleared else "Unknown"}]))
        self._spawn(self._reassert())  # the CSMS's station maximums are gone: ours uncapped again

    async def _csms_answer(self, frame: list[Any], raw: str) -> None:
        uid = frame[1]
        entry = self.forwarded.get(uid)
        if entry is None:
            future = self.replay_waiters.pop(uid, None)
            if future is not None and not future.done():
                future.set_result(frame)
            return
        if entry.timer is not None:
            entry.timer.cancel()
        start16 = self.dialect.csms_names_transactions and entry.action == "StartTransaction"
        remote_tx = frame[2].get("transactionId") if frame[0] == 3 and isinstance(frame[2], dict) else None
        if entry.answered:
            # Answered by the balancer already (a slow CSMS): consumed; its transaction id mapped.
            if start16 and entry.local_tx is not None and remote_tx is not None:
                self._map_tx(entry.local_tx, str(remote_tx))
            self.forwarded.pop(uid, None)
            if start16 and not self.online:
                self._spawn(self._replay())  # what waited for this id goes out now, mapped
            return
        entry.answered = True
        self.hub.counters["upstream_forwarded"] += 1
        await self._to_charger(raw)
        # Observed only now (see ``inbound``): with the CSMS's transaction id; a boot once accepted.
        if not entry.routed and frame[0] == 3 and isinstance(frame[2], dict) \
                and (start16 or frame[2].get("status") == "Accepted"):
            entry.routed = True
            self.link.upstream_answer = frame[2] if start16 else None
            try:
                await self._route(entry.frame)  # the handlers' answer is held back (``outbound``)
            finally:
                self.link.upstream_answer = None
        self.forwarded.pop(uid, None)

    async def _reassert(self) -> None:
        """Send the balancer's station maximum profiles again, combined with the CSMS's as it is now."""
        cp = self.link.cp
        if cp is None:
            return
        for level, payload in sorted(self.our_max.items()):
            with contextlib.suppress(Exception):
                # Marked: ``outbound`` sends the newest of ours at this level when the frame leaves,
                # not this one, which a push of the balancer may have overtaken meanwhile.
                await call_trusted(cp, "SetChargingProfile", {**payload, REASSERT: level})

    # ----------------------------------------------------------------- the guard's hooks
    async def inbound(self, raw: str) -> bool:
        """A frame from the charger (checked by the guard); True when the balancer's handlers see it."""
        frame = json.loads(raw)
        kind, uid = frame[0], frame[1]
        if kind != 2:
            if uid in self.from_csms:
                self.from_csms.discard(uid)
                await self._to_csms(raw)
                return False
            self.own.discard(uid)
            return True
        action = frame[2]
        if not self.first_try.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.first_try.wait(), self.settings.answer_timeout_s)
        entry = _Forwarded(action, raw)
        self.forwarded[uid] = entry
        if self.online and await self._to_csms(map_tx(self.dialect, raw, self.tx_out)):
            entry.expect_csms = True
            entry.timer = asyncio.get_running_loop().call_later(self.settings.answer_timeout_s, self._timed_out, uid)
            if action == "BootNotification" or (self.dialect.csms_names_transactions and action == "StartTransaction"):
                # Observed once the CSMS answers (``_csms_answer``): the balancer's calls wait for
                # the charger to be accepted, and a 1.6 session is known by the CSMS's id.
                return False
            entry.routed = True
            return True
        entry.local = entry.routed = entry.answered = True
        self.hub.counters["upstream_local_answers"] += 1
        if action not in LOCAL_ONLY:
            entry.queue_seq = self.hub.queue.push(self.charger_id, raw)
            self.hub.counters["upstream_queued"] += 1
        return True

    def _timed_out(self, uid: str) -> None:
        entry = self.forwarded.get(uid)
        if entry is not None and not entry.answered:
            log.info("charger %s: no answer from the CSMS to %s in time; answered here", self.charger_id,
                     entry.action)
            self._spawn(self._answer_locally(entry))

    async def _answer_locally(self, entry: _Forwarded) -> None:
        entry.answered = entry.local = True
        if entry.expect_csms and self.dialect.csms_names_transactions and entry.action == "StartTransaction":
            # The charger now uses the balancer's transaction id, which the CSMS cannot know before
            # it answers: later calls wait in the queue until then, and go out mapped.
            self.online = False
        self.hub.counters["upstream_local_answers"] += 1
        if not entry.routed:
            entry.routed = True
            await self._route(entry.frame)  # the handlers' answer passes ``outbound`` to the charger
        elif entry.local_answer is not None:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await self.guard.send(entry.local_answer)  # ``outbound`` lets it pass now: entry.local

    def outbound(self, message: str) -> str | None:
        """A frame the balancer writes to the charger: the frame to send, or None to hold it back."""
        if message.startswith("[2"):
            frame = json.loads(message)
            self.own.add(frame[1])
            if frame[2] == "SetChargingProfile" and is_station_max(self.dialect, frame[3]):
                level = frame[3].pop(REASSERT, None)
                if level is not None:
                    frame[3] = self.our_max.get(level, frame[3])
                else:
                    profile = frame[3][self.dialect.profile_key]
                    self.our_max[int(profile["stackLevel"])] = frame[3]
                caps = [c for c in (station_max_cap_a(self.dialect, p, self.voltage_v)
                                    for p in self.csms_max.values()) if c is not None]
                cap = min(caps) if caps else None
                frame[3] = clamp_station_max(self.dialect, frame[3], cap, self.voltage_v)
                return json.dumps(frame, separators=(",", ":"))
            return message
        try:
            uid = json.loads(message)[1]
        except (ValueError, IndexError, TypeError):
            return message
        entry = self.forwarded.get(uid)
        if entry is None:
            return message
        if entry.local:
            if entry.action == "StartTransaction" and message.startswith("[3"):
                tx = json.loads(message)[2].get("transactionId")
                if tx is not None:
                    entry.local_tx = str(tx)
                    if entry.queue_seq is not None:
                        self.hub.queue.set_local_tx(entry.queue_seq, entry.local_tx)
            if not entry.expect_csms:
                self.forwarded.pop(uid, None)
            return message
        entry.local_answer = message
        return None

    # ----------------------------------------------------------------- lifecycle
    def detach(self) -> None:
        """Replaced by a newer connection of the same charger."""
        self._closed = True
        for task in list(self._tasks):
            task.cancel()

    async def close(self) -> None:
        """The charger is gone: so is its connection to the CSMS (which sees it go)."""
        self._closed = True
        if self.hub.relays.get(self.charger_id) is self:
            del self.hub.relays[self.charger_id]
        ws = self.ws
        if ws is not None:
            with contextlib.suppress(Exception):
                await ws.close()
        for entry in self.forwarded.values():
            if entry.timer is not None:
                entry.timer.cancel()
        for task in list(self._tasks):
            task.cancel()

