"""The real-time allocator: split the capacity of the moment across chargers, in numpy.

Four vectorised stages, each bounded:

1. **Admission of minimum currents.** Cars stop below about 6 A, so a charger gets 0 or at least
   its minimum. Candidates are ordered (cannot-pause first, then priority, then chargers with a
   planned target, then urgency, then a tie order that rotates every ``rotation_period_s``) and
   admitted in a few passes: in each pass, candidates that cannot fit even alone are dropped,
   then a prefix sum of minimums along every node of the fuse tree admits every candidate whose
   prefix still fits at all its nodes and phases. The prefix counts rejected candidates too, so
   the admitted set always fits; later passes retry the rejected against what is left. The
   prefix sums (a segmented cumsum over (node, candidate) entries sorted by node) are only
   taken at *binding* nodes, those whose pending candidates do not all fit at once: elsewhere
   no prefix can exceed the room. Usually few nodes bind, often only the connection.
2. **Water-filling** (weighted max-min fair on the current above the minimum): all admitted
   chargers rise at a rate proportional to their weight; a node that fills freezes the chargers
   below it on that phase, a charger that reaches its bound stops.
3. **Rounding down** to each charger's granularity (0.1 A, or 1 A for integer-amp chargers).
4. **Handing out what rounding left**: one more step for chargers that rounding cut, in the
   admission order, admitted like minimums wherever every node above still has room for it.

Stages 1 and 2 run twice. First for the planner's choices (chargers with a target of at least
their minimum, and chargers that cannot pause), filled up to their target: the plan decided who
charges now, and letting the cars it holds back take their minimums first would undo it (on the
depot scenario of ``bench/quality.py`` that cost 13 points of delivered energy). Then for
everyone else on what is left, and all admitted chargers rise to their maximum
(work-conserving: capacity the cars can use now is handed out). Without a plan the first round
is empty (or holds only chargers that cannot pause) and costs nothing.

Tree sums and path minima go through ``Topology.tree_sum`` / ``path_min`` / ``path_any`` (bincounts
and gathers over the charger's few ancestors), on phase-major (3, n) arrays so that reductions
over the phases run along contiguous rows. A final check recomputes every node load with the
sparse ``ancestors`` product, independent of those helpers; should it ever exceed (it cannot by
construction), the chargers below the overloaded node are paused rather than risk a fuse.

**Reasons** (DESIGN 3.6), from the final limits, vectorised: a charger at its bound carries the
code of what set that bound (``max_code``: charger or car maximum, or what the caller says); any
other charger is bound by the tightest node and phase above it, the one with the least room left
(found once per node over the tree's few levels, then gathered per charger), with code
``capacity``, or when paused ``plan`` (the plan held it back), ``priority`` (a charger of higher
priority runs below that node) or ``paused_min_not_admitted``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from balancer.allocate_order import rotate_ties, stable_order
from balancer.allocate_reasons import CAR_MAX_CODE, CHARGER_MAX_CODE, code_number, limit_reasons
from balancer.discharge import discharge_reasons, discharge_stage
from balancer.model import LIMIT_CODES, LimitCode
from balancer.rounding import floor_to
from balancer.topology import Topology

__all__ = ["Allocation", "AllocationRequest", "allocate", "code_number", "node_load_a"]

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
CodeArray = npt.NDArray[np.int8]
IntArray = npt.NDArray[np.int64]


EPS_A = 1e-9
MAX_ROUNDS = 200
ADMISSION_PASSES = 16
BINDING_MARGIN_A = 1e-6


@dataclass(frozen=True)
class AllocationRequest:
    """The allocator's input for one site at one instant.

    capacity_a : (n_nodes, 3) [A] per-phase capacity available now at each node; node 0 is the
        connection (already the lower of forecast and grid limit, less reserved loads)
    phase_mask : (n, 3) bool, grid phases each charger's car loads
    min_a, max_a : (n,) [A]; ``max_a`` 0 means the charger wants nothing
    weight : (n,) > 0, share when capacity is short (default: the charger's priority, at least 1)
    target_a : (n,) [A] the planner's target for this slot, NaN for none
    urgency : (n,) larger is more urgent (e.g. minus the laxity in seconds)
    can_pause : (n,) bool, False for chargers that refuse 0 A: their minimum is reserved first
    now_s, rotation_period_s : [s] time, and how often the tie order among equals rotates
    max_code : (n,) int8, ``code_number`` of what set ``max_a`` (the reason of a charger held at
        it); default ``charger_max`` where ``max_a`` is at least the charger's own maximum, else ``car_max``
    deficit_a : (3,) [A] how far the connection is over its capacity with no charger drawing (non-EV
        and reserved loads above the capacity in force; ``capacity_a[0]`` is then 0 there)
    discharge_max_a : (n,) [A] how far each charger may discharge its car now (V2X; 0: not at all)
    export_room_a : (3,) [A] how far discharge may push each phase of the connection below zero
        net current (default 0): see ``balancer.discharge``
    """

    topology: Topology
    capacity_a: FloatArray
    phase_mask: BoolArray
    min_a: FloatArray
    max_a: FloatArray
    weight: FloatArray | None = None
    target_a: FloatArray | None = None
    urgency: FloatArray | None = None
    can_pause: BoolArray | None = None
    now_s: float = 0.0
    rotation_period_s: float = 900.0
    max_code: CodeArray | None = None
    deficit_a: FloatArray | None = None
    discharge_max_a: FloatArray | None = None
    export_room_a: FloatArray | None = None


@dataclass(frozen=True)
class Allocation:
    """limit_a : (n,) [A] per phase, 0 or within [min, max], on the charger's granularity.
    paused : (n,) bool, wanted current but got none for lack of capacity.
    status : "ok" (everyone at max), "short" (not everyone at max) or "infeasible" (chargers that
        cannot pause do not fit even at their minimum; they are paused all the same, because a
        fuse comes first, and the caller reports the non-compliance; or a deficit at the
        connection that discharge cannot cover, ``message`` says which).
    reason : (n,) int8, why each limit has its value: ``LIMIT_CODES[reason[i]]``
    reason_node : (n,) node index that bound the charger (``capacity`` and the paused codes), else -1
    reason_phase : (n,) int8, grid phase 0..2 at that node, else -1
    """

    limit_a: FloatArray
    paused: BoolArray
    status: str
    message: str = ""
    reason: CodeArray = field(default_factory=lambda: np.zeros(0, dtype=np.int8))
    reason_node: IntArray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    reason_phase: CodeArray = field(default_factory=lambda: np.zeros(0, dtype=np.int8))

    def code(self, i: int) -> LimitCode:
        """The reason code of charger ``i``."""
        return LIMIT_CODES[int(self.reason[i])]


def node_load_a(topology: Topology, limit_a: FloatArray, phase_mask: BoolArray) -> FloatArray:
    """Per-node, per-phase load of the given limits: shape (n_nodes, 3) [A]."""
    if topology.n_chargers == 0:
        return np.zeros((topology.n_nodes, 3))
    return np.asarray(topology.ancestors @ (limit_a[:, None] * phase_mask), dtype=np.float64)


def _admit(topo: Topology, capacity: FloatArray, need: FloatArray, order: npt.NDArray[np.int64],
           demand: FloatArray) -> BoolArray:
    """Admit candidates (in ``order``) at their minimum while every node and phase still fits.

    capacity : (3, n_nodes) [A]; need : (3, n) [A] each charger's minimum on each grid phase
    demand : (3, n_nodes) [A] the candidates' minimums summed over the tree (in any order)
    """
    node = topo.charger_node
    admitted = np.zeros(topo.n_chargers, dtype=bool)
    room = capacity + EPS_A
    largest = need.max(axis=1, keepdims=True)  # (3, 1) [A] the largest minimum on each phase
    pending = order  # candidates still waiting, in admission order
    for _ in range(ADMISSION_PASSES):
        if len(pending) == 0:
            break
        # Candidates that do not fit even alone on top of what is admitted are out for good, so
        # they no longer block the prefix sums of the others.
        # (np.take along axis 1, not fancy indexing: several times faster, and its result is
        # C-ordered, which keeps the reductions over the phase axis fast.)
        need_p = np.take(need, pending, axis=1)
        room_above = topo.path_min(room)
        if np.any(room_above < largest):  # else every candidate fits alone
            fits = ~np.any(need_p > np.take(room_above, node[pending], axis=1), axis=0)
            if not fits.all():
                pending, need_p = pending[fits], np.compress(fits, need_p, axis=1)
                if len(pending) == 0:
                    break
                demand = topo.tree_sum(need_p, pending)
        # Only a node that cannot take all its pending candidates at once can turn one away: the
        # prefix sums run over the entries (node, candidate) of those nodes only. The margin, far
        # above rounding, makes the order the demand was summed in irrelevant.
        binding = np.any(demand > room - BINDING_MARGIN_A, axis=0)
        if not binding.any():
            admitted[pending] = True
            break
        over = _over_prefix(topo, room, need_p, pending, binding)
        if over.all():
            break
        admitted[pending[~over]] = True
        # What the newly admitted take: the whole pending demand less that of the turned away.
        still = topo.tree_sum(np.compress(over, need_p, axis=1), pending[over])
        room -= demand - still
        pending, demand = pending[over], still
    return admitted


def _over_prefix(topo: Topology, room: FloatArray, need_p: FloatArray, pending: npt.NDArray[np.int64],
                 binding: BoolArray) -> BoolArray:
    """Which pending candidates' prefix of minimums (in admission order) exceeds the room at a
    binding node: per tree level, a segmented cumsum over the entries (binding node, candidate)
    sorted by node.

    room : (3, n_nodes) [A]; need_p : (3, len(pending)) [A]; binding : (n_nodes,) bool
    """
    over = np.zeros(len(pending), dtype=bool)
    binding_or_not = np.append(binding, False)  # charger_path is n_nodes below a charger's node
    binding_at_depth = np.bincount(topo.node_depth[binding])
    for depth in np.flatnonzero(binding_at_depth):
        if depth == 0:  # the connection: one group of all the candidates, already in order
            over |= np.any(np.cumsum(need_p, axis=1) > room[:, :1], axis=0)
            continue
        entry_node = topo.charger_path[depth][pending]
        who = np.flatnonzero(binding_or_not[entry_node])
        if binding_at_depth[depth] > 1:
            # By node, keeping admission order within a node (``pending`` is in that order).
            # 16-bit node numbers make numpy's stable sort a radix sort, ten times faster.
            key_type = np.int16 if topo.n_nodes < 2**15 else np.int64
            who = who[np.argsort(entry_node[who].astype(key_type), kind="stable")]
        nodes = entry_node[who]
        load = np.take(need_p, who, axis=1)
        cum = np.cumsum(load, axis=1)
        group_start = np.flatnonzero(np.diff(nodes, prepend=-1))
        group_size = np.diff(np.append(group_start, len(nodes)))
        cum -= np.repeat(cum[:, group_start] - load[:, group_start], group_size, axis=1)
        over[who[np.any(cum > np.take(room, nodes, axis=1), axis=0)]] = True
    return over


def _fill(topo: Topology, capacity: FloatArray, mask: BoolArray, x: FloatArray, hi: FloatArray,
          weight: FloatArray, active: BoolArray) -> FloatArray:
    """Raise ``x`` towards ``hi`` at rates ``weight`` until nodes fill (progressive filling).

    capacity : (3, n_nodes) [A]; mask : (3, n) grid phases each charger loads
    Each round every active charger rises to the nearest bottleneck among its own nodes (not the
    site-wide nearest one): a node's step assumes all chargers below it keep rising, and each
    rises at most that step, so no node can overfill, and the fill ends in about tree-depth rounds.
    """
    node = topo.charger_node
    active = active & (x < hi - EPS_A)
    if not active.any():
        return x
    load = topo.tree_sum(x * mask)
    for _ in range(MAX_ROUNDS):
        if not active.any():
            break
        rate = topo.tree_sum((weight * active) * mask)
        residual = np.maximum(capacity - load, 0.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            step_node = np.where(rate > EPS_A, residual / rate, np.inf)
        step = np.where(mask, np.take(topo.path_min(step_node), node, axis=1), np.inf).min(axis=0)
        step = np.where(active, np.minimum(step, (hi - x) / weight), 0.0)
        x = np.minimum(x + weight * step, np.where(active, hi, x))
        load = topo.tree_sum(x * mask)
        full = (capacity - load <= 1e-7) & (rate > EPS_A)
        blocked = np.any(np.take(topo.path_any(full), node, axis=1) & mask, axis=0)
        active &= ~blocked & (x < hi - EPS_A)
    return x


def _hand_out_rounding(topo: Topology, capacity: FloatArray, mask: BoolArray, limit: FloatArray,
                       order: npt.NDArray[np.int64], cut: FloatArray, hi: FloatArray,
                       granularity: FloatArray) -> FloatArray:
    """Stage 4: what rounding down left unused goes back, one step per charger that rounding cut,
    in the admission order (priority, plan, urgency, rotating ties), wherever every node above
    still has room for it.

    Rounding 1 A chargers down leaves up to 1 A each unused (30 integer-amp chargers: up to 30 A
    of a 160 A site). The steps are admitted like minimums (``_admit``), so nothing can overfill.
    capacity : (3, n_nodes) [A]; order : admission order; cut : (n,) [A] what rounding took
    """
    candidate = (limit > 0) & (cut > EPS_A) & (limit + granularity <= hi + EPS_A)
    order = order[candidate[order]]
    if not len(order):
        return limit
    room = np.maximum(capacity - topo.tree_sum(limit * mask), 0.0)
    step = granularity * mask
    # The connection has room for a few steps at most: keep the candidates its prefix takes (one
    # cumsum; only the phases a candidate loads can refuse it), so that the admission below, which
    # checks every node, works on those few.
    steps = np.take(step, order, axis=1)
    order = order[~np.any((np.cumsum(steps, axis=1) > room[:, :1] + EPS_A) & (steps > 0), axis=0)]
    if not len(order):
        return limit
    given = _admit(topo, room, step, order, topo.tree_sum(np.take(step, order, axis=1), order))
    # A whole number of steps times the step, the same float as rounding down writes elsewhere.
    return np.where(given, (np.round(limit / granularity) + 1) * granularity, limit)


def allocate(req: AllocationRequest) -> Allocation:
    """Split the capacity of the moment across chargers (see the module docstring)."""
    topo = req.topology
    n = topo.n_chargers
    if n == 0:
        return Allocation(np.zeros(0), np.zeros(0, dtype=bool), "ok")
    capacity = np.nan_to_num(np.asarray(req.capacity_a, dtype=np.float64), nan=0.0, posinf=0.0)
    capacity = np.maximum(capacity, 0.0)  # a negative capacity means none
    mask_rows = np.asarray(req.phase_mask, dtype=bool)
    mask = np.ascontiguousarray(mask_rows.T)  # (3, n): phase-major, so reductions over phases are fast
    granularity = topo.granularity_a
    lo = np.maximum(np.asarray(req.min_a, dtype=np.float64), 0.0)
    hi = floor_to(np.maximum(np.asarray(req.max_a, dtype=np.float64), 0.0), granularity)
    lo = np.ceil(lo / granularity - 1e-9) * granularity
    wants = (hi > 0) & (hi >= lo) & mask.any(axis=0)
    lo = np.where(lo > 0, lo, granularity)  # a charger at 0 A min still needs one step to count
    weight = np.maximum(topo.priority, 1.0) if req.weight is None else np.asarray(req.weight, dtype=np.float64)
    weight = np.where(weight > 0, weight, 1.0)
    can_pause = np.ones(n, dtype=bool) if req.can_pause is None else np.asarray(req.can_pause, dtype=bool)
    urgency = np.zeros(n) if req.urgency is None else np.nan_to_num(np.asarray(req.urgency, dtype=np.float64))
    target = np.full(n, np.nan) if req.target_a is None else np.asarray(req.target_a, dtype=np.float64)
    has_target = np.isfinite(target) & (target >= lo)

    # Admission order: cannot-pause, priority, planned, urgency, then a rotating tie order
    # (equals in index order at turn 0).
    period = max(req.rotation_period_s, 1e-9)
    turn = int(np.floor(req.now_s / period))
    capacity_t = np.ascontiguousarray(capacity.T)
    discharge, uncovered = np.zeros(n), np.zeros(3)
    if req.deficit_a is not None:
        bound = np.zeros(n) if req.discharge_max_a is None else np.asarray(req.discharge_max_a, dtype=np.float64)
        export = np.zeros(3) if req.export_room_a is None else req.export_room_a
        discharge, uncovered = discharge_stage(topo, capacity_t, mask, req.deficit_a, export, bound, granularity,
                                                _fill, _admit)
        if discharge.any():
            # A discharging car charges nothing, and the fuses above it carry its current.
            wants &= discharge <= 0
            capacity_t[:, 1:] = np.maximum(capacity_t[:, 1:] - topo.tree_sum(discharge * mask)[:, 1:], 0.0)
            capacity = np.ascontiguousarray(capacity_t.T)
    need = lo * mask

    keys = (-urgency, ~has_target, -topo.priority, can_pause, ~wants)
    order_all = stable_order(keys)[: int(wants.sum())]  # one sort serves both rounds

    def admit_rotating(room: FloatArray, candidates: BoolArray) -> BoolArray:
        order = order_all[candidates[order_all]]
        n_candidates = len(order)
        if n_candidates == 0:
            return np.zeros(n, dtype=bool)
        demand = topo.tree_sum(need * candidates)  # the same candidates for both admission orders
        chosen = _admit(topo, room, need, order, demand)
        count = int(chosen.sum())
        if turn and 0 < count < n_candidates:
            # Rotate who waits: every period the tie order moves on by as many as fit.
            chosen = _admit(topo, room, need, rotate_ties(order, keys, turn * count % n), demand)
        return chosen

    # Round 1: the planner's choices (and chargers that cannot pause) get their minimum and rise
    # to their target before anyone the plan holds back takes a minimum of its own.
    admitted = admit_rotating(capacity_t, wants & (has_target | ~can_pause))
    x = np.where(admitted, lo, 0.0)
    stage1_hi = np.where(has_target, np.clip(target, lo, hi), lo)
    x = _fill(topo, capacity_t, mask, x, np.where(admitted, stage1_hi, 0.0), weight, admitted & has_target)
    # Round 2: what is left goes to the rest (work-conserving), then everyone rises to the max.
    residual = np.maximum(capacity_t - topo.tree_sum(x * mask), 0.0)
    late = admit_rotating(residual, wants & ~admitted)
    admitted |= late
    x = np.where(late, lo, x)
    x = _fill(topo, capacity_t, mask, x, np.where(admitted, hi, 0.0), weight, admitted)
    limit = floor_to(x, granularity)
    limit = np.where(admitted & (limit >= lo - 1e-9), limit, 0.0)
    limit = _hand_out_rounding(topo, capacity_t, mask, limit, order_all, x - limit, hi, granularity)

    # Belt and braces: pause everything below a node that is somehow over its capacity.
    load = node_load_a(topo, limit, mask_rows)
    over = np.any(load > capacity + 1e-6, axis=1)
    if over.any():
        below = np.asarray(topo.ancestors[over].sum(axis=0)).ravel() > 0
        limit = np.where(below, 0.0, limit)
        load = node_load_a(topo, limit, mask_rows)

    paused = wants & (limit <= 0)
    max_code = (np.where(np.asarray(req.max_a) >= topo.max_current_a, np.int8(CHARGER_MAX_CODE), np.int8(CAR_MAX_CODE))
                if req.max_code is None else np.asarray(req.max_code, dtype=np.int8))
    short = wants & (limit < hi - 1e-9)
    reasons = limit_reasons(topo, capacity_t - load.T, mask, limit, short, paused, max_code,
                            np.isfinite(target) & ~has_target)
    if discharge.any():
        limit = np.where(discharge > 0, -discharge, limit)
        reasons = discharge_reasons(reasons, discharge > 0, mask, req.deficit_a)
    if uncovered.any():
        over = ", ".join(f"{u:.1f} A on L{p + 1}" for p, u in enumerate(uncovered) if u > 0)
        return Allocation(limit, paused, "infeasible",
                          f"non-EV load exceeds the capacity by {over} even with every car at 0 and every "
                          "V2X car discharging at its limit", *reasons)
    must_run = wants & ~can_pause
    if (must_run & paused).any():
        ids = [topo.charger_ids[i] for i in np.flatnonzero(must_run & paused)[:5]]
        return Allocation(limit, paused, "infeasible",
                          f"minimums of chargers that cannot pause do not fit: {', '.join(ids)}", *reasons)
    status = "ok" if not short.any() else "short"
    return Allocation(limit, paused, status, "", *reasons)
