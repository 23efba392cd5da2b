"""What the controller hands the allocator and the planner for V2X (DESIGN 3.9).

Kept out of ``balancer.control`` (which calls these at one place each): which cars may discharge
now and how far (``balancer.discharge.discharge_bound_a``), the connection's deficit and export
room, and the planner's view of the same per slot.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from balancer.discharge import DISCHARGE_PROTOCOLS, discharge_bound_a

if TYPE_CHECKING:
    from balancer.charger_state import ChargerState
    from balancer.control import Controller

__all__ = ["DISCHARGE_HOLD_S", "DISCHARGE_SETTLE_S", "can_discharge", "discharge_draw_limits", "discharge_inputs",
           "export_room_a", "plan_deficit", "plan_discharge_fields"]

FloatArray = npt.NDArray[np.float64]

DISCHARGE_SETTLE_S = 3.0
"""How long after a change of discharge a meter reading is taken to show it [s] (a car ramps in
about a second, a meter is polled every ``poll_s``)."""
DISCHARGE_HOLD_S = 900.0
"""A discharge setpoint holds until the end of the slot at most (``Controller._schedule``): the
bound assumes it runs a whole slot, so a car whose setpoint is not renewed still reaches its need."""


def can_discharge(controller: Controller, i: int, state: ChargerState) -> bool:
    """A car in a session on a charger with ``allow_discharge``, that offers V2X, with known needs
    and departure, on a subprotocol that can carry a discharge setpoint."""
    charger = controller.site.chargers[i]
    return (charger.allow_discharge and state.car_v2x and state.connected and state.obeys
            and state.transaction_id is not None and state.protocol in DISCHARGE_PROTOCOLS
            and state.departure is not None and state.remaining_wh() is not None)


def discharge_draw_limits(limits: FloatArray, states: Sequence[ChargerState], meter_at: datetime | None) -> FloatArray:
    """The limits to take a meter reading's charger draw from (``site_meter.charger_draw_a``):
    where a discharge changed less than ``DISCHARGE_SETTLE_S`` before the reading, the larger of
    the two discharges. The reading may still show the old one: taking the smaller would hide
    non-EV load (and the next decision would cut the discharge that carried it); the larger errs
    on the safe side until a reading after the change comes."""
    out = np.asarray(limits, dtype=np.float64).copy()
    for i, state in enumerate(states):
        changed = state.limit_changed_at
        if changed is None or min(state.limit_a, state.prev_limit_a) >= 0:
            continue
        if meter_at is None or (meter_at - changed).total_seconds() < DISCHARGE_SETTLE_S:
            out[i] = min(state.limit_a, state.prev_limit_a)
    return out


def export_room_a(controller: Controller) -> FloatArray:
    """(3,) [A] how far discharge may push the connection's net current below zero now: the export
    limit (lowered by an OSCP GENERATION forecast in force), plus the non-EV load the discharge
    first offsets (none known without a meter)."""
    view = controller.meter_view
    non_ev = np.zeros(3) if view is None else view.non_ev_load_a
    limit = np.full(3, controller.site.export_limit_a)
    if controller.export_cap_a is not None:
        limit = np.minimum(limit, controller.export_cap_a)
    return np.asarray(np.maximum(limit + non_ev, 0.0), dtype=np.float64)


def _bounds(controller: Controller, now: datetime, hold_s: float) -> FloatArray:
    topo = controller.topology
    n = topo.n_chargers
    need, left, charge, dis, phases, spare = (np.full(n, np.nan) for _ in range(6))
    for i, cid in enumerate(topo.charger_ids):
        state = controller.states[cid]
        if not can_discharge(controller, i, state):
            continue
        charger = controller.site.chargers[i]
        assert state.departure is not None
        need[i] = state.remaining_wh()
        left[i] = (state.departure - now).total_seconds()
        charge[i] = charger.max_current_a if state.car_max_a is None else min(charger.max_current_a, state.car_max_a)
        limit = charger.discharge_limit_a
        dis[i] = limit if state.car_discharge_max_a is None else min(limit, state.car_discharge_max_a)
        phases[i] = charger.phases if state.car_phases is None else min(state.car_phases, charger.phases)
        spare[i] = np.nan if state.car_spare_wh is None else state.car_spare_wh
    return discharge_bound_a(need_wh=need, seconds_left=left, charge_max_a=charge, discharge_max_a=np.nan_to_num(dis),
                             phases=np.nan_to_num(phases, nan=3.0), voltage_v=controller.site.voltage_v,
                             hold_s=hold_s, spare_wh=spare)


def discharge_inputs(controller: Controller, now: datetime) -> dict[str, Any]:
    """The ``AllocationRequest`` fields for discharge at ``now``: the deficit the controller found
    at the connection (``Controller.deficit_a``), each charger's bound and the export room."""
    deficit = controller.deficit_a
    if not np.any(deficit > 0):
        return {"deficit_a": deficit}
    return {"deficit_a": deficit, "discharge_max_a": _bounds(controller, now, DISCHARGE_HOLD_S),
            "export_room_a": export_room_a(controller)}


def plan_deficit(controller: Controller, capacity_a: FloatArray,
                 non_ev_a: FloatArray | None) -> tuple[FloatArray | None, FloatArray | None]:
    """The planner's deficit and export room per slot (n_slots, 3) [A], or (None, None) when no
    slot has a deficit: ``capacity_a`` is the connection's capacity less the non-EV load forecast
    (``non_ev_a``, margin included; None without a meter) and the reserved loads."""
    deficit = np.maximum(-np.asarray(capacity_a, dtype=np.float64), 0.0)
    if not np.any(deficit > 0):
        return None, None
    non_ev = np.zeros_like(deficit) if non_ev_a is None else non_ev_a
    export = np.maximum(controller.site.export_limit_a + non_ev, 0.0)
    return deficit, np.asarray(export, dtype=np.float64)


def plan_discharge_fields(controller: Controller, i: int, state: ChargerState) -> dict[str, Any]:
    """``PlanSession`` fields of a V2X car: its discharge limit and how much it can spare."""
    if not can_discharge(controller, i, state):
        return {}
    limit = controller.site.chargers[i].discharge_limit_a
    dis = limit if state.car_discharge_max_a is None else min(limit, state.car_discharge_max_a)
    return {"discharge_max_a": dis, "discharge_spare_wh": state.car_spare_wh}
