"""The planner's input, built from the controller's state. Pure.

The LP is not run here nor in the controller: the controller says when a replan is due, the
service runs the planner off the event loop on a ``PlanRequest`` and hands the outcome back.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from balancer.allocation_inputs import meter_now, reserved_load_a
from balancer.charger_state import wants_current
from balancer.plan import PlanSession
from balancer.timeline import SLOT_S, horizon_slots, slot_floor
from balancer.topology import Topology
from balancer.v2x import plan_deficit, plan_discharge_fields
from forecast.arrivals import BID_SCALE

if TYPE_CHECKING:
    from balancer.control import Controller

__all__ = ["PlanRequest", "non_ev_ahead", "plan_request"]

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class PlanRequest:
    """Everything the planner needs, computed from the controller's state at ``start``."""

    topology: Topology
    capacity_a: FloatArray
    sessions: tuple[PlanSession, ...]
    start: datetime
    budget_s: float
    fine_slots: int
    deficit_a: FloatArray | None = None
    """(n_slots, 3) [A] V2X: how far the non-EV load forecast exceeds the capacity (``balancer.plan_v2x``)."""
    export_room_a: FloatArray | None = None
    expected_a: FloatArray | None = None
    """(n_slots, 3) [A] the expected arrivals' bids for the capacity ahead (``balancer.plan_expected``)."""


def plan_request(ctl: Controller, now: datetime) -> PlanRequest:
    """The planner's input for the sessions present now."""
    start = slot_floor(now)
    horizon = horizon_slots(ctl.settings.plan_horizon_h)
    end = start + timedelta(seconds=horizon * SLOT_S)
    sessions: list[PlanSession] = []
    topo = ctl.topology
    for i, cid in enumerate(topo.charger_ids):
        state = ctl.states[cid]
        if state.transaction_id is None or not wants_current(state) or ctl.sleep.asleep[i]:
            continue  # (an asleep car holds no capacity in anyone's plan)
        charger = ctl.site.chargers[i]
        remaining = state.remaining_wh()
        max_a = charger.max_current_a if state.car_max_a is None else min(charger.max_current_a, state.car_max_a)
        if max_a <= 0:
            continue  # a car that says it takes 0 A holds no capacity in anyone's plan
        phases = charger.phases if state.car_phases is None else min(state.car_phases, charger.phases)
        if remaining is None:
            # Unknown needs: the car wants its maximum until the horizon (DESIGN 4).
            remaining = max_a * phases * ctl.site.voltage_v * (end - now).total_seconds() / 3600.0
        departure = min(state.departure or end, end)
        if departure <= now or remaining <= 0:
            continue
        sessions.append(PlanSession(
            charger_id=cid, arrival=now, departure=departure, energy_wh=remaining,
            max_current_a=max_a, min_current_a=max(charger.min_current_a, state.car_min_a or 0.0),
            phases=phases, weight=float(topo.priority[i]) or 1.0, **plan_discharge_fields(ctl, i, state),
            requested_wh=remaining + state.session_delivered_wh(),  # (its protected share counts what it got)
            charging=state.limit_a > 0, limit_now_a=state.limit_a,  # (goes on, keeps its current)
        ))
    capacity = ctl.capacity_ahead(start, horizon)
    non_ev = None
    if ctl.meter is not None:
        non_ev = non_ev_ahead(ctl, start, horizon, now, export=True)
        capacity = capacity - non_ev
    # Connection capacity per slot less the reserved loads on it; what it lacks goes to V2X. A
    # never-verified session is planned like the others: its maximum is held back only until a
    # reading verifies it (seconds), not for a day (which asked the grid operator for more).
    unverified_free = np.zeros(ctl.topology.n_chargers, dtype=bool)
    capacity = capacity - reserved_load_a(ctl, now, at_max=unverified_free)[None, :]
    deficit, export = plan_deficit(ctl, capacity, non_ev)
    capacity = np.maximum(capacity, 0.0)
    if ctl.settings.arrival_forecast_days > 0 and horizon > 1:
        # Room for the cars expected to arrive (slots ahead; the slot of now is the cars here's).
        expected = ctl.history.expected_load_a(now, start, horizon, voltage_v=ctl.site.voltage_v,
                                               days=ctl.settings.arrival_forecast_days)
        expected = BID_SCALE * expected
    else:
        expected = None
    return PlanRequest(topology=topo, capacity_a=capacity, sessions=tuple(sessions), start=start,
                       budget_s=ctl.settings.planner_budget_s, fine_slots=ctl.settings.plan_fine_slots,
                       deficit_a=deficit, export_room_a=export, expected_a=expected)


def non_ev_ahead(ctl: Controller, start: datetime, n_slots: int, now: datetime, *, export: bool) -> FloatArray:
    """Non-EV load plus margin per slot from ``start`` (n_slots, 3) [A]: the forecast where known
    (``non_ev_forecast``), at least the non-EV load of now in the current slot, else now's.
    ``export`` False counts no PV export (negative non-EV load) in the slots after this one."""
    assert ctl.meter is not None
    cap_now, _ = ctl.capacity_now(now)
    view = ctl.meter_view if ctl.meter_view is not None else meter_now(ctl, now, cap_now)
    assert view is not None
    out = np.repeat(view.non_ev_load_a[None, :], n_slots, axis=0)
    if ctl.non_ev_forecast is not None:
        f_start, values = ctl.non_ev_forecast
        offset = int((start - f_start).total_seconds() // SLOT_S)
        index = offset + np.arange(n_slots)
        valid = (index >= 0) & (index < len(values))
        out[valid] = values[index[valid]]
        if n_slots:
            out[0] = np.maximum(out[0], view.non_ev_load_a)
    if not export:
        out[1:] = np.maximum(out[1:], 0.0)
    return np.asarray(out + ctl.meter.settings.margin_a, dtype=np.float64)
