"""The OSCP 2.0 Flexibility Provider endpoint (DESIGN 3.4) on the service's aiohttp server.

``POST /oscp/fp/2.0/{message}``; ``Authorization: Token <oscp.token>`` (401 missing, 403 wrong).
204 when accepted, and for a repeat of an accepted message (same ``X-Request-ID``, remembered in
the state store an hour, in a cluster by every instance), which is counted (``repeats``) and not
applied again; 400 with ``{"message", "field"}`` for a bad body (numbers and times out of range,
``NaN``/``Infinity``, nesting deeper than 32 levels included); 404 for an unknown group;
413 for a body over ``http.max_body_bytes``; 501 for a ``register`` offering no version 2.0 (as
SolarNetwork answers, PROTOCOLS.md A.4). A rejected message stores nothing; its raw body is logged
with token values redacted, and counted. Bodies are parsed and validated in a worker thread, so
a large forecast does not hold up the event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from typing import Any

import jsonschema
from aiohttp import web

from adapters.http_body import BadBody, error_response, loads, read_body, redact, token_matches
from adapters.oscp.provider import MAX_HEARTBEAT_INTERVAL_S, FlexibilityProvider
from balancer.errors import InvalidInput
from forecast.blocks import DATETIME_RULE, parse_datetime, parse_update_forecast

__all__ = ["BASE_PATH", "add_oscp_routes"]

log = logging.getLogger(__name__)

BASE_PATH = "/oscp/fp/2.0"
_FORECAST = "update_group_capacity_forecast"

_SCHEMAS: dict[str, Any] = json.loads(resources.files("adapters.oscp").joinpath("schemas.json").read_text())
_SCHEMAS["definitions"]["required_behaviour"]["properties"]["heartbeat_interval"]["maximum"] = MAX_HEARTBEAT_INTERVAL_S


def _validator(name: str) -> jsonschema.Draft7Validator:
    schema = dict(_SCHEMAS[name])
    schema["definitions"] = _SCHEMAS["definitions"]
    return jsonschema.Draft7Validator(schema)


_VALIDATORS = {name: _validator(name) for name in ("register", "handshake", "handshake_acknowledge", "heartbeat")}


def _error(status: int, message: str, field: str | None = None) -> web.Response:
    return error_response(status, message, field)


def _path_of(error: jsonschema.ValidationError) -> str:
    parts: list[str] = []
    for part in error.absolute_path:
        parts.append(f"[{part}]" if isinstance(part, int) else (f".{part}" if parts else str(part)))
    if error.validator == "required" and isinstance(error.message, str):
        missing = error.message.split("'")[1] if "'" in error.message else ""
        parts.append(f".{missing}" if parts else missing)
    if error.validator == "additionalProperties":
        extra = error.message.split("'")[1] if "'" in error.message else ""
        parts.append(f".{extra}" if parts else extra)
    return "".join(parts)[:200]


def _schema_message(error: jsonschema.ValidationError) -> str:
    """The validator's message, never echoing a token and never longer than 300 characters."""
    if error.absolute_path and str(error.absolute_path[-1]).endswith("token"):
        return f"does not satisfy {error.validator}: {error.validator_value!r}"
    message = str(error.message)
    return message if len(message) <= 300 else message[:297] + "..."


def _check(name: str, raw: bytes) -> Any:
    """Parse and validate one message body; ``BadBody`` names the field. Pure: runs in a worker thread.

    Returns the ``CapacityForecast`` of a forecast, ``(body, offline_mode_at)`` of a heartbeat,
    else the body.
    """
    body = loads(raw)
    if name == _FORECAST:
        try:
            return parse_update_forecast(body)
        except InvalidInput as exc:
            message = "; ".join(str(p) for p in exc.problems[:10])
            raise BadBody(400, message[:1000], exc.problems[0].path or None) from None
    errors = sorted(_VALIDATORS[name].iter_errors(body), key=lambda e: [str(p) for p in e.absolute_path])
    if errors:
        raise BadBody(400, _schema_message(errors[0]), _path_of(errors[0]) or None)
    if name == "heartbeat":
        at = parse_datetime(body["offline_mode_at"])
        if at is None:
            raise BadBody(400, DATETIME_RULE, "offline_mode_at")
        return body, at
    return body


Handler = Callable[[web.Request, Any], Awaitable[web.Response]]


def add_oscp_routes(app: web.Application, fp: FlexibilityProvider) -> None:
    """Register the OSCP routes on ``app``.

    Bodies are checked in one worker thread: the checks are pure Python and hold the GIL, so
    more threads would only take turns with the event loop (twenty 800-block forecasts at once:
    the loop's worst stall was 0.4 s with the default pool, 0.1-0.15 s with one thread; see
    bench/README.md). Accepted forecasts are then merged one at a time on the loop.
    """
    checker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="oscp-check")
    accepting = asyncio.Lock()

    async def shutdown(app: web.Application) -> None:
        checker.shutdown(wait=False, cancel_futures=True)

    app.on_cleanup.append(shutdown)

    def endpoint(name: str, handler: Handler) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def wrapped(request: web.Request) -> web.Response:
            header = request.headers.get("Authorization", "")
            if not header:
                return _error(401, "missing Authorization: Token <token>", "Authorization")
            scheme, _, given = header.partition(" ")
            if scheme.lower() != "token" or not token_matches(given.strip(), fp.config.oscp.token):
                return _error(403, "wrong token", "Authorization")
            request_id = request.headers.get("X-Request-ID", "")[:200]
            if request_id and fp.store.seen_request(request_id):
                fp.counters["repeats"] += 1
                log.info("OSCP %s %s: applied already (the sender repeats it): answered, not applied again",
                         name, request_id)
                return web.Response(status=204)
            raw = b""
            try:
                raw = await read_body(request, fp.config.http.max_body_bytes)
                checked = await asyncio.get_running_loop().run_in_executor(checker, _check, name, raw)
            except BadBody as exc:
                return _reject(name, raw, exc.status, exc.message, exc.field)
            response = await handler(request, checked)
            if request_id and response.status < 300:
                fp.store.remember_request(request_id)
            return response

        return wrapped

    def _reject(name: str, raw: bytes, status: int, message: str, field: str | None = None) -> web.Response:
        fp.counters["rejected"] += 1
        log.warning("OSCP %s rejected (%s): %s; raw body: %r", name, field or "-", message, redact(raw))
        return _error(status, message, field)

    async def register(request: web.Request, body: Any) -> web.Response:
        if not any(v.get("version") == "2.0" for v in body["version_url"]):
            return _error(501, "no common OSCP version: this endpoint speaks 2.0", "version_url")
        fp.register(body)
        return web.Response(status=204)

    async def handshake(request: web.Request, body: Any) -> web.Response:
        fp.handshake(body, request.headers.get("X-Request-ID"))
        return web.Response(status=204)

    async def handshake_ack(request: web.Request, body: Any) -> web.Response:
        return web.Response(status=204)

    async def heartbeat(request: web.Request, checked: Any) -> web.Response:
        fp.heartbeat(checked[1])
        return web.Response(status=204)

    async def forecast(request: web.Request, parsed: Any) -> web.Response:
        site_id = fp.site_id_of_group(parsed.group_id)
        if site_id is None:
            return _error(404, f"unknown group_id {parsed.group_id!r}", "group_id")
        async with accepting:  # one merge per loop iteration: the others wait their turn
            fp.accept_forecast(site_id, parsed)
            await asyncio.sleep(0)
        if not fp.durable(site_id):
            return _error(503, "the forecast could not be stored (cluster database unreachable): send it again")
        return web.Response(status=204)

    routes: dict[str, tuple[str, Handler]] = {
        "register": ("register", register),
        "handshake": ("handshake", handshake),
        "handshake_acknowledge": ("handshake_acknowledge", handshake_ack),
        "handshake_acknowledgement": ("handshake_acknowledge", handshake_ack),
        "handshake_acknowledgment": ("handshake_acknowledge", handshake_ack),
        "heartbeat": ("heartbeat", heartbeat),
        "update_group_capacity_forecast": ("update_group_capacity_forecast", forecast),
    }
    for path, (name, handler) in routes.items():
        app.router.add_post(f"{BASE_PATH}/{path}", endpoint(name, handler))
