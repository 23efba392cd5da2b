"""The admin API (DESIGN 3.5) on the service's HTTP server, next to the OSCP endpoint.

Everything but ``/healthz`` needs ``Authorization: Bearer <http.admin_token>``. With no token
configured only the read-only GETs are served, and only when the listener is on loopback.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, Protocol

from aiohttp import web

from adapters.clock import utc_now
from adapters.http_body import BadBody, error_response, loads, read_body, token_matches
from adapters.meter.push import Forward, MeterSink, meter_push_handler
from adapters.status_page import add_status_page_routes

__all__ = ["AdminBackend", "add_admin_routes"]

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class AdminBackend(Protocol):
    """What the admin API needs from the service."""

    def site_ids(self) -> list[str]: ...
    def site_json(self, site_id: str) -> dict[str, Any] | None: ...
    def plan_json(self, site_id: str) -> dict[str, Any] | None: ...
    def set_needs(self, charger_id: str, energy_wh: float | None, departure: datetime | None,
                  max_current_a: float | None, phases: int | None, discharge_allowed: bool | None = None) -> None: ...
    def metrics_text(self) -> str: ...
    def health(self) -> dict[str, Any]: ...


def _error(status: int, message: str, field: str | None = None) -> web.Response:
    # "error" repeats "message" for clients of the first release; it goes in the next one.
    return error_response(status, message, field, extra={"error": message})


def _is_loopback(host: str) -> bool:
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def add_admin_routes(app: web.Application, backend: AdminBackend, *, admin_token: str | None,
                     listen_host: str, max_body_bytes: int | Callable[[], int] = 1_048_576,
                     meter_sink: MeterSink | None = None, now: Callable[[], datetime] = utc_now,
                     forward: Callable[[str, str], Awaitable[dict[str, Any] | None]] | None = None,
                     meter_forward: Forward | None = None) -> None:
    """Register ``/healthz``, ``/metrics``, ``/api/v1/...`` and the status page on ``app``.

    ``max_body_bytes``: the limit, or a function reading it from the running config (a reload
    that changes ``http.max_body_bytes`` then applies here as it does to the OSCP endpoint).
    ``forward(kind, site_id)``: cluster mode, the ``site`` or ``plan`` JSON from the site's owner
    when another instance controls it (None: serve the local one); ``meter_forward``: cluster
    mode, a pushed meter reading handed to the site's owner (``adapters.meter.push.Forward``).
    """
    loopback = _is_loopback(listen_host)

    def guard(handler: Handler, *, write: bool) -> Handler:
        async def wrapped(request: web.Request) -> web.StreamResponse:
            if admin_token:
                header = request.headers.get("Authorization", "")
                if not header:
                    return _error(401, "missing Authorization: Bearer <admin_token>")
                scheme, _, token = header.partition(" ")
                if scheme.lower() != "bearer" or not token_matches(token.strip(), admin_token):
                    return _error(403, "wrong admin token")
            elif write:
                return _error(403, "admin API writes need http.admin_token in the config")
            elif not loopback:
                return _error(403, "admin API is served without a token only on a loopback listener")
            return await handler(request)

        return wrapped

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response(backend.health())

    async def view(kind: str, site_id: str) -> dict[str, Any] | None:
        if site_id not in backend.site_ids():
            return None
        remote = None if forward is None else await forward(kind, site_id)
        if remote is not None:
            return remote
        return backend.site_json(site_id) if kind == "site" else backend.plan_json(site_id)

    async def sites(request: web.Request) -> web.Response:
        return web.json_response(await asyncio.gather(*(view("site", sid) for sid in backend.site_ids())))

    async def site(request: web.Request) -> web.Response:
        body = await view("site", request.match_info["site_id"])
        if body is None:
            return _error(404, f"unknown site {request.match_info['site_id']!r}", "site_id")
        return web.json_response(body)

    async def plan(request: web.Request) -> web.Response:
        body = await view("plan", request.match_info["site_id"])
        if body is None:
            return _error(404, f"unknown site {request.match_info['site_id']!r}", "site_id")
        return web.json_response(body)

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(text=backend.metrics_text(), content_type="text/plain", charset="utf-8")

    async def needs(request: web.Request) -> web.Response:
        charger_id = request.match_info["charger_id"]
        try:
            limit = max_body_bytes() if callable(max_body_bytes) else max_body_bytes
            data = loads(await read_body(request, limit))
        except BadBody as exc:
            log.warning("needs: bad body for %s: %s", charger_id, exc.message)
            return _error(exc.status, exc.message, exc.field)
        parsed = _parse_needs(data)
        if isinstance(parsed, web.Response):
            return parsed
        energy_wh, departure, max_current_a, phases, discharge_allowed = parsed
        try:
            backend.set_needs(charger_id, energy_wh, departure, max_current_a, phases, discharge_allowed)
        except KeyError:
            return _error(404, f"unknown charger {charger_id!r}", "charger_id")
        except ValueError as exc:
            return _error(409, str(exc), "charger_id")
        return web.json_response({"charger_id": charger_id, "accepted": True}, status=202)

    add_status_page_routes(app)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", guard(metrics, write=False))
    app.router.add_get("/api/v1/sites", guard(sites, write=False))
    app.router.add_get("/api/v1/sites/{site_id}", guard(site, write=False))
    app.router.add_get("/api/v1/sites/{site_id}/plan", guard(plan, write=False))
    app.router.add_post("/api/v1/sessions/{charger_id}/needs", guard(needs, write=True))
    if meter_sink is not None:
        app.router.add_post("/api/v1/sites/{site_id}/meter",
                            guard(meter_push_handler(meter_sink, now, max_body_bytes, meter_forward), write=True))


_NEEDS_KEYS = {"energy_wh", "departure", "max_current_a", "phases", "discharge_allowed"}


def _parse_needs(
    data: Any,
) -> tuple[float | None, datetime | None, float | None, int | None, bool | None] | web.Response:
    """Validate a needs body: ``{"energy_wh"?, "departure"?, "max_current_a"?, "phases"?,
    "discharge_allowed"?}`` (the last: the car offers V2X, DESIGN 3.9)."""
    if not isinstance(data, dict):
        return _error(400, "body must be a JSON object")
    unknown = sorted(set(data) - _NEEDS_KEYS)
    if unknown:
        return _error(400, f"unknown field {unknown[0]!r}", unknown[0])
    if not data:
        return _error(400, "give at least one of energy_wh, departure, max_current_a, phases")
    energy = data.get("energy_wh")
    if energy is not None and (isinstance(energy, bool) or not isinstance(energy, (int, float))
                               or not 0 <= energy < 1e7):
        return _error(400, f"energy_wh must be a number between 0 and 1e7, got {energy!r}", "energy_wh")
    current = data.get("max_current_a")
    if current is not None and (isinstance(current, bool) or not isinstance(current, (int, float))
                                or not 0 < current <= 1000):
        return _error(400, f"max_current_a must be a number in (0, 1000], got {current!r}", "max_current_a")
    phases = data.get("phases")
    if phases is not None and (isinstance(phases, bool) or phases not in (1, 2, 3)):
        return _error(400, f"phases must be 1, 2 or 3, got {phases!r}", "phases")
    discharge = data.get("discharge_allowed")
    if discharge is not None and not isinstance(discharge, bool):
        return _error(400, f"discharge_allowed must be true or false, got {discharge!r}", "discharge_allowed")
    departure = None
    raw = data.get("departure")
    if raw is not None:
        if not isinstance(raw, str):
            return _error(400, "departure must be an RFC 3339 date-time string", "departure")
        try:
            departure = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        except ValueError:
            return _error(400, f"departure is not an RFC 3339 date-time: {raw!r}", "departure")
        if departure.tzinfo is None:
            return _error(400, "departure needs a UTC offset (e.g. Z)", "departure")
    return (None if energy is None else float(energy), departure,
            None if current is None else float(current), phases, discharge)
