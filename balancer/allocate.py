"""The real-time allocator: split the capacity of the moment across chargers, in numpy.

Three vectorised stages, each bounded:

1. **Admission of minimum currents.** Cars stop below about 6 A, so a charger gets 0 or at least
   its minimum. Candidates are ordered (cannot-pause first, then priority, then chargers with a
   planned target, then urgency, then a tie order that rotates every ``rotation_period_s``) and
   admitted in a few passes: in each pass, candidates that cannot fit even alone are dropped,
   then a prefix sum of minimums along every node of the fuse
   tree (a segmented cumsum over the sparse ``ancestors`` matrix) admits every candidate whose
   prefix still fits at all its nodes and phases. The prefix counts rejected candidates too, so
   the admitted set always fits; later passes retry the rejected against what is left.
2. **Water-filling** (weighted max-min fair on the current above the minimum): all admitted
   chargers rise at a rate proportional to their weight; a node that fills freezes the chargers
   below it on that phase, a charger that reaches its bound stops.
3. **Rounding down** to each charger's granularity (0.1 A, or 1 A for integer-amp chargers).

Stages 1 and 2 run twice. First for the planner's choices (chargers with a target of at least
their minimum, and chargers that cannot pause), filled up to their target: the plan decided who
charges now, and letting the cars it holds back take their minimums first would undo it (on the
depot scenario of ``bench/quality.py`` that cost 13 points of delivered energy). Then for
everyone else on what is left, and all admitted chargers rise to their maximum
(work-conserving: capacity the cars can use now is handed out).

A final check recomputes every node load; should it ever exceed (it cannot by construction), the
chargers below the overloaded node are paused rather than risk a fuse.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from balancer.topology import Topology

__all__ = ["Allocation", "AllocationRequest", "allocate", "node_load_a"]

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

EPS_A = 1e-9
MAX_ROUNDS = 200
ADMISSION_PASSES = 16


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


@dataclass(frozen=True)
class Allocation:
    """limit_a : (n,) [A] per phase, 0 or within [min, max], on the charger's granularity.
    paused : (n,) bool, wanted current but got none for lack of capacity.
    status : "ok" (everyone at max), "short" (not everyone at max) or "infeasible" (chargers that
        cannot pause do not fit even at their minimum; they are paused all the same, because a
        fuse comes first, and the caller reports the non-compliance).
    """

    limit_a: FloatArray
    paused: BoolArray
    status: str
    message: str = ""


def node_load_a(topology: Topology, limit_a: FloatArray, phase_mask: BoolArray) -> FloatArray:
    """Per-node, per-phase load of the given limits: shape (n_nodes, 3) [A]."""
    if topology.n_chargers == 0:
        return np.zeros((topology.n_nodes, 3))
    return np.asarray(topology.ancestors @ (limit_a[:, None] * phase_mask), dtype=np.float64)


def _admit(req: AllocationRequest, capacity: FloatArray, mask: FloatArray, lo: FloatArray,
           order: npt.NDArray[np.int64]) -> BoolArray:
    """Admit candidates (in ``order``) at their minimum while every node and phase still fits."""
    topo = req.topology
    n = topo.n_chargers
    admitted = np.zeros(n, dtype=bool)
    rows, cols = topo.entries
    rank = np.full(n, n, dtype=np.int64)
    rank[order] = np.arange(len(order))
    # Entries (node, charger) of the candidates, sorted by node, then by the charger's rank in the
    # admission order: one integer sort key instead of a lexsort.
    keep = rank[cols] < n
    rows_k, cols_k = rows[keep], cols[keep]
    entry_order = np.argsort(rows_k * (n + 1) + rank[cols_k], kind="stable")
    nodes = rows_k[entry_order]
    chargers = cols_k[entry_order]
    if len(nodes) == 0:
        return admitted
    group_start = np.r_[0, np.flatnonzero(np.diff(nodes)) + 1]
    group_of_entry = np.repeat(np.arange(len(group_start)), np.diff(np.r_[group_start, len(nodes)]))
    need_e = lo[chargers][:, None] * mask[chargers]  # (entries, 3) each candidate's minimum load
    cap_e = capacity[nodes] + EPS_A
    pending = np.zeros(n, dtype=bool)
    pending[order] = True
    for _ in range(ADMISSION_PASSES):
        if not pending.any():
            break
        room_e = cap_e - node_load_a(topo, lo * admitted, mask.astype(bool))[nodes]
        # Candidates that do not fit even alone on top of what is admitted are out for good, so
        # they no longer block the prefix sums of the others.
        alone = np.any(need_e > room_e, axis=1)
        pending &= ~(np.bincount(chargers, weights=alone, minlength=n) > 0)
        if not pending.any():
            break
        load = need_e * pending[chargers][:, None]
        cum = np.cumsum(load, axis=0)
        cum -= (cum[group_start] - load[group_start])[group_of_entry]
        over = np.any(cum > room_e, axis=1)
        bad = np.bincount(chargers, weights=over, minlength=n) > 0
        newly = pending & ~bad
        if not newly.any():
            break
        admitted |= newly
        pending &= bad
    return admitted


def _fill(req: AllocationRequest, capacity: FloatArray, mask: FloatArray, x: FloatArray,
          hi: FloatArray, weight: FloatArray, active: BoolArray) -> FloatArray:
    """Raise ``x`` towards ``hi`` at rates ``weight`` until nodes fill (progressive filling).

    Each round every active charger rises to the nearest bottleneck among its own nodes (not the
    site-wide nearest one): a node's step assumes all chargers below it keep rising, and each
    rises at most that step, so no node can overfill, and the fill ends in about tree-depth rounds.
    """
    topo = req.topology
    ancestors = topo.ancestors
    rows, cols, starts = topo.entries_by_charger
    entry_mask = mask[cols] > 0
    x = x.copy()
    active = active & (x < hi - EPS_A)
    for _ in range(MAX_ROUNDS):
        if not active.any():
            break
        load = np.asarray(ancestors @ (x[:, None] * mask))
        rate = np.asarray(ancestors @ ((weight * active)[:, None] * mask))
        residual = np.maximum(capacity - load, 0.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            step_node = np.where(rate > EPS_A, residual / rate, np.inf)
        per_entry = np.where(entry_mask, step_node[rows], np.inf).min(axis=1)
        step = np.minimum.reduceat(per_entry, starts)
        step = np.where(active, np.minimum(step, (hi - x) / weight), 0.0)
        x = np.minimum(x + weight * step, np.where(active, hi, x))
        load = np.asarray(ancestors @ (x[:, None] * mask))
        full = (capacity - load <= 1e-7) & (rate > EPS_A)
        blocked = np.asarray(topo.ancestors_t @ full.astype(np.float64)) * mask
        active &= (blocked.max(axis=1) <= 0) & (x < hi - EPS_A)
    return x


def allocate(req: AllocationRequest) -> Allocation:
    """Split the capacity of the moment across chargers (see the module docstring)."""
    topo = req.topology
    n = topo.n_chargers
    if n == 0:
        return Allocation(np.zeros(0), np.zeros(0, dtype=bool), "ok")
    capacity = np.nan_to_num(np.asarray(req.capacity_a, dtype=np.float64), nan=0.0, posinf=0.0)
    capacity = np.maximum(capacity, 0.0)  # a negative capacity means none
    mask = np.asarray(req.phase_mask, dtype=np.float64)
    granularity = topo.granularity_a
    lo = np.maximum(np.asarray(req.min_a, dtype=np.float64), 0.0)
    hi = np.floor(np.maximum(np.asarray(req.max_a, dtype=np.float64), 0.0) / granularity + 1e-9) * granularity
    lo = np.ceil(lo / granularity - 1e-9) * granularity
    wants = (hi > 0) & (hi >= lo) & (mask.sum(axis=1) > 0)
    lo = np.where(lo > 0, lo, granularity)  # a charger at 0 A min still needs one step to count
    weight = np.maximum(topo.priority, 1.0) if req.weight is None else np.asarray(req.weight, dtype=np.float64)
    weight = np.where(weight > 0, weight, 1.0)
    can_pause = np.ones(n, dtype=bool) if req.can_pause is None else np.asarray(req.can_pause, dtype=bool)
    urgency = np.zeros(n) if req.urgency is None else np.nan_to_num(np.asarray(req.urgency, dtype=np.float64))
    target = np.full(n, np.nan) if req.target_a is None else np.asarray(req.target_a, dtype=np.float64)
    has_target = np.isfinite(target) & (target >= lo)

    # Admission order: cannot-pause, priority, planned, urgency, then a rotating tie order.
    period = max(req.rotation_period_s, 1e-9)
    turn = int(np.floor(req.now_s / period))
    tie = np.arange(n)

    def order_for(tie_key: npt.NDArray[np.int64], candidates: BoolArray) -> npt.NDArray[np.int64]:
        keys = (tie_key, -urgency, ~has_target, -topo.priority, can_pause, ~candidates)
        return np.lexsort(keys)[: int(candidates.sum())]

    def admit_rotating(cap: FloatArray, candidates: BoolArray) -> BoolArray:
        chosen = _admit(req, cap, mask, lo, order_for(tie, candidates))
        count = int(chosen.sum())
        if turn and 0 < count < int(candidates.sum()):
            # Rotate who waits: every period the tie order moves on by as many as fit.
            chosen = _admit(req, cap, mask, lo, order_for((tie - turn * count) % n, candidates))
        return chosen

    # Stage A: the planner's choices (and chargers that cannot pause) get their minimum, then
    # rise to their target, before anyone the plan holds back takes a minimum of its own.
    planned = wants & (has_target | ~can_pause)
    admitted = admit_rotating(capacity, planned)
    x = np.where(admitted, lo, 0.0)
    stage1_hi = np.where(has_target, np.clip(target, lo, hi), lo)
    x = _fill(req, capacity, mask, x, np.where(admitted, stage1_hi, 0.0), weight, admitted & has_target)
    # Stage B: what is left goes to the rest (work-conserving), then everyone rises to the max.
    residual = np.maximum(capacity - node_load_a(topo, x, mask.astype(bool)), 0.0)
    late = admit_rotating(residual, wants & ~admitted)
    admitted |= late
    x = np.where(late, lo, x)
    x = _fill(req, capacity, mask, x, np.where(admitted, hi, 0.0), weight, admitted)
    limit = np.floor(x / granularity + 1e-9) * granularity
    limit = np.where(admitted & (limit >= lo - 1e-9), limit, 0.0)

    # Belt and braces: pause everything below a node that is somehow over its capacity.
    load = node_load_a(topo, limit, mask.astype(bool))
    over = np.any(load > capacity + 1e-6, axis=1)
    if over.any():
        below = np.asarray(topo.ancestors[over].sum(axis=0)).ravel() > 0
        limit = np.where(below, 0.0, limit)

    paused = wants & (limit <= 0)
    must_run = wants & ~can_pause
    if (must_run & paused).any():
        ids = [topo.charger_ids[i] for i in np.flatnonzero(must_run & paused)[:5]]
        return Allocation(limit, paused, "infeasible",
                          f"minimums of chargers that cannot pause do not fit: {', '.join(ids)}")
    status = "ok" if np.all(limit[wants] >= hi[wants] - 1e-9) else "short"
    return Allocation(limit, paused, status)
