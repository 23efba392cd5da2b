"""A plain CSMS for the local controller tests: the ``ocpp`` package's own ChargePoint routing.

Nothing of ours answers here: the package validates every message against the official schemas
and its handlers answer as a simple CSMS would. Every frame on its wire is recorded as sent or
received, per charger connection, so tests compare byte for byte with the charger's own wire.
It can go down and come back on the same port, and answer slowly.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from typing import Any

from aiohttp import WSMsgType, web
from ocpp.v16 import ChargePoint as Cp16
from ocpp.v16 import call_result as result16
from ocpp.v16.enums import Action as Action16
from ocpp.v201 import ChargePoint as Cp201
from ocpp.v201 import call_result as result201
from ocpp.v201.enums import Action as Action201

from adapters.ocpp.routing import on


class _Wire:
    def __init__(self, ws: web.WebSocketResponse, csms: PlainCsms, charger_id: str) -> None:
        self.ws = ws
        self.csms = csms
        self.charger_id = charger_id

    async def recv(self) -> str:
        msg = await self.ws.receive()
        if msg.type != WSMsgType.TEXT:
            raise ConnectionResetError("closed")
        self.csms.wire.append((self.charger_id, "in", str(msg.data)))
        return str(msg.data)

    async def send(self, message: str) -> None:
        self.csms.wire.append((self.charger_id, "out", message))
        await self.ws.send_str(message)


class _Csms16(Cp16):  # type: ignore[misc]
    def __init__(self, charger_id: str, wire: _Wire, csms: PlainCsms) -> None:
        super().__init__(charger_id, wire, response_timeout=5)
        self.csms = csms

    @on(Action16.boot_notification)
    async def boot(self, **kw: Any) -> Any:
        await self.csms.delay()
        return result16.BootNotification(current_time=self.csms.now(), interval=300, status="Accepted")

    @on(Action16.heartbeat)
    async def heartbeat(self) -> Any:
        await self.csms.delay()
        return result16.Heartbeat(current_time=self.csms.now())

    @on(Action16.status_notification)
    async def status(self, **kw: Any) -> Any:
        await self.csms.delay()
        return result16.StatusNotification()

    @on(Action16.authorize)
    async def authorize(self, id_tag: str) -> Any:
        await self.csms.delay()
        return result16.Authorize(id_tag_info={"status": "Accepted"})

    @on(Action16.start_transaction)
    async def start_tx(self, **kw: Any) -> Any:
        await self.csms.delay()
        return result16.StartTransaction(transaction_id=next(self.csms.tx_ids), id_tag_info={"status": "Accepted"})

    @on(Action16.stop_transaction)
    async def stop_tx(self, **kw: Any) -> Any:
        await self.csms.delay()
        return result16.StopTransaction()

    @on(Action16.meter_values)
    async def meter(self, **kw: Any) -> Any:
        await self.csms.delay()
        return result16.MeterValues()


class _Csms201(Cp201):  # type: ignore[misc]
    def __init__(self, charger_id: str, wire: _Wire, csms: PlainCsms) -> None:
        super().__init__(charger_id, wire, response_timeout=5)
        self.csms = csms

    @on(Action201.boot_notification)
    async def boot(self, **kw: Any) -> Any:
        return result201.BootNotification(current_time=self.csms.now(), interval=300, status="Accepted")

    @on(Action201.heartbeat)
    async def heartbeat(self) -> Any:
        return result201.Heartbeat(current_time=self.csms.now())

    @on(Action201.status_notification)
    async def status(self, **kw: Any) -> Any:
        return result201.StatusNotification()

    @on(Action201.transaction_event)
    async def transaction(self, **kw: Any) -> Any:
        return result201.TransactionEvent(id_token_info={"status": "Accepted"} if kw.get("id_token") else None)

    @on(Action201.meter_values)
    async def meter(self, **kw: Any) -> Any:
        return result201.MeterValues()

    @on(Action201.notify_ev_charging_needs)
    async def needs(self, **kw: Any) -> Any:
        return result201.NotifyEVChargingNeeds(status="Accepted")


class PlainCsms:
    """The CSMS on ``ws://127.0.0.1:{port}/ocpp/{id}``; ``cps[id]`` is the package's object per charger."""

    def __init__(self, port: int = 0, ssl_context: Any = None) -> None:
        self.port = port
        self.ssl_context = ssl_context
        self.wire: list[tuple[str, str, str]] = []
        self.cps: dict[str, Any] = {}
        self.connections = 0
        self.answer_delay_s = 0.0
        self.tx_ids = itertools.count(5001)
        self._runner: web.AppRunner | None = None
        self._sockets: set[web.WebSocketResponse] = set()

    @staticmethod
    def now() -> str:
        from datetime import UTC, datetime
        return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")

    async def delay(self) -> None:
        if self.answer_delay_s:
            await asyncio.sleep(self.answer_delay_s)

    @property
    def url(self) -> str:
        return f"{'wss' if self.ssl_context else 'ws'}://127.0.0.1:{self.port}/ocpp"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/ocpp/{cid}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=self.ssl_context)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        for ws in list(self._sockets):
            with contextlib.suppress(Exception):
                await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        cid = request.match_info["cid"]
        ws = web.WebSocketResponse(protocols=("ocpp1.6", "ocpp2.0.1"))
        await ws.prepare(request)
        self._sockets.add(ws)
        self.connections += 1
        wire = _Wire(ws, self, cid)
        cp = (_Csms16 if ws.ws_protocol == "ocpp1.6" else _Csms201)(cid, wire, self)
        self.cps[cid] = cp
        with contextlib.suppress(ConnectionResetError, asyncio.CancelledError):
            await cp.start()
        self._sockets.discard(ws)
        return ws

    def frames(self, charger_id: str, direction: str) -> list[str]:
        return [f for c, d, f in self.wire if c == charger_id and d == direction]
