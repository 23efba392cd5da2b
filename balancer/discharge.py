"""V2X discharge for peak shaving (DESIGN 3.9): how far each car may discharge now, and the
allocator's discharge stage.

Discharge has one use: when the non-EV load alone (plus reserved loads) exceeds the capacity in
force at the connection, cars on chargers with ``allow_discharge`` that offer V2X carry the
difference, the *deficit*. Nothing else discharges a car: no energy is shuttled from one car to
another, and no discharge happens without a deficit.

Per phase the discharge stage fills the deficit (plus one granularity step, so that rounding down
never leaves it uncovered) by progressive filling over the V2X chargers whose car loads a phase
with a deficit, each in proportion to its discharge bound; where a phase is still short when
another phase of the same cars is covered, those cars go on (the covered phase then only bounded
by its export room). A three-phase car discharges on all
its phases, so on a phase without deficit it may push the site into export: the connection's
room there is the export room (``export_limit_a`` plus the non-EV load the discharge offsets).
Fuses below the connection see the discharge current like any current: the stage fills within
their room, and the chargers that charge share what it leaves (conservative: a fuse carries the
difference of charge and discharge currents, never more than their sum).

Pure and vectorised like the allocator.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from balancer.model import LIMIT_CODES, LimitCode
from balancer.topology import Topology

__all__ = ["DISCHARGE_PROTOCOLS", "discharge_bound_a", "discharge_reasons", "discharge_stage"]

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
IntArray = npt.NDArray[np.int64]
CodeArray = npt.NDArray[np.int8]
_DISCHARGE = LIMIT_CODES.index(LimitCode.DISCHARGE)
Fill = Callable[[Topology, FloatArray, BoolArray, FloatArray, FloatArray, FloatArray, BoolArray], FloatArray]
Admit = Callable[[Topology, FloatArray, FloatArray, IntArray, FloatArray], BoolArray]

DISCHARGE_PROTOCOLS = ("ocpp2.1",)
"""Subprotocols that can carry a discharge setpoint (a negative limit) to a charger."""


def discharge_bound_a(*, need_wh: FloatArray, seconds_left: FloatArray, charge_max_a: FloatArray,
                      discharge_max_a: FloatArray, phases: FloatArray, voltage_v: float, hold_s: float,
                      spare_wh: FloatArray | None = None) -> FloatArray:
    """How far each car may discharge per phase for the next ``hold_s`` [A], all arrays (n,).

    A car may discharge ``x`` for ``hold_s`` only if what it then needs, ``need + x * hold``, still
    fits by its departure at its maximum charge rate (DESIGN 3.9), and never more than the car
    can spare above its minimum state of charge (``spare_wh``, the negated ISO 15118-20
    ``evMinV2XEnergyRequest``; NaN: not limited). Unknown need or departure (NaN) means no
    discharge: the car is treated as wanting its maximum.
    """
    wh_per_as = np.asarray(phases, dtype=np.float64) * voltage_v / 3600.0
    hold = max(hold_s, 1e-9)
    after = np.asarray(seconds_left, dtype=np.float64) - hold
    with np.errstate(invalid="ignore", divide="ignore"):
        room_wh = np.asarray(charge_max_a) * wh_per_as * after - np.asarray(need_wh)
        bound = room_wh / (wh_per_as * hold)
        if spare_wh is not None:
            spare = np.asarray(spare_wh, dtype=np.float64)
            bound = np.where(np.isfinite(spare), np.minimum(bound, spare / (wh_per_as * hold)), bound)
    bound = np.minimum(bound, np.asarray(discharge_max_a, dtype=np.float64))
    return np.asarray(np.where(np.isfinite(bound) & (after > 0), np.maximum(bound, 0.0), 0.0), dtype=np.float64)


def _top_up(topo: Topology, cap: FloatArray, mask: BoolArray, limit: FloatArray, cut: FloatArray, hi: FloatArray,
            granularity: FloatArray, deficit: FloatArray, export: FloatArray, admit: Admit) -> FloatArray:
    """One more granularity step for the cars rounding cut most, on the phases still short: only
    as many as those phases need (a prefix per phase), admitted wherever every fuse still has room
    and the connection's export room allows (so nothing can overfill)."""
    step = granularity * mask
    covered = (limit * mask).sum(axis=1)
    short = deficit - covered
    if not np.any(short > 1e-9):
        return limit
    room = np.maximum(cap - topo.tree_sum(limit * mask), 0.0)
    room[:, 0] = np.maximum(export - covered, 0.0)
    able = (limit + granularity <= hi + 1e-9) & np.any(mask & (short > 1e-9)[:, None], axis=0)
    order = np.argsort(-cut, kind="stable")
    order = order[able[order]]
    steps = np.take(step, order, axis=1)
    before = np.cumsum(steps, axis=1) - steps
    order = order[np.any((before < short[:, None] - 1e-9) & (steps > 0), axis=0)]
    if not len(order):
        return limit
    given = admit(topo, room, step, order, topo.tree_sum(np.take(step, order, axis=1), order))
    return np.where(given, np.round(limit / granularity) * granularity + granularity, limit)


def discharge_stage(topo: Topology, room: FloatArray, mask: BoolArray, deficit_a: FloatArray,
                    export_room_a: FloatArray, bound_a: FloatArray,
                    granularity: FloatArray, fill: Fill, admit: Admit) -> tuple[FloatArray, FloatArray]:
    """Discharge per charger (n,) [A, >= 0] covering ``deficit_a`` (3,), and what stays uncovered (3,).

    room : (3, n_nodes) [A] each node's room (the connection's entry is not used: there the
        deficit, within the export room, is the target); mask : (3, n) grid phases of each car
    export_room_a : (3,) [A] how far the discharge may push each phase of the connection
    bound_a : (n,) [A] each charger's discharge bound (``discharge_bound_a``; 0: none)
    fill, admit : the allocator's progressive filling and prefix admission (passed in, so that this
        module does not import the allocator that calls it)
    """
    n = topo.n_chargers
    deficit = np.maximum(np.nan_to_num(np.asarray(deficit_a, dtype=np.float64)), 0.0)
    none = np.zeros(n)
    if n == 0 or not np.any(deficit > 0):
        return none, deficit
    hi = np.floor(np.maximum(np.nan_to_num(bound_a), 0.0) / granularity + 1e-9) * granularity
    candidate = (hi > 0) & np.any(mask & (deficit > 0)[:, None], axis=0)
    if not candidate.any():
        return none, deficit
    step = float(granularity[candidate].max())
    export = np.maximum(np.nan_to_num(np.asarray(export_room_a, dtype=np.float64)), 0.0)
    cap = np.array(room, dtype=np.float64)
    cap[:, 0] = np.where(deficit > 0, np.minimum(deficit + step, export), export)
    cap = np.maximum(cap, 0.0)
    hi = np.where(candidate, hi, 0.0)
    weight = np.maximum(hi, step)
    x = fill(topo, cap, mask, np.zeros(n), hi, weight, candidate)
    for _ in range(2):
        # A car loading several phases stops when the first is covered; where another is still
        # short, those cars go on, up to the export room of the phases already covered.
        still = (deficit > 0) & ((x * mask).sum(axis=1) < deficit - 1e-9)
        active = candidate & np.any(mask & still[:, None], axis=0)
        if not active.any():
            break
        cap[:, 0] = np.where(still, np.minimum(deficit + step, export), export)
        x = fill(topo, cap, mask, x, hi, weight, active)
    limit = np.floor(x / granularity + 1e-9) * granularity
    for _ in range(2):  # rounding down left a phase short: one more step each, as far as needed
        limit = _top_up(topo, cap, mask, limit, x - limit, hi, granularity, deficit, export, admit)
    covered = (limit * mask).sum(axis=1)
    return limit, np.maximum(deficit - covered, 0.0) * (deficit - covered > 1e-6)


def discharge_reasons(reasons: tuple[CodeArray, IntArray, CodeArray], discharging: BoolArray, mask: BoolArray,
                       deficit_a: FloatArray | None) -> tuple[CodeArray, IntArray, CodeArray]:
    """Discharging chargers: code ``discharge`` at the connection, on the first deficit phase they load."""
    code, node, phase = reasons[0].copy(), reasons[1].copy(), reasons[2].copy()
    deficit = np.zeros(3) if deficit_a is None else np.asarray(deficit_a)
    on = mask & (deficit > 0)[:, None]
    code[discharging] = _DISCHARGE
    node[discharging] = 0
    phase[discharging] = np.argmax(on, axis=0)[discharging].astype(np.int8)
    return code, node, phase
