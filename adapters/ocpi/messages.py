"""OCPI 2.2.1 transport and objects: the envelope, tokens, pagination, and body validation.

Every body is checked against the 2.2.1 object definitions (PROTOCOLS.md C) before anything is
stored; a problem raises ``OcpiError`` naming the field (``charging_profile.charging_profile_period[1].limit``),
answered HTTP 400 with status_code 2001. Unknown fields are ignored, as the spec asks.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

__all__ = [
    "VERSION",
    "ChargingPreferences",
    "CredentialsIn",
    "OcpiError",
    "ProfileIn",
    "decode_token",
    "encode_token",
    "envelope",
    "iso",
    "ocpi_response",
    "paginate",
    "parse_credentials",
    "parse_datetime",
    "parse_preferences",
    "parse_set_profile",
    "parse_url",
]

VERSION = "2.2.1"
MAX_PAGE = 100
"""The largest page the Sender interfaces hand out (``X-Limit``)."""


class OcpiError(Exception):
    """An OCPI error answer: HTTP ``http``, envelope ``status_code``, a message and the field."""

    def __init__(self, message: str, field: str | None = None, *, status_code: int = 2001, http: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.status_code = status_code
        self.http = http


def iso(t: datetime) -> str:
    """An OCPI DateTime: UTC, seconds, ``Z``."""
    return t.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def envelope(data: Any = None, status_code: int = 1000, message: str = "Success") -> dict[str, Any]:
    body: dict[str, Any] = {"status_code": status_code, "status_message": message,
                            "timestamp": iso(datetime.now(UTC))}
    if data is not None:
        body["data"] = data
    return body


def ocpi_response(request: web.Request, data: Any = None, *, status: int = 200, status_code: int = 1000,
                  message: str = "Success", headers: dict[str, str] | None = None,
                  field: str | None = None) -> web.Response:
    """The envelope with ``X-Request-ID``/``X-Correlation-ID`` echoed (made up when absent).

    Error answers also carry the service's one error body keys (``message``, ``code``, ``field``).
    """
    body = envelope(data, status_code, message)
    if status_code >= 2000:
        body["message"] = message
        body["code"] = {400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
                        429: "too_many_requests"}.get(status, "error")
        if field is not None:
            body["field"] = field
    out = {"X-Request-ID": request.headers.get("X-Request-ID") or str(uuid.uuid4()),
           "X-Correlation-ID": request.headers.get("X-Correlation-ID") or str(uuid.uuid4()),
           **(headers or {})}
    return web.json_response(body, status=status, headers=out)


def encode_token(token: str) -> str:
    """The ``Authorization`` header value for a credentials token (base64 in 2.2.x)."""
    return "Token " + base64.b64encode(token.encode()).decode()


def decode_token(header: str | None) -> list[str]:
    """The candidate tokens of an ``Authorization: Token ...`` header: its base64 decoding (2.2.x)
    and the raw value (2.1.1 style, which some platforms still send); empty when malformed."""
    if not header or not header.startswith("Token "):
        return []
    raw = header[6:].strip()
    out = []
    try:
        decoded = base64.b64decode(raw, validate=True).decode("ascii")
        if decoded:
            out.append(decoded)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        pass
    out.append(raw)
    return out


def paginate(request: web.Request, items: list[Any], base_url: str) -> tuple[list[Any], dict[str, str]]:
    """One page of ``items`` by ``offset``/``limit`` with ``Link``, ``X-Total-Count`` and ``X-Limit``."""
    offset = _query_int(request, "offset", 0)
    limit = min(_query_int(request, "limit", MAX_PAGE), MAX_PAGE)
    page = items[offset:offset + limit]
    headers = {"X-Total-Count": str(len(items)), "X-Limit": str(MAX_PAGE)}
    if offset + limit < len(items):
        headers["Link"] = f'<{base_url}?offset={offset + limit}&limit={limit}>; rel="next"'
    return page, headers


def _query_int(request: web.Request, name: str, default: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or len(raw) > 9:
        raise OcpiError(f"{name} must be a non-negative integer, got {raw!r}", name)
    return int(raw)


# --------------------------------------------------------------------------- field checks
def _obj(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise OcpiError(f"{path or 'body'} must be an object, got {type(value).__name__}", path or None)
    return value


def _need(obj: dict[str, Any], key: str, path: str) -> Any:
    if obj.get(key) is None:
        raise OcpiError(f"{_at(path, key)} is required", _at(path, key))
    return obj[key]


def _at(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _number(value: Any, path: str, *, minimum: float = 0.0, maximum: float = 1e9) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise OcpiError(f"{path} must be a number, got {value!r}", path)
    if not minimum <= value <= maximum:  # also refuses inf
        raise OcpiError(f"{path} must be between {minimum:g} and {maximum:g}, got {value!r}", path)
    return float(value)


def _int(value: Any, path: str, *, minimum: int = 0, maximum: int = 10**9) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise OcpiError(f"{path} must be an integer, got {value!r}", path)
    if not minimum <= value <= maximum:
        raise OcpiError(f"{path} must be between {minimum} and {maximum}, got {value!r}", path)
    return value


def _string(value: Any, path: str, max_len: int) -> str:
    if not isinstance(value, str) or not value:
        raise OcpiError(f"{path} must be a non-empty string, got {value!r}", path)
    if len(value) > max_len or not value.isascii() or not value.isprintable():
        raise OcpiError(f"{path} must be at most {max_len} printable ASCII characters", path)
    return value


def _enum(value: Any, path: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise OcpiError(f"{path} must be one of {', '.join(choices)}, got {value!r}", path)
    return str(value)


def parse_datetime(value: Any, path: str) -> datetime:
    """An OCPI DateTime (RFC 3339, UTC; without an offset it is taken as UTC)."""
    if not isinstance(value, str) or len(value) > 40:
        raise OcpiError(f"{path} must be an RFC 3339 date-time string, got {value!r}", path)
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise OcpiError(f"{path} must be an RFC 3339 date-time, got {value!r}", path) from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def parse_url(value: Any, path: str) -> str:
    url = _string(value, path, 255)
    if not url.startswith(("http://", "https://")) or len(url) < 10 or " " in url:
        raise OcpiError(f"{path} must be an http(s) URL, got {value!r}", path)
    return url


# --------------------------------------------------------------------------- objects
ROLES = ("CPO", "EMSP", "HUB", "NAP", "NSP", "OTHER", "SCSP")


@dataclass(frozen=True)
class CredentialsIn:
    token: str
    url: str
    roles: tuple[dict[str, Any], ...]

    @property
    def key(self) -> str:
        """The party's name for us: ``{country_code}*{party_id}`` of its first role."""
        first = self.roles[0]
        return f"{first['country_code'].upper()}*{first['party_id'].upper()}"


def parse_credentials(body: Any) -> CredentialsIn:
    obj = _obj(body, "")
    token = _string(_need(obj, "token", ""), "token", 64)
    url = parse_url(_need(obj, "url", ""), "url")
    roles = _need(obj, "roles", "")
    if not isinstance(roles, list) or not roles:
        raise OcpiError("roles must be a non-empty list", "roles")
    out = []
    for i, raw in enumerate(roles):
        path = f"roles[{i}]"
        role = _obj(raw, path)
        _enum(_need(role, "role", path), f"{path}.role", ROLES)
        details = _obj(_need(role, "business_details", path), f"{path}.business_details")
        _string(_need(details, "name", f"{path}.business_details"), f"{path}.business_details.name", 100)
        for key, size in (("party_id", 3), ("country_code", 2)):
            value = _string(_need(role, key, path), f"{path}.{key}", size)
            if len(value) != size or not value.isalnum():
                raise OcpiError(f"{path}.{key} must be {size} letters or digits, got {value!r}", f"{path}.{key}")
        out.append(role)
    return CredentialsIn(token=token, url=url, roles=tuple(out))


@dataclass(frozen=True)
class ProfileIn:
    """A validated SetChargingProfile: periods as (start_period s, limit in ``unit``)."""

    unit: str
    periods: tuple[tuple[int, float], ...]
    start: datetime | None
    duration_s: int | None
    min_rate: float | None
    response_url: str


def parse_set_profile(body: Any) -> ProfileIn:
    obj = _obj(body, "")
    response_url = parse_url(_need(obj, "response_url", ""), "response_url")
    profile = _obj(_need(obj, "charging_profile", ""), "charging_profile")
    p = "charging_profile"
    unit = _enum(_need(profile, "charging_rate_unit", p), f"{p}.charging_rate_unit", ("W", "A"))
    start = None
    if profile.get("start_date_time") is not None:
        start = parse_datetime(profile["start_date_time"], f"{p}.start_date_time")
    duration = None
    if profile.get("duration") is not None:
        duration = _int(profile["duration"], f"{p}.duration", minimum=1, maximum=10 * 365 * 86400)
    min_rate = None
    if profile.get("min_charging_rate") is not None:
        min_rate = _number(profile["min_charging_rate"], f"{p}.min_charging_rate")
    raw_periods = _need(profile, "charging_profile_period", p)
    if not isinstance(raw_periods, list) or not raw_periods:
        raise OcpiError(f"{p}.charging_profile_period must be a non-empty list", f"{p}.charging_profile_period")
    if len(raw_periods) > 1000:
        raise OcpiError(f"{p}.charging_profile_period holds more than 1000 periods", f"{p}.charging_profile_period")
    periods: list[tuple[int, float]] = []
    maximum = 1000.0 if unit == "A" else 10_000_000.0
    for i, raw in enumerate(raw_periods):
        path = f"{p}.charging_profile_period[{i}]"
        period = _obj(raw, path)
        start_period = _int(_need(period, "start_period", path), f"{path}.start_period")
        if i == 0 and start_period != 0:
            raise OcpiError(f"{path}.start_period must be 0 for the first period", f"{path}.start_period")
        if periods and start_period <= periods[-1][0]:
            raise OcpiError(f"{path}.start_period must be greater than the one before ({periods[-1][0]})",
                            f"{path}.start_period")
        limit = _number(_need(period, "limit", path), f"{path}.limit", maximum=maximum)
        periods.append((start_period, limit))
    return ProfileIn(unit=unit, periods=tuple(periods), start=start, duration_s=duration, min_rate=min_rate,
                     response_url=response_url)


PROFILE_TYPES = ("CHEAP", "FAST", "GREEN", "REGULAR")


@dataclass(frozen=True)
class ChargingPreferences:
    profile_type: str
    departure: datetime | None
    energy_need_kwh: float | None
    discharge_allowed: bool


def parse_preferences(body: Any) -> ChargingPreferences:
    obj = _obj(body, "")
    profile_type = _enum(_need(obj, "profile_type", ""), "profile_type", PROFILE_TYPES)
    departure = None
    if obj.get("departure_time") is not None:
        departure = parse_datetime(obj["departure_time"], "departure_time")
    energy = None
    if obj.get("energy_need") is not None:
        energy = _number(obj["energy_need"], "energy_need", maximum=10_000.0)
    discharge = obj.get("discharge_allowed", False)
    if not isinstance(discharge, bool):
        raise OcpiError(f"discharge_allowed must be true or false, got {discharge!r}", "discharge_allowed")
    return ChargingPreferences(profile_type=profile_type, departure=departure, energy_need_kwh=energy,
                               discharge_allowed=discharge)
