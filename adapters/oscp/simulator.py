"""A simulated grid operator (OSCP Capacity Provider) for tests, benchmarks and the demo.

It runs a real aiohttp server that records every message the balancer sends it, and a client
that registers, handshakes, sends capacity forecasts from a day profile, heartbeats, and can go
silent. Times are passed in, so it works with the demo's accelerated clock.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import aiohttp
from aiohttp import web

__all__ = ["GridOperatorSimulator", "day_profile_blocks"]


def _iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def day_profile_blocks(start: datetime, *, base_kw: float, dip_kw: float, dip_start_h: int = 17,
                       dip_end_h: int = 20, hours: int = 24, block_minutes: int = 15) -> list[dict[str, Any]]:
    """Forecast blocks over ``hours`` from ``start``: ``base_kw``, with ``dip_kw`` in the peak hours."""
    blocks = []
    step = timedelta(minutes=block_minutes)
    for k in range(hours * 60 // block_minutes):
        t = start + k * step
        in_dip = dip_start_h <= t.hour < dip_end_h
        blocks.append({"capacity": dip_kw if in_dip else base_kw, "phase": "ALL", "unit": "KW",
                       "start_time": _iso(t), "end_time": _iso(t + step)})
    return blocks


@dataclass
class GridOperatorSimulator:
    """A Capacity Provider: ``fp_url`` is the balancer's OSCP base, ``fp_token`` what we send it."""

    fp_url: str
    fp_token: str
    our_token: str = "cp-secret"
    received: list[tuple[str, dict[str, Any], dict[str, str]]] = field(default_factory=list)
    repeats: list[tuple[str, dict[str, Any], dict[str, str]]] = field(default_factory=list)
    """Messages whose X-Request-ID was accepted before: answered 204 and dropped, as a receiver does."""
    _ids: set[str] = field(default_factory=set)
    silent: bool = False
    fail_with: int | None = None
    _runner: web.AppRunner | None = None
    _session: aiohttp.ClientSession | None = None
    port: int = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/oscp/cp/2.0"

    async def start(self, port: int = 0) -> None:
        app = web.Application()
        app.router.add_post("/oscp/cp/2.0/{message}", self._receive)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._session = aiohttp.ClientSession()

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _receive(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Token {self.our_token}":
            return web.json_response({"message": "wrong token"}, status=403)
        if self.fail_with is not None:
            return web.json_response({"message": "simulated failure"}, status=self.fail_with)
        message = (request.match_info["message"], await request.json(), dict(request.headers))
        request_id = request.headers.get("X-Request-ID")
        if request_id is not None and request_id in self._ids:
            self.repeats.append(message)
        else:
            self.received.append(message)
            if request_id is not None:
                self._ids.add(request_id)
        return web.Response(status=204)

    def messages(self, name: str) -> list[dict[str, Any]]:
        return [body for path, body, _ in self.received if path == name]

    async def post(self, message: str, body: dict[str, Any]) -> int:
        """POST one message to the balancer; returns the HTTP status (0 when silent)."""
        if self.silent:
            return 0
        assert self._session is not None
        async with self._session.post(f"{self.fp_url}/{message}", json=body, headers={
                "Authorization": f"Token {self.fp_token}", "X-Request-ID": str(uuid.uuid4())}) as response:
            await response.read()
            return response.status

    async def register(self) -> int:
        return await self.post("register", {"token": self.our_token,
                                            "version_url": [{"version": "2.0", "base_url": self.base_url}]})

    async def handshake(self, heartbeat_interval_s: int = 60) -> int:
        return await self.post("handshake", {"required_behaviour": {
            "heartbeat_interval": heartbeat_interval_s, "measurement_configuration": ["CONTINUOUS"]}})

    async def heartbeat(self, offline_mode_at: datetime) -> int:
        return await self.post("heartbeat", {"offline_mode_at": _iso(offline_mode_at)})

    async def send_forecast(self, group_id: str, blocks: list[dict[str, Any]], kind: str = "CONSUMPTION") -> int:
        return await self.post("update_group_capacity_forecast",
                               {"group_id": group_id, "type": kind, "forecasted_blocks": blocks})
