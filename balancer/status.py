"""The site status: the snapshot the admin API, metrics and grid-operator reports read. Pure.

``site_status`` builds it (one JSON object per charger, with ``limit_reason``); ``ReasonLog``
remembers whose limit reason changed between statuses, for the log line (DESIGN 3.6).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from balancer.allocation_inputs import offline_reserve_a
from balancer.charger_state import is_idle, state_name
from balancer.model import Limit, LimitCode
from balancer.site_meter import MeterView

if TYPE_CHECKING:
    from balancer.control import Controller

__all__ = ["ReasonKey", "ReasonLog", "SiteStatus", "site_status"]

ReasonKey = tuple[LimitCode, str | None, str | None]


@dataclass(frozen=True)
class SiteStatus:
    """A snapshot for the admin API, metrics and the grid-operator reports."""

    site_id: str
    at: datetime
    capacity_a: tuple[float, float, float]
    capacity_w: float
    capacity_source: str
    allocated_a: tuple[float, float, float]
    measured_a: tuple[float, float, float]
    allocation_status: str
    plan_status: str
    chargers: tuple[dict[str, Any], ...]
    idle_allocated_a: tuple[float, float, float] = (0.0, 0.0, 0.0)
    """Per-phase sum of the idle limits [A]: what cars plugging into idle chargers may draw."""
    meter: MeterView | None = None
    """The site meter as control used it (DESIGN 3.8); None without a meter."""
    discharge_a: tuple[float, float, float] = (0.0, 0.0, 0.0)
    """Per-phase sum of what V2X chargers are told to discharge [A] (DESIGN 3.9)."""
    allocation_message: str = ""
    """Why the allocation is infeasible (for the compliance error), else empty."""


class ReasonLog:
    """Whose reason (code, node, phase) changed between the statuses taken."""

    def __init__(self) -> None:
        self._keys: dict[str, ReasonKey] = {}
        self._changes: dict[str, tuple[ReasonKey, Limit]] = {}

    def note(self, limits: dict[str, Limit]) -> None:
        """Remember whose reason changed since the last status."""
        for cid, limit in limits.items():
            key = (limit.code, limit.node, limit.phase)
            old = self._keys.get(cid)
            if old is not None and old != key:
                self._changes[cid] = (self._changes.get(cid, (old, limit))[0], limit)
            self._keys[cid] = key

    def take(self) -> list[tuple[str, ReasonKey, Limit]]:
        """(id, the reason before, the limit now with its reason) for each change since the last call."""
        changed, self._changes = self._changes, {}
        return [(cid, old, limit) for cid, (old, limit) in changed.items()
                if old != (limit.code, limit.node, limit.phase)]


def _triple(values: Any) -> tuple[float, float, float]:
    return float(values[0]), float(values[1]), float(values[2])


def site_status(ctl: Controller, now: datetime, limits: dict[str, Limit]) -> SiteStatus:
    """The status of the site at ``now``; ``limits`` are every charger's limit with its reason."""
    topo = ctl.topology
    cap_now, source = ctl.capacity_now(now)
    allocated = np.zeros(3)
    idle_allocated = np.zeros(3)
    measured = np.zeros(3)
    discharge = np.zeros(3)
    chargers: list[dict[str, Any]] = []
    for i, cid in enumerate(topo.charger_ids):
        state = ctl.states[cid]
        mask = topo.charger_phase_mask[i]
        if state.car_phases == 1:
            mask = np.zeros(3, dtype=bool)
            mask[topo.single_phase_grid[i]] = True
        # What is counted for it: what it may draw, its limit, or for a charger that does not obey (or
        # refuses its limits) its real draw. A session on one never seen keeping a limit is counted at
        # its limit too: its maximum is a precaution the others are held back for (control.decide),
        # not an allowance, and many such sessions starting at once may reserve more than the capacity.
        # One that does not obey is counted as it is reserved: at what it holds, or draws if more.
        held = offline_reserve_a(ctl, i, state, now)
        counted = state.limit_a if state.obeys else max(held, state.draw_a or 0.0, max(state.measured_a))
        allocated += mask * (counted if state.connected else held)
        measured += np.asarray(state.measured_a)
        if state.connected and state.limit_a < 0:
            discharge -= mask * state.limit_a
        idle_limit = state.idle_limit_a if is_idle(state) else 0.0
        idle_allocated += topo.charger_phase_mask[i] * idle_limit
        chargers.append({
            "id": cid,
            "connected": state.connected,
            "protocol": state.protocol,
            "limit_a": round(state.limit_a, 3),
            "limit_reason": limits[cid].to_json(),
            "failsafe_a": round(float(ctl.failsafe_a[i]), 3),
            "idle_limit_a": round(idle_limit, 3),
            "measured_a": [round(x, 2) for x in state.measured_a],
            "state": state_name(state),
            "transaction_id": state.transaction_id,
            "obeys": state.obeys,
            "energy_wh": state.energy_wh,
            "session_delivered_wh": round(state.session_delivered_wh(), 1),
            "remaining_wh": state.remaining_wh(),
            "departure": state.departure.isoformat() if state.departure else None,
            "soc_pct": state.soc_pct,
            "power_w": state.power_w,
            "last_push": state.last_push,
            "external_cap_a": state.external_cap_a(now.timestamp()),
            "car_asleep": bool(ctl.sleep.asleep[i]),
            "asleep_count": int(ctl.sleep.detections[i]),
        })
    return SiteStatus(
        site_id=ctl.site.id, at=now,
        capacity_a=_triple(cap_now),
        capacity_w=float(cap_now.sum() * ctl.site.voltage_v),
        capacity_source=source,
        allocated_a=_triple(allocated),
        measured_a=_triple(measured),
        allocation_status=ctl.last_allocation.status if ctl.last_allocation else "none",
        plan_status=ctl.plan_status,
        chargers=tuple(chargers),
        idle_allocated_a=_triple(idle_allocated),
        meter=ctl.meter_now(now, cap_now),
        discharge_a=_triple(discharge),
        allocation_message=ctl.last_allocation.message if ctl.last_allocation else "",
    )
