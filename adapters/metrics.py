"""The metric schema written to InfluxDB: measurements ``site``, ``charger``, ``plan``, ``event``.

InfluxQL-friendly (one dashboard serves InfluxDB 1.x, 2.x through DBRP, and 3.x): tags are the
site, charger, protocol and event kind; per-phase values are fields ``*_l1/_l2/_l3``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from influxdb_client import Point, WritePrecision

from balancer.plan import Plan

__all__ = ["SOURCE_CODES", "charger_point", "event_point", "plan_points", "site_point"]

SOURCE_CODES = {"forecast": 0, "fallback_forecast": 1, "fallback_config": 2}


def _phases(point: Point, name: str, values: Sequence[float | None]) -> Point:
    for k, value in enumerate(values[:3]):
        if value is not None:
            point = point.field(f"{name}_l{k + 1}", float(value))
    return point


def site_point(site_id: str, at: datetime, *, capacity_a: Sequence[float], capacity_source: str,
               allocated_a: Sequence[float], measured_a: Sequence[float], grid_online: bool,
               energy_requested_wh: float, energy_delivered_wh: float, chargers_connected: int,
               voltage_v: float = 230.0) -> Point:
    point = Point("site").tag("site", site_id).time(at, WritePrecision.MS)
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
                  soc_pct: float | None, state: str, connected: bool, obeys: bool) -> Point:
    point = (Point("charger").tag("site", site_id).tag("charger", charger_id).tag("protocol", protocol or "none")
             .time(at, WritePrecision.MS).field("limit_a", float(limit_a)).field("state", state)
             .field("connected", int(connected)).field("obeys", int(obeys)))
    point = _phases(point, "measured_a", measured_a)
    for name, value in (("power_w", power_w), ("energy_wh", energy_wh), ("soc_pct", soc_pct)):
        if value is not None:
            point = point.field(name, float(value))
    return point


def plan_points(site_id: str, plan: Plan, capacity_a: Any) -> list[Point]:
    """One point per planned slot (timestamp = slot start): capacity and planned current."""
    capacity = np.asarray(capacity_a, dtype=float)
    planned = np.asarray(plan.limit_a, dtype=float).sum(axis=0)
    points = []
    for k in range(min(len(capacity), planned.shape[0])):
        t = plan.start + timedelta(seconds=k * plan.slot_s)
        points.append(Point("plan").tag("site", site_id).time(t, WritePrecision.MS)
                      .field("capacity_a", float(capacity[k].min())).field("planned_a", float(planned[k])))
    return points


def event_point(site_id: str, at: datetime, *, kind: str, ok: bool, result: str, charger: str = "",
                limit_a: float | None = None) -> Point:
    point = (Point("event").tag("site", site_id).tag("kind", kind).time(at, WritePrecision.MS)
             .field("ok", int(ok)).field("result", result[:200]).field("count", 1))
    if charger:
        point = point.tag("charger", charger)
    if limit_a is not None:
        point = point.field("limit_a", float(limit_a))
    return point
