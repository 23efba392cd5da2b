r"""The metric schema written to InfluxDB: measurements ``site``, ``charger``, ``plan``, ``event``.

InfluxQL-friendly (one dashboard serves InfluxDB 1.x, 2.x through DBRP, and 3.x): tags are the
site, charger, protocol, the charger's ``limit_reason`` code and the event kind; per-phase values
are fields ``*_l1/_l2/_l3``.

Points are written as line protocol by ``Point`` here, escaped as InfluxDB reads it (checked
against InfluxDB 1.6.7): in tag keys and values only comma, equals sign and space are escaped; a
backslash stays literal, tab and CR are carried as they are. influxdb-client's Point wrote tab,
CR and LF as the two characters ``\t``/``\r``/``\n`` (stored literally) and added a space after a
trailing backslash (``CP\`` stored as ``CP ``). What line protocol cannot carry in a tag value, a
line feed and a backslash before an escaped character or at the end, becomes U+FFFD (check-config
refuses such ids, so only other text can get there).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from balancer.model import Site
from balancer.plan import Plan

__all__ = ["EVENT_KINDS", "SOURCE_CODES", "Point", "charger_point", "escape_tag", "event_point", "obedience_point",
           "plan_points", "service_point", "site_point", "wired_phases"]

SOURCE_CODES = {"forecast": 0, "fallback_forecast": 1, "fallback_config": 2}

EVENT_KINDS = {
    "profile_push": "a charging profile result from a charger (ok=0: not accepted)",
    "fallback_on": "the site left the grid operator's forecast for a fallback (result: the source)",
    "fallback_off": "the grid operator's forecast is in force again",
    "compliance_error": "the site cannot keep to the capacity (result: why)",
    "charger_disobeying": "a charger draws more than its limit (result: by how much)",
    "charger_obeying": "a charger follows its limit again",
    "config_reloaded": "the config file was reloaded and applied",
    "config_rejected": "a changed config file was refused; the running config stays (ok=0)",
}
"""Values of the ``kind`` tag of the ``event`` measurement (the dashboard's annotations read them)."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_UNCARRIED = re.compile(r"\\(?=[,= ]|$)|\n")


def escape_tag(text: str) -> str:
    """A tag key or value for line protocol (also a measurement name: commas and spaces escaped)."""
    carried = _UNCARRIED.sub("\ufffd", text)
    return carried.replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")


def _field_value(value: float | int | str | bool) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value}i"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else None  # line protocol has no NaN or infinity
    # One point per line: a line feed in text (a charger's error message) becomes a space.
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ") + '"'


class Point:
    """One line of line protocol: a measurement, tags, fields and a time in milliseconds."""

    __slots__ = ("_at", "_fields", "_measurement", "_tags")

    def __init__(self, measurement: str) -> None:
        self._measurement = measurement
        self._tags: dict[str, str] = {}
        self._fields: dict[str, float | int | str | bool] = {}
        self._at: datetime | None = None

    def tag(self, key: str, value: str) -> Point:
        self._tags[key] = value
        return self

    def tag_value(self, key: str) -> str | None:
        return self._tags.get(key)

    def field(self, key: str, value: float | int | str | bool) -> Point:
        self._fields[key] = value
        return self

    def time(self, at: datetime) -> Point:
        self._at = at
        return self

    def to_line_protocol(self) -> str:
        """The line, or "" when no field has a value line protocol can carry."""
        fields = []
        for key, value in sorted(self._fields.items()):
            text = _field_value(value)
            if text is not None:
                fields.append(f"{escape_tag(key)}={text}")
        if not fields:
            return ""
        tags = "".join(f",{escape_tag(k)}={escape_tag(v)}" for k, v in sorted(self._tags.items()) if k and v)
        line = f"{escape_tag(self._measurement)}{tags} {','.join(fields)}"
        if self._at is not None:
            line += f" {(self._at - _EPOCH) // timedelta(milliseconds=1)}"
        return line


def _phases(point: Point, name: str, values: Sequence[float | None]) -> Point:
    for k, value in enumerate(values[:3]):
        if value is not None:
            point = point.field(f"{name}_l{k + 1}", float(value))
    return point


def site_point(site_id: str, at: datetime, *, capacity_a: Sequence[float], capacity_source: str,
               allocated_a: Sequence[float], measured_a: Sequence[float], grid_online: bool,
               energy_requested_wh: float, energy_delivered_wh: float, chargers_connected: int,
               voltage_v: float = 230.0) -> Point:
    point = Point("site").tag("site", site_id).time(at)
    point = _phases(point, "capacity_a", capacity_a)
    point = _phases(point, "allocated_a", allocated_a)
    point = _phases(point, "measured_a", measured_a)
    return (point.field("capacity_w", float(sum(capacity_a) * voltage_v))
            .field("capacity_source", capacity_source)
            .field("source_code", SOURCE_CODES.get(capacity_source, 2))
            .field("fallback", int(capacity_source != "forecast"))
            .field("grid_online", int(grid_online))
            .field("energy_requested_wh", float(energy_requested_wh))
            .field("energy_delivered_wh", float(energy_delivered_wh))
            .field("chargers_connected", int(chargers_connected)))


def charger_point(site_id: str, charger_id: str, at: datetime, *, protocol: str, limit_a: float,
                  measured_a: Sequence[float], power_w: float | None, energy_wh: float | None,
                  soc_pct: float | None, state: str, connected: bool, obeys: bool,
                  grid_phases: Sequence[int] = (0, 1, 2), limit_reason: str = "") -> Point:
    """A charger's state; per-phase fields are per **grid** phase.

    ``measured_a`` is already on grid phases (the controller maps the charger's phases through its
    ``phase``/``phase_rotation``); ``grid_phases`` are the grid phases the charger is wired to.
    ``limit_a_l1``..``_l3`` and ``measured_a_l1``..``_l3`` are written only on those phases, so a
    single-phase charger on L2 appears on the L2 panels and nowhere else. ``limit_reason`` (DESIGN
    3.6: ``capacity``, ``charger_max``, ...) is a tag, so panels can group and filter by it; an
    empty one is left out.
    """
    point = (Point("charger").tag("site", site_id).tag("charger", charger_id).tag("protocol", protocol or "none")
             .tag("limit_reason", limit_reason)
             .time(at).field("limit_a", float(limit_a)).field("state", state)
             .field("connected", int(connected)).field("obeys", int(obeys)))
    wired = set(grid_phases)
    point = _phases(point, "measured_a", [v if k in wired else None for k, v in enumerate(measured_a[:3])])
    point = _phases(point, "limit_a", [float(limit_a) if k in wired else None for k in range(3)])
    for name, value in (("power_w", power_w), ("energy_wh", energy_wh), ("soc_pct", soc_pct)):
        if value is not None:
            point = point.field(name, float(value))
    return point


def plan_points(site_id: str, plan: Plan, capacity_a: Any,
                grid_phases: Mapping[str, Sequence[int]] | None = None) -> list[Point]:
    """One point per planned slot (timestamp = slot start): capacity and planned current per grid phase.

    ``capacity_a_l1``..``_l3`` and ``planned_a_l1``..``_l3`` (the sum of the limits of the chargers
    loading that grid phase, from ``grid_phases``: charger id -> grid phase indices; a charger
    missing there loads all three). ``capacity_a`` (the lowest phase) and ``planned_a`` (the most
    loaded phase) summarise them.
    """
    capacity = np.asarray(capacity_a, dtype=float)
    if capacity.ndim == 1:
        capacity = np.repeat(capacity[:, None], 3, axis=1)
    limits = np.asarray(plan.limit_a, dtype=float)
    mask = np.ones((len(plan.charger_ids), 3))
    for j, cid in enumerate(plan.charger_ids):
        phases = (grid_phases or {}).get(cid)
        if phases is not None:
            mask[j] = [1.0 if k in phases else 0.0 for k in range(3)]
    planned = limits.T @ mask if limits.size else np.zeros((0, 3))  # (slots, 3)
    points = []
    for k in range(min(len(capacity), planned.shape[0])):
        t = plan.start + timedelta(seconds=k * plan.slot_s)
        point = (Point("plan").tag("site", site_id).time(t)
                 .field("capacity_a", float(capacity[k].min())).field("planned_a", float(planned[k].max())))
        point = _phases(point, "capacity_a", [float(x) for x in capacity[k][:3]])
        points.append(_phases(point, "planned_a", [float(x) for x in planned[k]]))
    return points


def event_point(site_id: str, at: datetime, *, kind: str, ok: bool, result: str, charger: str = "",
                limit_a: float | None = None) -> Point:
    point = (Point("event").tag("site", site_id).tag("kind", kind).time(at)
             .field("ok", int(ok)).field("result", result[:200]).field("count", 1))
    if charger:
        point = point.tag("charger", charger)
    if limit_a is not None:
        point = point.field("limit_a", float(limit_a))
    return point


def obedience_point(site_id: str, at: datetime, *, charger: str, obeys: bool, draw_a: float | None,
                    detail: str) -> Point:
    """``charger_disobeying`` / ``charger_obeying``: a charger stopped or started following its limit."""
    point = event_point(site_id, at, kind="charger_obeying" if obeys else "charger_disobeying", ok=obeys,
                        result=detail or ("follows its limit" if obeys else "draws more than its limit"),
                        charger=charger)
    return point if draw_a is None else point.field("draw_a", float(draw_a))


def service_point(at: datetime, *, outbox_messages: int) -> Point:
    """Service-wide state (no site tag): OSCP messages waiting in the outbox for the capacity provider."""
    return Point("service").time(at).field("outbox_messages", int(outbox_messages))


def wired_phases(site: Site, car_phases: Mapping[str, int | None] | None = None) -> dict[str, tuple[int, ...]]:
    """Charger id -> the grid phase indices it loads (with ``car_phases``: those its car uses)."""
    return {c.id: c.grid_phases((car_phases or {}).get(c.id)) for c in site.chargers}
