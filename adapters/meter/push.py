"""``POST /api/v1/sites/{id}/meter``: a site meter reading pushed over HTTP (DESIGN 3.8).

Body ``{"current_a": [L1, L2, L3], "timestamp": "..."}``: net current per grid phase [A], import
positive, ``null`` for a phase the meter does not measure; an RFC 3339 timestamp with an offset,
at most ``stale_after_s`` old and at most ``FUTURE_S`` ahead. Every refusal names its field.
In a cluster the reading is checked here and handed to the site's owner (``forward``).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any, Protocol

from aiohttp import web

from adapters.http_body import BadBody, error_response, loads, read_body

__all__ = ["FUTURE_S", "Forward", "MeterPushRefused", "MeterSink", "meter_push_handler", "parse_meter_push"]

log = logging.getLogger("balancer.meter")

FUTURE_S = 60.0
MAX_ABS_A = 1e5
_KEYS = ("current_a", "timestamp")

Currents = tuple[float | None, float | None, float | None]
Forward = Callable[[str, Currents, datetime], Awaitable[tuple[int, dict[str, Any]] | None]]
"""Cluster mode: hand a checked reading to the site's owner; (HTTP status, body) of its answer, or
None when this instance controls the site (it takes the reading itself)."""


class MeterPushRefused(Exception):
    """A pushed reading refused after parsing: ``status``, message and the field."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.field = status, message, field


class MeterSink(Protocol):
    """What the handler needs: the staleness window of a site's HTTP meter, and a place for readings."""

    def push_settings(self, site_id: str) -> float:
        """``stale_after_s`` of the site's HTTP meter; raises ``MeterPushRefused`` (404/409)."""
        ...

    def push_reading(self, site_id: str, current_a: Currents, at: datetime) -> None:
        """Hand the reading on; raises ``MeterPushRefused`` (400) when it is implausible."""
        ...


def parse_meter_push(data: Any, now: datetime, stale_after_s: float) -> tuple[Currents, datetime]:
    """Validate a pushed body; ``MeterPushRefused(400)`` naming the field otherwise."""
    if not isinstance(data, dict):
        raise MeterPushRefused(400, "body must be a JSON object with current_a and timestamp")
    for key in data:
        if key not in _KEYS:
            raise MeterPushRefused(400, f"unknown field {key!r} (expected current_a, timestamp)", str(key))
    for key in _KEYS:
        if key not in data:
            raise MeterPushRefused(400, f"{key} is required", key)
    raw = data["current_a"]
    if not isinstance(raw, list) or len(raw) != 3:
        raise MeterPushRefused(400, f"current_a must be a list of 3 currents [L1, L2, L3], got {raw!r}",
                               "current_a")
    currents: list[float | None] = []
    for k, value in enumerate(raw):
        if value is None:
            currents.append(None)
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not abs(value) < MAX_ABS_A:
            raise MeterPushRefused(400, f"current_a[{k}] must be a number of amperes (or null), got {value!r}",
                                   f"current_a[{k}]")
        currents.append(float(value))
    if all(c is None for c in currents):
        raise MeterPushRefused(400, "current_a needs at least one phase measured", "current_a")
    stamp = data["timestamp"]
    if not isinstance(stamp, str):
        raise MeterPushRefused(400, f"timestamp must be an RFC 3339 date-time string, got {stamp!r}", "timestamp")
    try:
        at = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        raise MeterPushRefused(400, f"timestamp is not an RFC 3339 date-time: {stamp!r}", "timestamp") from None
    if at.tzinfo is None:
        raise MeterPushRefused(400, "timestamp needs a UTC offset (e.g. Z)", "timestamp")
    if at < now - timedelta(seconds=stale_after_s):
        raise MeterPushRefused(400, f"timestamp {stamp} is stale: older than stale_after_s={stale_after_s:g} s",
                               "timestamp")
    if at > now + timedelta(seconds=FUTURE_S):
        raise MeterPushRefused(400, f"timestamp {stamp} is more than {FUTURE_S:g} s in the future", "timestamp")
    return (currents[0], currents[1], currents[2]), at


def meter_push_handler(sink: MeterSink, now: Callable[[], datetime],
                       max_body_bytes: int | Callable[[], int], forward: Forward | None = None,
                       ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """The aiohttp handler (the admin API's bearer guard goes around it); ``max_body_bytes`` may be
    read from the running config at each request."""

    async def handler(request: web.Request) -> web.StreamResponse:
        site_id = request.match_info["site_id"]
        try:
            stale_after_s = sink.push_settings(site_id)
            limit = max_body_bytes() if callable(max_body_bytes) else max_body_bytes
            data = loads(await read_body(request, limit))
            current_a, at = parse_meter_push(data, now(), stale_after_s)
            answer = None if forward is None else await forward(site_id, current_a, at)
            if answer is not None:
                return web.json_response(answer[1], status=answer[0])
            sink.push_reading(site_id, current_a, at)
        except BadBody as exc:
            log.warning("site %s: meter push refused: %s", site_id, exc.message)
            return error_response(exc.status, exc.message, exc.field)
        except MeterPushRefused as exc:
            log.warning("site %s: meter push refused: %s", site_id, exc.message)
            return error_response(exc.status, exc.message, exc.field)
        return web.json_response({"site": site_id, "accepted": True, "at": at.isoformat()}, status=202)

    return handler
