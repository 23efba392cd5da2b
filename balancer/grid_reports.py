"""What the site tells its grid operator, decided without I/O: asking for more capacity
(AdjustGroupCapacityForecast) and reporting that it cannot comply (GroupCapacityComplianceError).

The service only sends what these functions return, so both rules are unit-tested here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from balancer.allocate import FloatArray

ADJUST_MIN_SHORTFALL_WH = 1000.0
"""A shortfall below this is noise of the plan, not worth asking the grid operator about."""
ADJUST_EVERY = timedelta(hours=1)
"""At most one AdjustGroupCapacityForecast per site and hour."""
COMPLIANCE_TOLERANCE_A = 1.0
"""Measured draw above capacity by more than this (meter noise, rounding) is a compliance error."""


def _rfc3339(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def adjust_blocks(*, requested_wh: float, planned_wh: float, capacity_a: FloatArray, planned_load_a: FloatArray,
                  start: datetime, slot: timedelta, grid_limit_a: float,
                  last_sent: datetime | None, now: datetime) -> list[dict[str, Any]]:
    """The forecast blocks to ask for, or none.

    Only cars with known needs count (``requested_wh``, ``planned_wh``: unknown needs are planned
    as "as much as possible"). For the slots where the plan fills the capacity (``planned_load_a``
    per slot against the lowest phase of ``capacity_a`` (slots, 3)), ask for it scaled up by the
    shortfall's share of what is planned, at most the connection limit; at most once an hour.
    """
    shortfall = requested_wh - planned_wh
    if shortfall < ADJUST_MIN_SHORTFALL_WH or planned_wh <= 0:
        return []
    if last_sent is not None and now - last_sent < ADJUST_EVERY:
        return []
    cap = capacity_a.min(axis=1)
    factor = 1.0 + shortfall / planned_wh
    blocks = []
    for k in np.flatnonzero(planned_load_a >= 0.99 * cap[: len(planned_load_a)]):
        begin = start + slot * int(k)
        want = min(grid_limit_a, float(cap[k]) * factor)
        blocks.append({"capacity": round(want, 1), "phase": "ALL", "unit": "A",
                       "start_time": _rfc3339(begin), "end_time": _rfc3339(begin + slot)})
    return blocks


def known_needs_wh(requested: Iterable[tuple[str, float]], planned: Mapping[str, float],
                   known: set[str]) -> tuple[float, float]:
    """(requested, planned) energy of the sessions whose needs are known [Wh]."""
    return (sum(wh for cid, wh in requested if cid in known), sum(planned.get(cid, 0.0) for cid in known))


def compliance_problem(*, measured_a: Sequence[float], capacity_a: Sequence[float], allocation_status: str,
                       slot: datetime, last_reported_slot: datetime | None, allocation_message: str = "") -> str | None:
    """Why the site cannot comply in this slot, or None (also None when this slot was reported already).

    ``allocation_message``: the allocator's words for an infeasible allocation (a deficit that
    V2X discharge cannot carry says so), used instead of the generic sentence."""
    over = max(m - c for m, c in zip(measured_a, capacity_a, strict=True))
    infeasible = allocation_status == "infeasible"
    if not (infeasible or over > COMPLIANCE_TOLERANCE_A) or last_reported_slot == slot:
        return None
    if infeasible:
        return allocation_message or "minimum currents of cars that cannot be paused exceed the capacity"
    return f"measured draw exceeds capacity by {over:.1f} A"
