"""The OCPP CSMS: ``ws://HOST:PORT/ocpp/{charger_id}``, OCPP 1.6J and 2.0.1 on one endpoint.

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
import logging
import ssl
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import ocpp.messages
from aiohttp import web

from adapters.clock import utc_now
from adapters.ocpp.dialects import SUBPROTOCOLS, for_subprotocol
from adapters.ocpp.fanout import fan_out
from adapters.ocpp.guard import FrameGuard, is_request
from adapters.ocpp.link import ChargerLink
from adapters.ocpp.loglimit import LogLimiter
from adapters.ocpp.upstream import UpstreamHub
from balancer.events import ChargerOffline, ChargerSchedule, Event
from balancer.model import Charger, Config

__all__ = ["ChargerLink", "OcppServer"]

log = logging.getLogger(__name__)

PROTOCOLS = SUBPROTOCOLS
"""The subprotocols offered at the handshake, the preferred first (``dialects.REGISTERED``)."""
READ_BACKS_AT_ONCE = 20
"""Composite-schedule read-backs in flight at once across the server (see ``Pusher._read_back``)."""


class OcppServer:
    """The chargers' websocket server: the OCPP implementation of ``balancer.ports.ChargerPort``."""

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
        dialect = for_subprotocol(ws.ws_protocol)
        if dialect is None:
            log.warning("charger %s offered no known subprotocol", charger_id)
            await ws.close(code=1002, message=b"no common OCPP subprotocol")
            return ws
        if link.connected and link.cp is not None:
            # A second connection for the same charger replaces the first.
            with contextlib.suppress(Exception):
                await link.cp._connection.ws.close()
        self._sockets.add(ws)
        self.counters["connections"] += 1
        link.speaking = dialect
        guard = FrameGuard(ws, link, ocpp.max_message_bytes, ocpp.rate_limit_per_s)
        cp = dialect.charge_point_class(charger_id, guard, link, response_timeout=ocpp.response_timeout_s)
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
                if not link.pusher.registered and is_request(raw, "BootNotification") is False:
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

    def owns(self, charger_id: str) -> bool:
        return charger_id in self.links

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
