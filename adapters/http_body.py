"""Request bodies and credentials at the HTTP edge (OSCP endpoint and admin API).

Everything a peer sends is read here before any handler sees it, so that no input can reach a
5xx: the whole body up to a limit (413 past it, chunked or not), JSON in the strict sense of
RFC 8259 (no ``NaN``/``Infinity``), nested at most ``MAX_JSON_DEPTH`` levels, integer literals
of any length (long ones become floats, ``inf`` beyond 1e308, which every field check refuses
by name), tokens compared as bytes, and secrets redacted from what is logged.
"""

from __future__ import annotations

import hmac
import json
import re
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

__all__ = ["ERROR_CODES", "MAX_JSON_DEPTH", "BadBody", "error_body", "error_response", "loads", "read_body", "redact",
           "token_matches"]

MAX_JSON_DEPTH = 32
# Longer integer literals are read as floats: int() refuses more than 4,300 digits, and a field
# check must see a number it can compare, not a ValueError.
_MAX_INT_DIGITS = 20
_SECRET_FIELD = re.compile(rb'("(?:[A-Za-z_]*token|password|secret)"\s*:\s*)"(?:[^"\\]|\\.)*"?', re.IGNORECASE)


class BadBody(Exception):
    """A body refused at the edge: ``status`` (400 or 413), a message and the field, if known."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field


ERROR_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 409: "conflict",
               413: "payload_too_large", 501: "not_implemented"}


def error_response(status: int, message: str, field: str | None = None, *,
                   extra: dict[str, Any] | None = None) -> web.Response:
    """The one error body of the HTTP server: ``{"message", "field", "code"}``, ``field`` only when known.

    ``code`` is a stable word for the status (``ERROR_CODES``) that clients can branch on.
    """
    return web.json_response(error_body(status, message, field, extra=extra), status=status)


def error_body(status: int, message: str, field: str | None = None, *,
               extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The body of ``error_response`` (for an answer made on another instance of a cluster)."""
    body: dict[str, Any] = {"message": message, "code": ERROR_CODES.get(status, "error"), **(extra or {})}
    if field is not None:
        body["field"] = field
    return body


def token_matches(given: str, expected: str | None) -> bool:
    """Constant-time comparison of a token from a header with the configured one.

    Compared as bytes: ``hmac.compare_digest`` raises TypeError on a non-ASCII str. Header values
    that were not UTF-8 arrive with surrogate escapes; "surrogatepass" encodes any str.
    """
    if not expected:
        return False
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass"))


async def read_body(request: web.BaseRequest, limit: int) -> bytes:
    """The whole body, chunked or not; ``BadBody(413)`` past ``limit`` bytes, 400 if the upload breaks."""
    if request.content_length is not None and request.content_length > limit:
        raise BadBody(413, f"body larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.content.iter_any():
            size += len(chunk)
            if size > limit:
                raise BadBody(413, f"body larger than {limit} bytes")
            chunks.append(chunk)
    except (HttpProcessingError, ConnectionError) as exc:
        raise BadBody(400, f"cannot read body: {exc!r}") from None
    return b"".join(chunks)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number (RFC 8259)")


def _integer(text: str) -> int | float:
    return int(text) if len(text) <= _MAX_INT_DIGITS else float(text)


def _too_deep(value: Any) -> str | None:
    """The path of a container nested deeper than ``MAX_JSON_DEPTH``, or None.

    The path is kept as a linked trail (parent, key) and spelled out only when one is found.
    """
    Trail = tuple[Any, str | int] | None
    stack: list[tuple[Any, int, Trail]] = [(value, 1, None)]
    while stack:
        item, depth, trail = stack.pop()
        if depth > MAX_JSON_DEPTH:
            parts: list[str] = []
            while trail is not None:
                trail, key = trail
                parts.append(f"[{key}]" if isinstance(key, int) else f".{key}")
            return "".join(reversed(parts)).lstrip(".")
        pairs = item.items() if isinstance(item, dict) else enumerate(item)
        stack.extend((v, depth + 1, (trail, k)) for k, v in pairs if isinstance(v, (dict, list)))
    return None


def loads(raw: bytes) -> Any:
    """Parse a JSON body strictly; ``BadBody(400)`` with the reason (and the field when known)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadBody(400, f"body is not UTF-8: {exc}") from None
    try:
        value = json.loads(text, parse_int=_integer, parse_constant=_refuse_constant)
    except RecursionError:
        raise BadBody(400, f"body is nested deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as exc:  # JSONDecodeError is one
        raise BadBody(400, f"body is not valid JSON: {exc}") from None
    path = _too_deep(value) if isinstance(value, (dict, list)) else None
    if path is not None:
        raise BadBody(400, f"nested deeper than {MAX_JSON_DEPTH} levels", path or None)
    return value


def redact(raw: bytes, limit: int = 2000) -> bytes:
    """``raw`` for a log line: the values of token, password and secret fields hidden, then cut to ``limit``."""
    return _SECRET_FIELD.sub(rb'\1"***"', raw)[:limit]
