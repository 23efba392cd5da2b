"""The OSCP 2.0 Flexibility Provider endpoint (DESIGN 3.4) on the service's aiohttp server.

``POST /oscp/fp/2.0/{message}``; ``Authorization: Token <oscp.token>`` (401 missing, 403 wrong).
204 when accepted; 400 with ``{"message", "field"}`` for a bad body; 404 for an unknown group;
413 for an oversize body. A rejected message stores nothing; its raw body is logged and counted.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

import jsonschema
from aiohttp import web

from adapters.oscp.provider import FlexibilityProvider
from balancer.errors import InvalidInput
from forecast.blocks import parse_datetime, parse_update_forecast

__all__ = ["BASE_PATH", "add_oscp_routes"]

log = logging.getLogger(__name__)

BASE_PATH = "/oscp/fp/2.0"
MAX_BODY_BYTES = 1_048_576

_SCHEMAS: dict[str, Any] = json.loads(resources.files("adapters.oscp").joinpath("schemas.json").read_text())


def _validator(name: str) -> jsonschema.Draft7Validator:
    schema = dict(_SCHEMAS[name])
    schema["definitions"] = _SCHEMAS["definitions"]
    return jsonschema.Draft7Validator(schema)


_VALIDATORS = {name: _validator(name) for name in ("register", "handshake", "handshake_acknowledge", "heartbeat")}


def _error(status: int, message: str, field: str | None = None) -> web.Response:
    body: dict[str, Any] = {"message": message}
    if field is not None:
        body["field"] = field
    return web.json_response(body, status=status)


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
    return "".join(parts)


Handler = Callable[[web.Request, Any], Awaitable[web.Response]]


def add_oscp_routes(app: web.Application, fp: FlexibilityProvider) -> None:
    """Register the OSCP routes on ``app``."""

    def endpoint(name: str, handler: Handler) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def wrapped(request: web.Request) -> web.Response:
            token = fp.config.oscp.token
            header = request.headers.get("Authorization", "")
            if not header:
                return _error(401, "missing Authorization: Token <token>", "Authorization")
            scheme, _, given = header.partition(" ")
            if not token or scheme.lower() != "token" or not hmac.compare_digest(given.strip(), token):
                return _error(403, "wrong token", "Authorization")
            if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
                return _error(413, f"body larger than {MAX_BODY_BYTES} bytes")
            try:
                raw = await request.content.read(MAX_BODY_BYTES + 1)
            except Exception as exc:  # a broken upload is the peer's problem, never a 500
                return _error(400, f"cannot read body: {exc!r}")
            if len(raw) > MAX_BODY_BYTES:
                return _error(413, f"body larger than {MAX_BODY_BYTES} bytes")
            try:
                body = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                return _reject(name, raw, 400, f"body is not valid JSON: {exc}")
            validator = _VALIDATORS.get(name)
            if validator is not None:
                errors = sorted(validator.iter_errors(body), key=lambda e: list(e.absolute_path))
                if errors:
                    return _reject(name, raw, 400, errors[0].message, _path_of(errors[0]))
            return await handler(request, body)

        return wrapped

    def _reject(name: str, raw: bytes, status: int, message: str, field: str | None = None) -> web.Response:
        fp.counters["rejected"] += 1
        log.warning("OSCP %s rejected (%s): %s; raw body: %r", name, field or "-", message, raw[:2000])
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

    async def heartbeat(request: web.Request, body: Any) -> web.Response:
        at = parse_datetime(body["offline_mode_at"])
        if at is None:
            return _reject("heartbeat", json.dumps(body).encode(), 400,
                           "must be an RFC 3339 date-time with an offset", "offline_mode_at")
        fp.heartbeat(at)
        return web.Response(status=204)

    async def forecast(request: web.Request, body: Any) -> web.Response:
        try:
            parsed = parse_update_forecast(body)
        except InvalidInput as exc:
            first = exc.problems[0]
            return _reject("update_group_capacity_forecast", json.dumps(body).encode()[:2000], 400,
                           "; ".join(str(p) for p in exc.problems[:10]), first.path)
        site_id = fp.site_id_of_group(parsed.group_id)
        if site_id is None:
            return _error(404, f"unknown group_id {parsed.group_id!r}", "group_id")
        fp.accept_forecast(site_id, parsed)
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
