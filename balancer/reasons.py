"""Limits that carry their reason (DESIGN 3.6): the allocator's reason arrays as ``Limit`` values.

The allocator (``balancer.allocate``) finds, vectorised, a code and the binding node and phase for
every charger; here one charger's entry becomes a ``Limit`` with names and a sentence for people.
The controller adds the reasons only it knows (``charger_limits``).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from balancer.allocate import Allocation, AllocationRequest, allocate
from balancer.model import LIMIT_CODES, PHASES, Limit, LimitCode
from balancer.plan import Plan, PlanSession
from balancer.timeline import SLOT_S
from balancer.topology import Topology, phase_mask

if TYPE_CHECKING:
    from balancer.control import Controller

__all__ = ["allocation_limit", "charger_limits", "node_name", "reason_text", "session_limits"]

FloatArray = npt.NDArray[np.float64]


def node_name(topology: Topology, node: int) -> str | None:
    """The id of node ``node`` as the API names it: the site id for the connection, None for -1."""
    if node < 0:
        return None
    return topology.node_ids[node] or topology.site.id


def allocation_limit(topology: Topology, allocation: Allocation, i: int, *, capacity_a: float | None = None,
                     min_a: float | None = None) -> Limit:
    """Charger ``i``'s limit in ``allocation`` with its reason; ``capacity_a`` (the binding node's
    capacity on the binding phase) and ``min_a`` (the minimum it needed) only refine the words."""
    return _limit(topology, LIMIT_CODES[int(allocation.reason[i])], int(allocation.reason_node[i]),
                  int(allocation.reason_phase[i]), float(allocation.limit_a[i]), float(topology.max_current_a[i]),
                  capacity_a=capacity_a, min_a=min_a)


def _limit(topology: Topology, code: LimitCode, k: int, p: int, value: float, charger_max_a: float, *,
           capacity_a: float | None = None, min_a: float | None = None) -> Limit:
    node = node_name(topology, k)
    phase = PHASES[p] if p >= 0 else None
    detail = reason_text(code, node=node, phase=phase, value_a=value, charger_max_a=charger_max_a,
                         capacity_a=capacity_a, min_a=min_a, connection=k == 0)
    return Limit(value, code, node, phase, detail)


def reason_text(code: LimitCode, *, node: str | None = None, phase: str | None = None, value_a: float = 0.0,
                charger_max_a: float | None = None, capacity_a: float | None = None, min_a: float | None = None,
                connection: bool = False) -> str:
    """A short sentence saying why a limit has its value (``limit_reason.detail``)."""
    where = f"{'the connection' if connection else node} on {phase}" if node else "a node"
    of = f" ({capacity_a:.1f} A)" if capacity_a is not None else ""
    if code is LimitCode.CAPACITY:
        return f"capacity of {where}{of} used up: {value_a:g} A is its share"
    if code is LimitCode.CHARGER_MAX:
        return f"at the charger's maximum{f' of {charger_max_a:g} A' if charger_max_a is not None else ''}"
    if code is LimitCode.CAR_MAX:
        if value_a <= 0:
            return "paused: the car's (or cable's) maximum is below the charger's minimum current"
        return f"at the car's (or cable's) maximum of {value_a:g} A"
    if code is LimitCode.PLAN:
        return f"paused: the plan holds it back this slot and the room at {where} went to planned cars"
    if code is LimitCode.PRIORITY:
        return f"paused: chargers of higher priority take the room at {where}"
    if code is LimitCode.PAUSED_MIN_NOT_ADMITTED:
        need = f" {min_a:g} A" if min_a is not None else ""
        return f"paused: its minimum{need} does not fit at {where}{of}; turns rotate among equals"
    if code is LimitCode.NOT_DRAWING:
        return "the car draws less than offered"
    if code is LimitCode.RESERVED_DISOBEYING:
        return "does not follow its profiles: what it really draws is reserved"
    if code is LimitCode.FAILSAFE:
        return "offline or never connected: holds its failsafe, reserved until it reports"
    if code is LimitCode.EXTERNAL_CAP:
        return f"capped at {value_a:g} A by another party"
    if code is LimitCode.CAR_ASLEEP:
        return "paused: the car did not draw after its limit was raised (asleep): its capacity goes to others"
    if code is LimitCode.DISCHARGE:
        return (f"discharging {-value_a:g} A: the non-EV load exceeds the capacity of {where}, "
                "the car carries the peak")
    return code.value


def charger_limits(controller: Controller, now: datetime) -> dict[str, Limit]:
    """Every charger's limit with its reason: the allocator's, and what only the controller knows
    (offline: ``failsafe``; not following profiles: ``reserved_disobeying``; connected without a
    car, or a car taking less than offered: ``not_drawing``)."""
    topo = controller.topology
    alloc = controller.last_allocation
    aligned = alloc is not None and controller.allocated_ids is topo.charger_ids
    if alloc is not None and aligned:  # Python lists: reading numpy scalars one by one is slow
        codes, nodes, phases = alloc.reason.tolist(), alloc.reason_node.tolist(), alloc.reason_phase.tolist()
        values, maxima, minima = alloc.limit_a.tolist(), topo.max_current_a.tolist(), topo.min_current_a.tolist()
    out: dict[str, Limit] = {}
    for i, cid in enumerate(topo.charger_ids):
        state = controller.states[cid]
        limit: Limit
        if not state.connected:
            reserve = controller.offline_reserve_a(i, now)
            limit = Limit(reserve, LimitCode.FAILSAFE, detail=(
                f"offline or never connected: {reserve:g} A reserved until it reports"))
        elif not state.obeys:
            draw = max(state.draw_a or 0.0, max(state.measured_a))
            limit = Limit(state.limit_a, LimitCode.RESERVED_DISOBEYING, detail=(
                f"does not follow its profiles: what it draws ({draw:.1f} A) is reserved"))
        elif state.transaction_id is None:
            limit = Limit(state.idle_limit_a, LimitCode.NOT_DRAWING, detail=(
                f"no car: holds its idle limit of {state.idle_limit_a:g} A, what charging cars leave "
                f"(at most its failsafe of {float(controller.failsafe_a[i]):g} A)"))
        elif alloc is None or not aligned:
            limit = Limit(state.limit_a, LimitCode.FAILSAFE,
                          detail="not decided yet: holds what it was last told")
        else:
            limit = _limit(topo, LIMIT_CODES[codes[i]], nodes[i], phases[i], values[i], maxima[i], min_a=minima[i])
            if nodes[i] == 0 and phases[i] >= 0 and limit.code in _ROOM_CODES:
                limit = _meter_limit(controller, limit, phases[i])
            if limit.code is LimitCode.NOT_DRAWING:
                remaining = state.remaining_wh()
                detail = ("the car needs no more energy: held at its minimum" if remaining is not None
                          and remaining <= 0 else f"the car draws {max(state.measured_a):.1f} A, less than "
                          f"offered: it gets that plus {controller.site.headroom_a:g} A headroom")
                limit = Limit(limit.value_a, limit.code, limit.node, limit.phase, detail)
            elif limit.code is LimitCode.CAR_ASLEEP:
                watch = controller.sleep
                limit = Limit(limit.value_a, limit.code, detail=(
                    f"paused: the car did not draw within {watch.after_s:g} s after its limit was raised "
                    f"(asleep, {int(watch.detections[i])} time(s) this session): its capacity goes to others "
                    f"until it draws; offered its minimum again every {watch.retry_s:g} s"))
        out[cid] = limit
    return out


_ROOM_CODES = (LimitCode.CAPACITY, LimitCode.PAUSED_MIN_NOT_ADMITTED)
"""Codes that say the connection's room bound a charger: the site meter may be why."""


def _meter_limit(controller: Controller, limit: Limit, p: int) -> Limit:
    """``limit`` with code ``meter`` when the non-EV load the meter measured (or the fallback assumed
    while it is stale) cut the connection's share on the binding phase (DESIGN 3.6, 3.8)."""
    view = controller.meter_view
    if view is None or view.cut_a[p] <= 0 or controller.meter is None:
        return limit
    non_ev = float(view.non_ev_load_a[p])
    if not view.fresh:
        why = f"the site meter is stale: a base load of {non_ev:g} A is assumed on {PHASES[p]}"
    else:
        why = f"the site meter measures {non_ev:g} A of non-EV load on {PHASES[p]}"
    deficit = float(controller.deficit_a[p])
    if deficit > 0:
        why += f", {deficit:.1f} A more than the capacity in force allows: the site cannot comply"
    return Limit(limit.value_a, LimitCode.METER, limit.node, limit.phase, f"{why}; {limit.value_a:g} A is its share")


def session_limits(topology: Topology, capacity_a: FloatArray, plan: Plan | None, sessions: Sequence[PlanSession],
                   start: datetime, slot_s: int = SLOT_S) -> dict[str, Limit]:
    """What the real-time allocator would hand each planned session in its first slot, and why
    (``balancer plan``'s reason column): the cars present in that slot, the connection's capacity
    of the slot (``capacity_a`` (n_slots, 3) [A]) and the plan's targets, as the controller asks.
    A charger with several sessions is described by its first."""
    out: dict[str, Limit] = {}
    n_slots = len(capacity_a)
    if topology.n_chargers == 0 or n_slots == 0:
        return out
    first = {s.charger_id: min(n_slots - 1, max(0, int((s.arrival - start).total_seconds() // slot_s)))
             for s in sorted(sessions, key=lambda s: s.arrival, reverse=True)}
    plan_row = {cid: j for j, cid in enumerate(plan.charger_ids)} if plan is not None else {}
    for k in sorted(set(first.values())):
        at = start + timedelta(seconds=k * slot_s)
        here = [s for s in sessions if s.arrival <= at + timedelta(seconds=slot_s - 1) and s.departure > at]
        max_a = np.zeros(topology.n_chargers)
        car_phases = np.full(topology.n_chargers, 3, dtype=np.int64)
        target = np.full(topology.n_chargers, np.nan)
        for s in here:
            i = topology.index(s.charger_id)
            charger_max = float(topology.max_current_a[i])
            max_a[i] = charger_max if s.max_current_a is None else min(charger_max, s.max_current_a)
            car_phases[i] = s.phases or 3
            j = plan_row.get(s.charger_id)
            if plan is not None and j is not None and k < plan.limit_a.shape[1]:
                target[i] = plan.limit_a[j, k]
        capacity = np.repeat(topology.node_limit_a[:, None], 3, axis=1).astype(np.float64)
        capacity[0] = np.minimum(capacity[0], capacity_a[k])
        allocation = allocate(AllocationRequest(
            topology=topology, capacity_a=capacity, phase_mask=phase_mask(topology, car_phases),
            min_a=topology.min_current_a, max_a=max_a, target_a=target, can_pause=topology.can_pause | (max_a <= 0),
            now_s=at.timestamp(), rotation_period_s=topology.site.rotation_period_s))
        for cid, slot in first.items():
            if slot == k:
                out[cid] = allocation_limit(topology, allocation, topology.index(cid),
                                            min_a=float(topology.min_current_a[topology.index(cid)]))
    return out
