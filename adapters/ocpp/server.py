"""The OCPP CSMS: ``ws://HOST:PORT/ocpp/{charger_id}``, OCPP 1.6J, 2.0.1 and 2.1 on one endpoint.

Handshake: unknown ids get 404, a wrong or missing HTTP Basic password 401 (security profile 1),
TLS when a certificate is configured (profile 2); the version comes from the subprotocol.
Frames go through a guard before the ``ocpp`` package sees them: size limit, a token-bucket rate
limit, and the malformed frames the package would drop without a word (invalid JSON, not an
array, unknown message type) answered with the CALLERROR the spec asks for. A charger can never
take the server or another charger's connection down.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import json
import logging
import ssl
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import ocpp.messages
from aiohttp import WSMsgType, web
from ocpp.v16.enums import Action as Action16
from ocpp.v21.enums import Action as Action21
from ocpp.v201.enums import Action as Action201

from adapters.clock import utc_now
from adapters.ocpp.fanout import fan_out
from adapters.ocpp.frames import MAX_DEPTH, bad_date_times, frame_id, too_deep, translate_error
from adapters.ocpp.handlers16 import ChargePoint16
from adapters.ocpp.handlers21 import ChargePoint21
from adapters.ocpp.handlers201 import ChargePoint201
from adapters.ocpp.loglimit import LimitedLogger, LogLimiter
from adapters.ocpp.meter import MeterReader
from adapters.ocpp.pusher import Pusher
from adapters.ocpp.upstream import Relay, UpstreamHub
from balancer.events import ChargerOffline, ChargerSchedule, Event, MeterSample
from balancer.model import Charger, Config

__all__ = ["ChargerLink", "OcppServer"]

log = logging.getLogger(__name__)

PROTOCOLS = ("ocpp2.1", "ocpp2.0.1", "ocpp1.6")
KNOWN_ACTIONS = {"ocpp1.6": {a.value for a in Action16}, "ocpp2.0.1": {a.value for a in Action201},
                 "ocpp2.1": {a.value for a in Action21}}
READ_BACKS_AT_ONCE = 20
"""Composite-schedule read-backs in flight at once across the server (see ``Pusher._read_back``)."""


def _is_request(raw: str, action: str) -> bool | None:
    """For a CALL frame, whether it is ``action``; None when the frame is no CALL."""
    try:
        frame = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(frame, list) or len(frame) < 3 or frame[0] != 2:
        return None
    return bool(frame[2] == action)


class FrameGuard:
    """The ``recv``/``send`` object the ``ocpp`` package reads from, with the guards in front.

    Inbound: size, depth, rate and shape limits, date-time formats; every refusal is a CALLERROR
    with the frame's own id whenever it can be read. Outbound: CALLERRORs the package writes are
    put in this connection's dialect (``frames.DIALECT``).
    """

    def __init__(self, ws: web.WebSocketResponse, link: ChargerLink, max_bytes: int, rate_per_s: float) -> None:
        self.ws = ws
        self.link = link
        self.max_bytes = max_bytes
        self.rate = rate_per_s
        self.tokens = rate_per_s * 2
        self.stamp = time.monotonic()
        self.relay: Relay | None = None
        """Local controller mode: the charger's link to the CSMS, which sees every frame both ways."""

    async def send(self, message: str) -> None:
        if self.relay is not None:
            held = self.relay.outbound(message)
            if held is None:
                return
            message = held
        if message.startswith("[4"):  # the package refusing a CALL (schema, missing handler)
            self.link.server.counters["bad_frames"] += 1
            message = translate_error(self.link.protocol, message)
        await self.ws.send_str(message)

    def _error_frame(self, unique_id: str, code: str, text: str) -> str:
        return json.dumps([4, unique_id, code, text[:255], {}])

    async def recv(self) -> str:
        while True:
            msg = await self.ws.receive()
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                self.link.server.log_limiter.flush(log, self.link.charger_id)
                raise ConnectionResetError("websocket closed")
            if msg.type == WSMsgType.BINARY:
                data = msg.data.decode("utf-8", errors="replace")
            elif msg.type == WSMsgType.TEXT:
                data = msg.data
            else:
                continue
            problem = self._check(data)
            if problem is None:
                return str(data)
            unique_id, code, text = problem
            self.link.server.counters["bad_frames"] += 1
            self.link.server.log_limiter.log(log, logging.WARNING, self.link.charger_id, f"frame:{code}",
                                             "charger %s: bad frame (%s): %r", self.link.charger_id, text,
                                             data[:500])
            await self.ws.send_str(self._error_frame(unique_id, code, text))

    def _check(self, data: str) -> tuple[str, str, str] | None:
        """None when the frame may go to the ``ocpp`` package; else (id to answer, code, text)."""
        v16 = self.link.protocol == "ocpp1.6"
        format_code = "FormationViolation" if v16 else "FormatViolation"
        now = time.monotonic()
        self.tokens = min(self.rate * 2, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if len(data) > self.max_bytes or len(data.encode("utf-8")) > self.max_bytes:
            return frame_id(data), format_code, f"frame larger than {self.max_bytes} bytes"
        try:
            frame = json.loads(data)
        except json.JSONDecodeError:
            return "-1", format_code if v16 else "RpcFrameworkError", "invalid JSON"
        except RecursionError:
            frame = None
        if frame is None or too_deep(data, frame):
            return frame_id(data), format_code, f"frame nested deeper than {MAX_DEPTH} levels"
        if not isinstance(frame, list) or len(frame) < 3 or not isinstance(frame[1], str):
            unique = frame[1] if isinstance(frame, list) and len(frame) > 1 and isinstance(frame[1], str) else "-1"
            return unique, format_code, "a frame is [type, id, ...]"
        kind = frame[0]
        if kind not in (2, 3, 4):
            return frame[1], "ProtocolError" if v16 else "MessageTypeNotSupported", f"message type {kind!r}"
        if kind == 2:
            if self.tokens < 1.0:
                self.link.server.counters["rate_limited"] += 1
                return frame[1], "GenericError", "rate limit exceeded, slow down"
            self.tokens -= 1.0
            if len(frame) != 4 or not isinstance(frame[2], str) or not isinstance(frame[3], dict):
                return frame[1], format_code, "a CALL is [2, id, action, {payload}]"
            protocol = self.link.protocol or "ocpp1.6"
            if frame[2] not in KNOWN_ACTIONS[protocol]:
                # The ocpp package says NotSupported here; the spec's word for an unknown action is
                # NotImplemented (NotSupported is for a known action the receiver does not do).
                return frame[1], "NotImplemented", f"unknown action {frame[2][:50]!r}"
            bad = bad_date_times(protocol, frame[2], frame[3])
            if bad:
                return frame[1], format_code, f"not an RFC 3339 date-time: {'; '.join(bad)}"
        return None


class ChargerLink:
    """One charger's connection state: what the handlers and the pusher share."""

    def __init__(self, server: OcppServer, charger: Charger) -> None:
        self.server = server
        self.charger = charger
        self.charger_id = charger.id
        self.protocol: str | None = None
        self.cp: Any = None
        self.connected = False
        self.transaction_id: str | None = None
        self.tx_known = False
        """True once the charger has told this server about its transaction (a start, a stop, a
        transaction id in its meter values or events). Until then, after a restart, the
        controller's restored session is the best knowledge (``Pusher.offer``)."""
        self.ended_tx: str | None = None
        """The last transaction this charger stopped: late meter values for it start nothing."""
        self.pusher = Pusher(self)
        self.meter = MeterReader(self)
        self.status = "unknown"
        self.upstream_answer: dict[str, Any] | None = None
        """Local controller mode: the CSMS's answer to the charger's call the handlers now observe."""

    @property
    def ocpp_logger(self) -> LimitedLogger:
        """The logger for this charger's ``ocpp`` ChargePoint: its error lines rate-limited."""
        return LimitedLogger(logging.getLogger("ocpp"), self.server.log_limiter, self.charger_id)

    @property
    def heartbeat_s(self) -> int:
        return self.server.config.ocpp.heartbeat_interval_s

    def now(self) -> datetime:
        return self.server.now()

    def now_iso(self) -> str:
        return self.now().isoformat(timespec="seconds").replace("+00:00", "Z")

    def emit(self, event: Event) -> None:
        if isinstance(event, MeterSample):
            self.pusher.observe(event)
        try:
            self.server.on_event(event)
        except Exception:  # the core's trouble must not break the charger's connection
            log.exception("event handler failed for %r", event)

    def authorize_status(self) -> str:
        if self.server.upstream is not None:  # asked only while the CSMS cannot answer (ocpp/upstream.py)
            return "Accepted" if self.server.upstream.settings.offline_authorize == "accept" else "Invalid"
        return "Accepted" if self.server.config.ocpp.authorize == "accept_all" else "Blocked"

    def booted(self) -> None:
        self.pusher.on_boot()

    def session_changed(self) -> None:
        self.pusher.on_session_changed()

    def transaction_started(self, tx: str) -> bool:
        """The charger says transaction ``tx`` runs; True when that is news to this link."""
        self.tx_known = True
        if self.transaction_id == tx or tx == self.ended_tx:
            return False
        self.transaction_id = tx
        return True

    def transaction_ended(self, tx: str) -> None:
        self.tx_known = True
        self.ended_tx = tx
        if self.transaction_id == tx:
            self.transaction_id = None


class OcppServer:
    """The chargers' websocket server."""

    def __init__(self, config: Config, on_event: Callable[[Event], None],
                 now: Callable[[], datetime] = utc_now) -> None:
        self.config = config
        self.on_event = on_event
        self.now = now
        self.links: dict[str, ChargerLink] = {}
        self.voltage: dict[str, float] = {}
        self.site_of: dict[str, str] = {}
        self._site_locks: dict[str, asyncio.Lock] = {}
        self._update_links(config)
        self._runner: web.AppRunner | None = None
        self._port = 0
        self._sockets: set[web.WebSocketResponse] = set()
        self.counters: dict[str, int] = {"bad_frames": 0, "rate_limited": 0, "refused": 0, "connections": 0,
                                         "pushes": 0, "push_failures": 0, "implausible_meter_values": 0}
        self.log_limiter = LogLimiter()
        """Thins the per-charger warnings (bad frames, implausible readings) to a few per minute."""
        self._fanouts = 0
        self.quiet = asyncio.Event()
        """Set while no fan-out of new limits is under way: read-backs wait for it."""
        self.quiet.set()
        self.read_back_slots = asyncio.Semaphore(READ_BACKS_AT_ONCE)
        """How many composite-schedule read-backs may be in flight across all chargers."""
        self.upstream = UpstreamHub(self) if config.ocpp.upstream is not None else None
        """Local controller mode (DESIGN 3.11): chargers forwarded to the operator's CSMS."""

    def _update_links(self, config: Config) -> None:
        for site in config.sites:
            for charger in site.chargers:
                self.voltage[charger.id] = site.voltage_v
                self.site_of[charger.id] = site.id
                if charger.id in self.links:
                    self.links[charger.id].charger = charger
                else:
                    self.links[charger.id] = ChargerLink(self, charger)

    def update_config(self, config: Config) -> None:
        self.config = config
        self._update_links(config)

    @property
    def port(self) -> int:
        return self._port

    async def start(self) -> None:
        # The ocpp package validates each message in a thread-pool hop by default; validating in
        # place costs a third less CPU per message (STACK.md) and keeps the order of the loop.
        ocpp.messages.ASYNC_VALIDATION = False
        app = web.Application()
        app.router.add_get("/ocpp/{charger_id}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        context = None
        if self.config.ocpp.tls_cert:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.load_cert_chain(self.config.ocpp.tls_cert, self.config.ocpp.tls_key)
        site = web.TCPSite(self._runner, self.config.ocpp.host, self.config.ocpp.port, ssl_context=context,
                           backlog=4096)
        await site.start()
        sockets = getattr(site._server, "sockets", None) or []
        self._port = sockets[0].getsockname()[1] if sockets else self.config.ocpp.port

    async def stop(self) -> None:
        for ws in list(self._sockets):
            with contextlib.suppress(Exception):
                await ws.close()
        for link in self.links.values():
            link.pusher.cancel()
        if self.upstream is not None:
            await self.upstream.close()
        if self._runner is not None:
            await self._runner.cleanup()

    def _authorised(self, request: web.Request, charger: Charger) -> bool:
        if not charger.password:
            return True
        header = request.headers.get("Authorization", "")
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, _, password = base64.b64decode(encoded.strip()).decode("utf-8").partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        return user == charger.id and hmac.compare_digest(password, charger.password)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        charger_id = request.match_info["charger_id"]
        link = self.links.get(charger_id)
        if link is None:
            self.counters["refused"] += 1
            log.warning("refused unknown charger id %r", charger_id)
            return web.Response(status=404, text="unknown charger")
        if not self._authorised(request, link.charger):
            self.counters["refused"] += 1
            log.warning("refused charger %s: wrong or missing HTTP Basic password", charger_id)
            return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="ocpp"'})
        ocpp = self.config.ocpp
        ws = web.WebSocketResponse(protocols=PROTOCOLS, max_msg_size=ocpp.max_message_bytes * 4, heartbeat=60.0)
        await ws.prepare(request)
        if ws.ws_protocol not in PROTOCOLS:
            log.warning("charger %s offered no known subprotocol", charger_id)
            await ws.close(code=1002, message=b"no common OCPP subprotocol")
            return ws
        if link.connected and link.cp is not None:
            # A second connection for the same charger replaces the first.
            with contextlib.suppress(Exception):
                await link.cp._connection.ws.close()
        self._sockets.add(ws)
        self.counters["connections"] += 1
        link.protocol = ws.ws_protocol
        guard = FrameGuard(ws, link, ocpp.max_message_bytes, ocpp.rate_limit_per_s)
        cls: type[ChargePoint16 | ChargePoint201] = ChargePoint16 if link.protocol == "ocpp1.6" else \
            ChargePoint21 if link.protocol == "ocpp2.1" else ChargePoint201
        cp = cls(charger_id, guard, link, response_timeout=ocpp.response_timeout_s)
        link.cp = cp
        link.connected = True
        relay = self.upstream.attach(link, guard, request.headers.get("Authorization")) if self.upstream else None
        guard.relay = relay
        # ChargerOnline comes from the pusher once the charger has booted (or shown it is
        # registered already) and its capabilities are read: no profile before (Pusher.on_boot).
        link.pusher.on_connect()
        try:
            while True:
                raw = await guard.recv()
                try:
                    if relay is None or await relay.inbound(raw):
                        await cp.route_message(raw)
                except Exception as exc:  # nothing a charger sends may end the loop
                    self.log_limiter.log(log, logging.WARNING, charger_id, "failed", "charger %s: message failed: %r",
                                         charger_id, exc)
                if not link.pusher.registered and _is_request(raw, "BootNotification") is False:
                    link.pusher.on_heard()
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self._sockets.discard(ws)
            if relay is not None:
                await relay.close()
            if link.cp is cp:
                link.connected = False
                link.pusher.on_disconnect()
                link.emit(ChargerOffline(charger_id, self.now()))
        return ws

    async def apply(self, schedules: Sequence[ChargerSchedule]) -> None:
        """Push decisions: every decrease, now and in the slots ahead, sent and accepted before any
        increase is sent (``fanout``); the fan-outs of one site one after the other."""
        items = []
        for schedule in schedules:
            link = self.links.get(schedule.charger_id)
            if link is not None and link.pusher.offer(schedule) != "none":
                items.append((link, schedule))
        if not items:
            return
        self._fanouts += 1
        self.quiet.clear()
        try:
            site = self.site_of.get(items[0][0].charger_id, "")
            async with self._site_locks.setdefault(site, asyncio.Lock()):
                await fan_out(items)
        finally:
            self._fanouts -= 1
            if self._fanouts == 0:
                self.quiet.set()

    def charger_status(self, charger_id: str) -> dict[str, Any]:
        link = self.links.get(charger_id)
        if link is None:
            return {}
        upstream = {} if self.upstream is None else self.upstream.status(charger_id)
        return {"connected": link.connected, "protocol": link.protocol, "transaction_id": link.transaction_id,
                **link.pusher.status(), **upstream}
