"""The 24 h planner: a linear program over 15-minute slots, built as sparse matrices.

Variables ``x[s, t]``: per-phase current of session ``s`` in slot ``t`` [A], only where the car is
present (partly covered first and last slots count with the covered fraction). Constraints per
slot, node and phase: the sessions below the node that load the phase draw at most its capacity
(node 0: the capacity in force from the caller; circuits: their fuse). Per session: at most the
car/charger maximum, and never more energy than needed.

The objective is lexicographic by weights, in one LP (one solve keeps 1,000 sessions under 1 s):
  1. priority-weighted energy delivered before departure (weight 1 per Wh and priority);
  2. fairness: each session's need is cut into ``FAIR_SEGMENTS`` equal segments whose weights
     fall by ``FAIR_STEP`` each, so a Wh that fills a car's first segment is worth more than one
     topping up another car's last: shortfall is spread max-min fairly to 1/8 of the need, and a
     Wh of total energy always outweighs the at most ``8 * FAIR_STEP`` gained by moving it;
     A protected share, ``PROTECT_SHARE`` of the car's whole request (0, off, by default: it
     cost more energy and completed sessions than it gave the worst car, see its docstring), weighs
     ``PROTECT_WEIGHT`` (3.5) divided by the car's phases times more (a single-phase car 3.5, a
     three-phase car 1.17, so a priority of 2 still comes first): an ampere of a short phase
     gives a three-phase car three times the Wh it gives a single-phase car, so without it a
     single-phase car on the binding phase is planned 0 Wh. Bound: a protected Wh is bought with
     at most ``PROTECT_WEIGHT - 1`` Wh of other cars' energy, only where the trade is that uneven;
  3. earlier delivery: a bonus of at most ``2 * EARLY_BONUS`` per Wh, larger in earlier slots (in
     a large model only within the slots decided one by one, see Resolution below), times the
     car's urgency ``1 + 1 / (1 + laxity in hours)``: among cars that can all finish, the least
     laxity charges first (per Wh alone it was a tie the solver broke). Counting it per
     phase-ampere instead (so that a single-phase car would come first on a short phase) was
     measured and lost energy and completed sessions (bench/README.md): ``EARLY_PER_PHASE``.
A need below one slot at the minimum current is given one slot at its minimum (``meet_minimums``).
(A first version solved stage 1 and a fairness stage with a max-min variable as two LPs: the
max-min variable is a dense column that made interior point 5x slower, see bench/README.md.)

Minimum currents (a car stops below ~6 A) are met by post-processing, ``meet_minimums``: planned
values between 0 and the minimum are set to 0 and each car gets the energy it lost back where the
plan leaves headroom (its other slots, up to its maximum and every node's capacity; an empty slot
at the minimum, paid for by lowering its other slots). Lowering a current never breaks a capacity
and the top-up only uses what is left, so the plan stays feasible. Then ``improve_with_mip``
solves the minimum currents as a MIP started from that plan, for at most ``MIP_MAX_S`` within the
budget, on models of up to ``MIP_MAX_PAIRS`` pairs, and keeps its plan only when it delivers
``MIP_GAIN_WH`` more (``mip_s=0``: post-processing only). (A first version
re-solved the LP with the sub-minimum slots fixed at 0: that doubled the time, a warm start from
the first basis did not help at 1,000 sessions, and it planned no more energy, see
bench/README.md.)

Routes: ``highs-simplex`` (default; HiGHS dual simplex on the matrices, which measured faster
than interior point on this LP at every size in bench/README.md), ``highs-ipm`` (same matrices,
interior point with crossover), ``pulp-highs`` and ``pulp-cbc`` (the same LP
built with pulp, the readable reference and the CBC fallback, see ``balancer.plan_pulp``).
Every failure comes back as a ``SolveOutcome`` status, never an exception.

Resolution: a large model (more than ``HOURLY_ABOVE_PAIRS`` session-slot pairs: about 100 cars
present all day, more with shorter stays) decides each car's current per 15-minute slot for the
first ``fine_slots`` slots (2 h) only and per clock hour after them, as model-predictive
controllers do ("move blocking"): the plan still has a limit for every 15-minute slot, and an
hourly current is held within the lowest capacity of its four slots. Its earlier-delivery bonus
covers those first slots only: the far hours get the most energy and the fairest split, in no
preferred order. Replanning every slot refines the far hours as they come near. At 1,000 cars this
is 7-12x faster (bench/README.md) and plans within 0.05 % of the same energy. Smaller models are
planned per slot throughout.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from balancer.plan_v2x import add_discharge, discharge_rows
from balancer.topology import Topology

__all__ = ["FINE_SLOTS", "LpModel", "Plan", "PlanSession", "SolveOutcome", "build_model", "meet_minimums", "plan",
           "slot_blocks"]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

FAIR_SEGMENTS = 8
"""Each session's need is cut into this many equal segments with decreasing objective weights."""
FAIR_STEP = 1e-2
"""Extra weight per segment: small enough that total energy always wins, big enough to spread."""
EARLY_BONUS = 1e-3
"""Weight of a Wh delivered in the first slot versus the last: the last tie-breaker."""
EARLY_BY_URGENCY = True
"""Earlier delivery weighted by the car's urgency (module docstring); False: as before, not."""
EARLY_PER_PHASE = False
"""Earlier delivery per phase-ampere instead of per Wh: measured worse, kept for the benchmark."""
PROTECT_SHARE = 0.0
"""Of every car's whole request, this share is protected: it weighs ``PROTECT_WEIGHT`` divided by
the car's phases times more than energy elsewhere (less what the car already got). Off: measured
on ``bench/quality_round2.py`` over seeds 1-10, 1/16 cost the tight depot 2.5 points of energy and
24 completed sessions (1/32: 1.4 points) for a worst car of 2-5 % instead of 0 (bench/README.md)."""
PROTECT_WEIGHT = 3.5
"""More than 3: an ampere of a short phase gives a three-phase car three times the energy it gives
a single-phase car, and below 3 the protected share of a single-phase car would still be traded."""
MIP_MAX_PAIRS = 2_000
"""The minimum-current MIP runs on models of at most this many (session, block) pairs (about 20
cars present all day; the 40-charger example of ``balancer plan`` has 1,532): on 40-300 chargers
1 s of branch and bound found nothing better than the post-processing, which was within 0.4 % of
a 30 s MIP already (bench/README.md), so larger models are not given the CPU."""
MIP_MAX_S = 1.0
"""At most this long [s] for the MIP of one plan (and never past the plan's budget)."""
MIP_GAIN_WH = 10.0
"""The MIP's plan replaces the post-processed one only when it delivers this much more [Wh]."""
HOURLY_ABOVE_PAIRS = 10_000
"""Models with more (session, slot) pairs than this decide per hour after ``fine_slots``."""
FINE_SLOTS = 8
"""Default number of leading slots decided one by one in a large model (2 h of 15 minutes)."""
BLOCK_S = 3600
"""Length of a decision block past the fine slots [s]: clock hours."""


@dataclass(frozen=True)
class PlanSession:
    """One car to plan for. Times are aware UTC; ``None`` fields default to the charger's values."""

    charger_id: str
    arrival: datetime
    departure: datetime
    energy_wh: float
    max_current_a: float | None = None
    min_current_a: float | None = None
    phases: int | None = None
    weight: float | None = None
    requested_wh: float | None = None
    """The session's whole request [Wh] (``energy_wh`` is what is left of it; None: the same):
    its protected share is ``PROTECT_SHARE`` of this, less what it already got."""
    discharge_max_a: float | None = None
    """V2X: how far the car may discharge per phase [A] (``balancer.plan_v2x``); None: not at all."""
    discharge_spare_wh: float | None = None
    """V2X: what the car can give above its minimum state of charge [Wh]; None: not limited."""


@dataclass(frozen=True)
class Plan:
    """limit_a : (n_chargers, n_slots) [A per phase]; planned_wh per session's charger id;
    ``hourly_from_slot``: the first slot whose current was decided per hour (None: every slot
    on its own, see the module docstring)."""

    start: datetime
    slot_s: int
    charger_ids: tuple[str, ...]
    limit_a: FloatArray
    planned_wh: dict[str, float] = field(default_factory=dict)
    hourly_from_slot: int | None = None

    def first_slot(self) -> FloatArray:
        """The planned limits of the first slot, (n_chargers,) [A]."""
        return np.asarray(self.limit_a[:, 0], dtype=np.float64)


@dataclass(frozen=True)
class SolveOutcome:
    """The planner's answer: ``status`` is data (optimal, time_limit, infeasible, error, no_sessions)."""

    status: str
    plan: Plan | None
    solver: str
    seconds: float
    message: str = ""


@dataclass(frozen=True)
class LpModel:
    """The LP in matrix form: maximise ``cost @ v`` over ``row_lo <= A v <= row_hi``,
    ``col_lo <= v <= col_hi``. Columns: the ``x[s, b]`` pairs (``col_session``, ``col_slot``: the
    decision block, which is the slot itself unless the model is large), then the node flows
    ``y``, then the fairness segments ``g``. ``slot_block`` (n_slots,) maps slots to blocks; the
    ``fine_*`` arrays list every (session, slot) pair with the column that sets its current;
    ``hourly_from_slot`` is the first slot decided per hour (None: none is).

    ``load`` (n_cap, n_x) and ``cap_a`` (n_cap,) [A] restate the node rows without flows: row ``k``
    of ``load @ x`` is the current on one node, phase and slot, at most ``cap_a[k]``. The
    minimum-current repair uses them to know the headroom left by a plan.
    """

    a: sp.csc_matrix
    load: sp.csc_matrix
    cap_a: FloatArray
    row_lo: FloatArray
    row_hi: FloatArray
    col_lo: FloatArray
    col_hi: FloatArray
    cost: FloatArray
    col_session: IntArray
    col_slot: IntArray
    wh_per_a: FloatArray
    min_a: FloatArray
    need_wh: FloatArray
    weight: FloatArray
    slot_block: IntArray
    fine_col: IntArray
    fine_slot: IntArray
    fine_wh_per_a: FloatArray
    hourly_from_slot: int | None
    cap_node: IntArray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    """(n_cap,) node, phase and block of every node row (``balancer.plan_v2x`` adds to them)."""
    cap_phase: IntArray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    cap_slot: IntArray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    @property
    def n_x(self) -> int:
        return len(self.col_session)


def _session_arrays(topology: Topology, sessions: Sequence[PlanSession], start: datetime, n_slots: int,
                    slot_s: int, voltage_v: float) -> dict[str, FloatArray | IntArray]:
    """Per-session vectors: charger index, bounds, phases, weight, coverage per slot."""
    n = len(sessions)
    charger = np.array([topology.index(s.charger_id) for s in sessions], dtype=np.int64)
    max_a = np.array([topology.max_current_a[i] if s.max_current_a is None
                      else min(s.max_current_a, topology.max_current_a[i])
                      for s, i in zip(sessions, charger, strict=True)], dtype=np.float64)
    min_a = np.array([topology.min_current_a[i] if s.min_current_a is None
                      else max(s.min_current_a, topology.min_current_a[i])
                      for s, i in zip(sessions, charger, strict=True)], dtype=np.float64)
    full = topology.charger_phase_mask[charger].sum(axis=1)
    phases = np.array([full[k] if s.phases is None else min(s.phases, full[k])
                       for k, s in enumerate(sessions)], dtype=np.int64)
    weight = np.array([topology.priority[i] if s.weight is None else s.weight
                       for s, i in zip(sessions, charger, strict=True)], dtype=np.float64)
    weight = np.where(weight > 0, weight, 1.0)
    t0 = start.timestamp()
    arrive = np.array([(s.arrival.timestamp() - t0) / slot_s for s in sessions]) if n else np.zeros(0)
    leave = np.array([(s.departure.timestamp() - t0) / slot_s for s in sessions]) if n else np.zeros(0)
    slots = np.arange(n_slots, dtype=np.float64)
    coverage = np.clip(np.minimum(leave[:, None], slots + 1) - np.maximum(arrive[:, None], slots), 0.0, 1.0)
    energy = np.array([max(0.0, s.energy_wh) for s in sessions], dtype=np.float64)
    requested = np.array([e if s.requested_wh is None else max(s.requested_wh, e)
                          for s, e in zip(sessions, energy, strict=True)], dtype=np.float64)
    protected = np.clip(PROTECT_SHARE * requested - (requested - energy), 0.0, energy)
    stay_h = coverage.sum(axis=1) * slot_s / 3600.0
    full_w = np.maximum(max_a * phases * voltage_v, 1e-9)
    laxity_h = np.maximum(stay_h - energy / full_w, 0.0)
    return {"charger": charger, "max_a": max_a, "min_a": min_a, "phases": phases, "weight": weight,
            "coverage": coverage, "energy": energy, "protected": protected, "urgency": 1.0 + 1.0 / (1.0 + laxity_h),
            "wh_per_a": phases[:, None] * voltage_v * (slot_s / 3600.0) * coverage}


def slot_blocks(start: datetime, n_slots: int, slot_s: int, fine_slots: int | None) -> IntArray:
    """Decision block of every slot: the first ``fine_slots`` slots one each, then clock hours.

    Returns (n_slots,) block numbers, non-decreasing from 0 (``None``: every slot its own block).
    """
    slots = np.arange(n_slots, dtype=np.int64)
    if fine_slots is None or fine_slots >= n_slots:
        return slots
    hour = np.floor((start.timestamp() + slots * slot_s) / BLOCK_S).astype(np.int64)
    key = np.where(slots < fine_slots, slots, fine_slots + hour - hour[fine_slots])
    return np.unique(key, return_inverse=True)[1].astype(np.int64).ravel()


def build_model(topology: Topology, capacity_a: FloatArray, sessions: Sequence[PlanSession],
                start: datetime, *, slot_s: int = 900, voltage_v: float | None = None,
                fine_slots: int | None = None) -> LpModel:
    """Build the LP as sparse matrices (no Python loop over sessions x slots).

    ``fine_slots``: in a model of more than ``HOURLY_ABOVE_PAIRS`` pairs, decide the slots past
    this many per hour (module docstring); ``None``: every slot on its own whatever the size.
    """
    volts = topology.site.voltage_v if voltage_v is None else voltage_v
    capacity = np.maximum(np.nan_to_num(np.asarray(capacity_a, dtype=np.float64), nan=0.0), 0.0)
    n_slots = capacity.shape[0]
    arr = _session_arrays(topology, sessions, start, n_slots, slot_s, volts)
    present = (arr["coverage"] > 0) & (arr["max_a"][:, None] > 0) & (arr["energy"][:, None] > 0)
    fine_s, fine_t = np.nonzero(present)
    large = len(fine_s) > HOURLY_ABOVE_PAIRS
    hourly_from = fine_slots if large and fine_slots is not None and fine_slots < n_slots else None
    slot_block = slot_blocks(start, n_slots, slot_s, hourly_from)
    first_slot = np.flatnonzero(np.diff(slot_block, prepend=-1))  # each block's first slot
    n_blocks = len(first_slot)
    # A block's current holds in each of its slots the car is present in: the block's energy per
    # ampere is the sum over those slots, and it must fit the lowest capacity of the block.
    block_wh = np.add.reduceat(arr["wh_per_a"], first_slot, axis=1) if n_slots else arr["wh_per_a"]
    in_block = np.maximum.reduceat(present, first_slot, axis=1) if n_slots else present
    capacity = np.minimum.reduceat(capacity, first_slot, axis=0) if n_slots else capacity
    s_idx, t_idx = np.nonzero(in_block)
    s_idx = s_idx.astype(np.int64)
    t_idx = t_idx.astype(np.int64)
    fine_col = np.searchsorted(s_idx * n_blocks + t_idx, fine_s * n_blocks + slot_block[fine_t]).astype(np.int64)
    n_x = len(s_idx)
    wh_per_a = np.asarray(block_wh[s_idx, t_idx], dtype=np.float64)
    charger = arr["charger"][s_idx]
    n_slots = n_blocks  # from here on, the model's slots are the decision blocks

    # Car phases -> grid phases: a single-phase car on a three-phase charger loads its R phase.
    mask = topology.charger_phase_mask[arr["charger"]].copy()
    one = (arr["phases"] == 1) & (mask.sum(axis=1) == 3)
    mask[one] = False
    mask[np.flatnonzero(one), topology.single_phase_grid[arr["charger"][one]]] = True
    col_mask = mask[s_idx]  # (n_x, 3)

    # Flow variables y[node, phase, slot] for every node that carries some x: each node's row says
    # y = (x of chargers hanging directly on it) + (y of its child nodes), and y's upper bound is
    # the node's capacity. Each x then appears once per phase, not once per ancestor: a sparser
    # matrix than summing every x into every ancestor's row, which is what makes HiGHS fast here.
    anc = topology.ancestors.tocsc()[:, charger]  # (n_nodes, n_x)
    anc_coo = anc.tocoo()
    node_of, col_of = anc_coo.row.astype(np.int64), anc_coo.col.astype(np.int64)
    keys, key_cols = [], []
    for p in range(3):
        keep = col_mask[col_of, p]
        keys.append((node_of[keep] * 3 + p) * n_slots + t_idx[col_of[keep]])
        key_cols.append(col_of[keep])
    unique_keys, key_row = np.unique(np.concatenate(keys), return_inverse=True)
    n_cap = len(unique_keys)
    cap_node = unique_keys // (3 * n_slots)
    cap_phase = (unique_keys // n_slots) % 3
    cap_slot = unique_keys % n_slots
    cap_hi = np.where(cap_node == 0, np.minimum(capacity[cap_slot, cap_phase], topology.node_limit_a[0]),
                      topology.node_limit_a[cap_node])
    direct_cols, direct_rows = [], []
    home = topology.charger_node[charger]
    for p in range(3):
        on = np.flatnonzero(col_mask[:, p])
        direct_cols.append(on)
        direct_rows.append(np.searchsorted(unique_keys, (home[on] * 3 + p) * n_slots + t_idx[on]))
    d_cols = np.concatenate(direct_cols)
    d_rows = np.concatenate(direct_rows)
    child = np.flatnonzero(cap_node != 0)
    parent_key = (topology.node_parent[cap_node[child]] * 3 + cap_phase[child]) * n_slots + cap_slot[child]
    parent_row = np.searchsorted(unique_keys, parent_key)

    n_s = len(sessions)
    need = np.asarray(arr["energy"], dtype=np.float64)
    k = FAIR_SEGMENTS
    y0 = n_x
    g0 = n_x + n_cap
    # Segment k + 1 of each session is its protected share (after the k fair segments' columns).
    seg_session = np.concatenate([np.repeat(np.arange(n_s), k), np.arange(n_s)])
    seg_rank = np.concatenate([np.tile(np.arange(k), n_s), np.full(n_s, -1)])
    protected = np.asarray(arr["protected"], dtype=np.float64)
    n_g = n_s * (k + 1)
    # Node rows: y - direct x - child y = 0.  Energy rows: sum_t e x - sum_j g_j = 0, where the
    # protected share and k segments g_j <= (need - protected) / k carry the session's energy (so
    # never more than needed).
    rows = np.concatenate([np.arange(n_cap), d_rows, parent_row, n_cap + s_idx, n_cap + seg_session])
    cols = np.concatenate([y0 + np.arange(n_cap), d_cols, y0 + child, np.arange(n_x),
                           g0 + np.arange(n_g)])
    # Energy rows are written in kWh so that the objective's coefficients are of order 1: with
    # costs near 1e-7 the solver's dual tolerance (1e-7) would make any plan look optimal.
    vals = np.concatenate([np.ones(n_cap), -np.ones(len(d_cols)), -np.ones(len(child)), wh_per_a / 1000.0,
                           -np.ones(n_g)])
    a = sp.csc_matrix((vals, (rows, cols)), shape=(n_cap + n_s, n_x + n_cap + n_g))
    row_lo = np.zeros(n_cap + n_s)
    row_hi = np.zeros(n_cap + n_s)
    col_lo = np.zeros(n_x + n_cap + n_g)
    col_hi = np.concatenate([arr["max_a"][s_idx], cap_hi, np.repeat((need - protected) / 1000.0 / k, k),
                             protected / 1000.0])
    # Earlier delivery: over the whole horizon, or in a large model over the fine slots only (the
    # decisions about to be carried out): distinct bonuses on every far hour cost the simplex twice
    # the iterations when every car is present, and each replan brings the far hours nearer.
    window = len(slot_block) if hourly_from is None else max(hourly_from, 1)
    # Weighted by urgency, 2 for a car without laxity down to 1 for one with hours of it: among
    # equals, the least laxity charges first.
    earliness = np.clip(1.0 - first_slot[t_idx] / max(window, 1), 0.0, 1.0)
    urgency = np.asarray(arr["urgency"], dtype=np.float64)[s_idx] if EARLY_BY_URGENCY else 1.0
    per_phase = wh_per_a / np.maximum(arr["phases"][s_idx], 1) if EARLY_PER_PHASE else wh_per_a
    # Per phase the car loads: 3.5 for a single-phase car, 1.17 for a three-phase one, so a
    # protected share beats the 3:1 phase trade but not a priority of 2 or more.
    protect = np.where(seg_rank < 0,
                       np.maximum(PROTECT_WEIGHT / np.maximum(arr["phases"][seg_session], 1), 1.0), 1.0)
    cost = np.concatenate([
        EARLY_BONUS * earliness * urgency * per_phase / 1000.0,
        np.zeros(n_cap),
        arr["weight"][seg_session] * protect * (1.0 + FAIR_STEP * (k - 1 - seg_rank)),
    ])
    key_col = np.concatenate(key_cols)
    load = sp.csc_matrix((np.ones(len(key_col)), (key_row.ravel(), key_col)), shape=(n_cap, n_x))
    return LpModel(a=a, load=load, cap_a=cap_hi, row_lo=row_lo, row_hi=row_hi, col_lo=col_lo, col_hi=col_hi, cost=cost,
                   col_session=s_idx, col_slot=t_idx, wh_per_a=wh_per_a,
                   min_a=np.asarray(arr["min_a"][s_idx], dtype=np.float64),
                   need_wh=need, weight=np.asarray(arr["weight"], dtype=np.float64), slot_block=slot_block,
                   fine_col=fine_col, fine_slot=fine_t.astype(np.int64),
                   fine_wh_per_a=np.asarray(arr["wh_per_a"][fine_s, fine_t], dtype=np.float64),
                   hourly_from_slot=hourly_from, cap_node=cap_node.astype(np.int64),
                   cap_phase=cap_phase.astype(np.int64), cap_slot=cap_slot.astype(np.int64))


def _solve_highs(model: LpModel, cost: FloatArray, col_hi: FloatArray, row_lo: FloatArray,
                 method: str, budget_s: float) -> tuple[str, FloatArray | None, str]:
    """One LP with highspy: (status, primal values, message)."""
    import highspy

    h = highspy.Highs()  # type: ignore[no-untyped-call]
    h.setOptionValue("output_flag", False)
    h.setOptionValue("log_to_console", False)
    h.setOptionValue("time_limit", max(budget_s, 0.01))
    h.setOptionValue("solver", "ipm" if method == "ipm" else "simplex")
    lp = highspy.HighsLp()
    lp.num_col_ = model.a.shape[1]
    lp.num_row_ = model.a.shape[0]
    lp.col_cost_ = cost
    lp.col_lower_ = model.col_lo
    lp.col_upper_ = col_hi
    lp.row_lower_ = row_lo
    lp.row_upper_ = model.row_hi
    lp.sense_ = highspy.ObjSense.kMaximize
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_ = model.a.indptr
    lp.a_matrix_.index_ = model.a.indices
    lp.a_matrix_.value_ = model.a.data
    h.passModel(lp)
    h.run()
    status = h.getModelStatus()
    if status == highspy.HighsModelStatus.kOptimal:
        return "optimal", np.asarray(h.getSolution().col_value, dtype=np.float64), ""
    if status == highspy.HighsModelStatus.kTimeLimit:
        return "time_limit", None, f"HiGHS stopped at the {budget_s:.2f} s budget"
    if status == highspy.HighsModelStatus.kInfeasible:
        return "infeasible", None, "HiGHS: infeasible"
    return "error", None, f"HiGHS: {h.modelStatusToString(status)}"


def _solve(model: LpModel, method: str, deadline: float,
           mip_s: float | None = None) -> tuple[str, FloatArray | None, str]:
    """Solve once, then make every planned current 0 or at least the minimum (module docstring)."""
    if method in ("ipm", "simplex"):
        solve = _solve_highs
    else:
        from balancer.plan_pulp import solve_pulp as solve
    status, v, msg = solve(model, model.cost, model.col_hi, model.row_lo, method,
                           deadline - time.perf_counter())
    if v is None:
        return status, None, msg
    x = meet_minimums(model, v[: model.n_x])
    mip_s = min(MIP_MAX_S if mip_s is None else mip_s, deadline - time.perf_counter())
    if mip_s >= 0.05 and model.n_x <= MIP_MAX_PAIRS:
        x = improve_with_mip(model, x, mip_s)
    return "optimal", np.concatenate([x, v[model.n_x:]]), ""  # the other columns as the LP left them


def _weighted_wh(model: LpModel, x: FloatArray) -> float:
    """Priority-weighted energy of currents ``x`` (n_x,), each session's counted up to its need."""
    got = np.bincount(model.col_session, weights=x * model.wh_per_a, minlength=len(model.need_wh))
    return float(model.weight @ np.minimum(got, model.need_wh))


def improve_with_mip(model: LpModel, x: FloatArray, budget_s: float) -> FloatArray:
    """The minimum currents as a MIP (HiGHS branch and bound, time-bounded), started from the
    post-processed plan ``x``: a binary per current, ``min z <= x <= max z``, the LP's rows and
    objective otherwise. Its plan is taken only if it is feasible and delivers more priority-
    weighted energy than ``x``; a need below one slot at the minimum is then seated again (the
    MIP cannot serve it within its need). Every failure returns ``x`` unchanged.
    """
    import highspy

    n_x = model.n_x
    n_col = model.a.shape[1]
    n_s = len(model.need_wh)
    hi = model.col_hi[:n_x]
    eye = sp.identity(n_x, format="csc")
    rest = sp.csc_matrix((n_x, n_col - n_x))
    a = sp.vstack([sp.hstack([model.a, sp.csc_matrix((model.a.shape[0], n_x))]),
                   sp.hstack([eye, rest, -sp.diags(model.min_a)]),
                   sp.hstack([eye, rest, -sp.diags(hi)])]).tocsc()
    inf = highspy.kHighsInf
    h = highspy.Highs()  # type: ignore[no-untyped-call]
    h.setOptionValue("output_flag", False)
    h.setOptionValue("log_to_console", False)
    h.setOptionValue("time_limit", max(budget_s, 0.01))
    h.setOptionValue("mip_rel_gap", 1e-4)
    lp = highspy.HighsLp()
    lp.num_col_ = n_col + n_x
    lp.num_row_ = a.shape[0]
    lp.col_cost_ = np.concatenate([model.cost, np.zeros(n_x)])
    lp.col_lower_ = np.concatenate([model.col_lo, np.zeros(n_x)])
    lp.col_upper_ = np.concatenate([model.col_hi, np.ones(n_x)])
    lp.row_lower_ = np.concatenate([model.row_lo, np.zeros(n_x), np.full(n_x, -inf)])
    lp.row_upper_ = np.concatenate([model.row_hi, np.full(n_x, inf), np.zeros(n_x)])
    lp.sense_ = highspy.ObjSense.kMaximize
    lp.integrality_ = [highspy.HighsVarType.kContinuous] * n_col + [highspy.HighsVarType.kInteger] * n_x
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_ = a.indptr
    lp.a_matrix_.index_ = a.indices
    lp.a_matrix_.value_ = a.data
    try:
        h.passModel(lp)
        start = _mip_start(model, x)
        if start is not None:
            sol = highspy.HighsSolution()
            sol.col_value = np.concatenate([start, (x > 0).astype(np.float64)]).tolist()
            h.setSolution(sol)
        h.run()
        info = h.getInfo()
        if info.primal_solution_status != 2:  # kSolutionStatusFeasible
            return x
        mip_x = np.asarray(h.getSolution().col_value, dtype=np.float64)[:n_x]
    except Exception:  # the MIP is an improvement, never a failure of the plan
        return x
    mip_x = np.where(mip_x >= model.min_a - 1e-6, np.minimum(mip_x, hi), 0.0)
    headroom = model.cap_a - model.load @ mip_x
    if np.any(headroom < -1e-6):
        return x
    first = np.searchsorted(model.col_session, np.arange(n_s + 1))
    for s in range(n_s):
        cols = np.arange(first[s], first[s + 1])
        if len(cols) and not np.any(mip_x[cols] > 0) and model.need_wh[s] > 0 and \
                model.need_wh[s] <= float(np.max(model.min_a[cols] * model.wh_per_a[cols])) + 1e-6:
            _seat_small_need(model, mip_x, headroom, cols)
    # (a few Wh are rounding: the MIP stops within a gap, where the earlier-delivery tie-break is lost)
    return mip_x if _weighted_wh(model, mip_x) > _weighted_wh(model, x) + MIP_GAIN_WH else x


def _mip_start(model: LpModel, x: FloatArray) -> FloatArray | None:
    """Every column of the LP for currents ``x``: node flows, then energy in the segments (the
    protected share first, then the fair segments in order); None if ``x`` plans more than a need
    (a seated small need), which the MIP's rows do not allow."""
    n_s = len(model.need_wh)
    k = FAIR_SEGMENTS
    energy_kwh = np.bincount(model.col_session, weights=x * model.wh_per_a, minlength=n_s) / 1000.0
    g0 = model.n_x + len(model.cap_a)
    seg_hi = model.col_hi[g0: g0 + n_s * k].reshape(n_s, k)
    protected_hi = model.col_hi[g0 + n_s * k:]
    if np.any(energy_kwh > seg_hi.sum(axis=1) + protected_hi + 1e-9):
        return None
    protected = np.minimum(energy_kwh, protected_hi)
    left = energy_kwh - protected
    before = np.cumsum(seg_hi, axis=1) - seg_hi
    segs = np.clip(left[:, None] - before, 0.0, seg_hi)
    return np.concatenate([x, model.load @ x, segs.ravel(), protected])


def meet_minimums(model: LpModel, x: FloatArray) -> FloatArray:
    """Zero every current below its minimum, then give each car back the energy it lost where the
    plan leaves room, higher priority first: first in the slots it already charges in, earliest
    first, up to its maximum and the headroom on every node and phase above it; then in a slot it
    had no current in, at the minimum at least, taking any energy beyond what it lost off its
    latest other slots (never below their minimum). Raising uses only headroom that is left and
    lowering never breaks a limit, so the plan stays within every limit, and no car gets more
    than the LP gave it (so never more than needed).

    x : (n_x,) [A] the LP's currents, returns (n_x,) [A]
    """
    n_s = len(model.need_wh)
    lp_wh = np.bincount(model.col_session, weights=x * model.wh_per_a, minlength=n_s)
    x = np.where(x >= model.min_a - 1e-6, x, 0.0)
    lost_wh = lp_wh - np.bincount(model.col_session, weights=x * model.wh_per_a, minlength=n_s)
    short = np.flatnonzero(lost_wh > 1e-6)
    if not len(short):
        return x
    headroom = model.cap_a - model.load @ x
    hi = model.col_hi[: model.n_x]
    # Columns are grouped by session and sorted by slot; one session's columns are in different
    # slots, so they share no node row and can be raised together.
    first = np.searchsorted(model.col_session, np.arange(n_s + 1))
    indptr, indices = model.load.indptr, model.load.indices
    for s in short[np.argsort(-model.weight[short], kind="stable")]:
        cols = np.arange(first[s], first[s + 1])
        seg = indptr[first[s]: first[s + 1] + 1]
        rows = indices[seg[0]: seg[-1]]
        wh = model.wh_per_a[cols]
        mins = model.min_a[cols]
        room = np.minimum(hi[cols] - x[cols], np.minimum.reduceat(headroom[rows], seg[:-1] - seg[0]))
        room = np.maximum(room, 0.0)
        charging = x[cols] > 0.0
        room_wh = np.where(charging, room * wh, 0.0)
        before_wh = np.cumsum(room_wh) - room_wh
        delta = np.clip(lost_wh[s] - before_wh, 0.0, room_wh) / wh
        left_wh = lost_wh[s] - float(delta @ wh)
        for j in np.flatnonzero(~charging & (room >= mins)):
            if left_wh <= 1e-6:
                break
            add = min(max(mins[j], left_wh / wh[j]), room[j])
            excess_wh = add * wh[j] - left_wh
            spare_wh = np.where(charging, (x[cols] + delta - mins) * wh, 0.0)[::-1]
            if excess_wh > spare_wh.sum() + 1e-9:
                continue
            taken_wh = np.clip(excess_wh - (np.cumsum(spare_wh) - spare_wh), 0.0, spare_wh)[::-1]
            delta -= taken_wh / wh
            delta[j] = add
            left_wh -= add * wh[j] - float(taken_wh.sum())
            charging[j] = True
        x[cols] += delta
        np.subtract.at(headroom, rows, np.repeat(delta, np.diff(seg)))
        if left_wh > 1e-6 and not np.any(x[cols] > 0.0) and model.need_wh[s] <= float(np.max(mins * wh)) + 1e-6:
            _seat_small_need(model, x, headroom, cols)
    return x


def _seat_small_need(model: LpModel, x: FloatArray, headroom: FloatArray, cols: IntArray) -> None:
    """A need smaller than one slot at the minimum (a 0.5 kWh car: 1.035 kWh is one slot at 6 A on
    three phases) can only be met by a current the car takes for part of a slot: the LP plans it
    below the minimum and zeroing loses all of it, for the car's whole stay. Give it one slot at
    its minimum (it stops drawing when full, and the allocator hands out what it leaves): the
    earliest slot with room for it; else the earliest slot where the other cars on its nodes can
    give way without going below their own minimum (their spare current above it, largest first).
    Lowering never breaks a limit; the raise uses only what is then free. In place."""
    hi = model.col_hi[: model.n_x]
    ptr, idx = model.load.indptr, model.load.indices
    by_row = model.load.tocsr()
    need_a = model.min_a[cols]
    fits = [c for c, m in zip(cols, need_a, strict=True) if hi[c] >= m and
            np.all(headroom[idx[ptr[c]: ptr[c + 1]]] >= m - 1e-9)]
    candidates = fits[:1] if fits else [c for c in cols if hi[c] >= model.min_a[c]]
    for c in candidates:
        rows = idx[ptr[c]: ptr[c + 1]]
        trial_x, trial_room = x.copy(), headroom.copy()
        ok = True
        for r in rows:
            deficit = model.min_a[c] - trial_room[r]
            others = by_row.indices[by_row.indptr[r]: by_row.indptr[r + 1]]
            others = others[(others != c) & (trial_x[others] > 0.0)]
            spare = trial_x[others] - model.min_a[others]
            for o in others[np.argsort(-spare, kind="stable")]:
                if deficit <= 1e-9:
                    break
                give = min(float(trial_x[o] - model.min_a[o]), deficit)
                if give <= 1e-9:
                    break
                trial_x[o] -= give
                trial_room[idx[ptr[o]: ptr[o + 1]]] += give
                deficit -= give
            if deficit > 1e-9:
                ok = False
                break
        if ok:
            trial_x[c] = model.min_a[c]
            trial_room[rows] -= model.min_a[c]
            x[:] = trial_x
            headroom[:] = trial_room
            return


def plan(topology: Topology, capacity_a: FloatArray, sessions: Sequence[PlanSession], start: datetime,
         *, slot_s: int = 900, budget_s: float = 2.0, solver: str = "highs-simplex",
         voltage_v: float | None = None, fine_slots: int | None = FINE_SLOTS,
         mip_s: float | None = None, deficit_a: FloatArray | None = None,
         export_room_a: FloatArray | None = None) -> SolveOutcome:
    """Plan ``len(capacity_a)`` slots from ``start`` for ``sessions``; never raises on solver trouble.

    capacity_a : (n_slots, 3) [A] connection capacity in force per slot and phase (NaN counts as 0)
    fine_slots : slots decided one by one in a large model before hourly decisions (None: all)
    mip_s : at most this long for the minimum-current MIP (``improve_with_mip``; None:
        ``MIP_MAX_S``; 0: post-processing only), never past ``budget_s``
    deficit_a, export_room_a : (n_slots, 3) [A] V2X: how far non-EV load exceeds ``capacity_a``,
        and how far discharge may push the connection below zero (``balancer.plan_v2x``); a
        discharging car's limit in the plan is negative
    """
    started = time.perf_counter()
    deadline = started + budget_s
    n_slots = int(np.asarray(capacity_a).shape[0])
    empty = np.zeros((topology.n_chargers, n_slots))
    if not sessions:
        return SolveOutcome("no_sessions", Plan(start, slot_s, topology.charger_ids, empty, {}), solver,
                            time.perf_counter() - started)
    try:
        model = build_model(topology, capacity_a, sessions, start, slot_s=slot_s, voltage_v=voltage_v,
                            fine_slots=fine_slots)
    except (KeyError, ValueError) as exc:
        return SolveOutcome("error", None, solver, time.perf_counter() - started, f"bad input: {exc!r}")
    discharge = None
    if deficit_a is not None and model.n_x:
        model, discharge = add_discharge(model, sessions, np.asarray(capacity_a, dtype=np.float64), deficit_a,
                                         np.zeros_like(deficit_a) if export_room_a is None else export_room_a)
        mip_s = 0.0 if discharge is not None else mip_s
    if model.n_x == 0:
        return SolveOutcome("no_sessions", Plan(start, slot_s, topology.charger_ids, empty,
                                                {s.charger_id: 0.0 for s in sessions}),
                            solver, time.perf_counter() - started)
    method = {"highs-ipm": "ipm", "highs-simplex": "simplex", "pulp-highs": "pulp-highs",
              "pulp-cbc": "pulp-cbc"}.get(solver)
    if method is None:
        return SolveOutcome("error", None, solver, 0.0, f"unknown solver {solver!r}")
    used = solver
    try:
        status, x, message = _solve(model, method, deadline, mip_s)
    except Exception as exc:  # a solver crash must leave the allocator in charge, not kill the caller
        status, x, message = "error", None, f"{solver} failed: {exc!r}"
    if x is None and status == "error" and method != "pulp-cbc":
        used = "pulp-cbc"
        try:
            status, x, message = _solve(model, "pulp-cbc", deadline)
        except Exception as exc:
            status, x, message = "error", None, f"CBC fallback failed: {exc!r}"
    seconds = time.perf_counter() - started
    if x is None:
        return SolveOutcome(status, None, used, seconds, message)
    # Every slot a car is present in takes the current of its decision block.
    limit = np.zeros((topology.n_chargers, n_slots))
    charger_of_session = np.array([topology.index(s.charger_id) for s in sessions], dtype=np.int64)
    session = model.col_session[model.fine_col]
    cell = (charger_of_session[session], model.fine_slot)  # (charger, slot) of every fine pair
    # V2X: a block's charge and discharge net out (the car time-shares them within it).
    both = discharge_rows(discharge, x, model.fine_col)
    fine_x = np.maximum(x[model.fine_col] - both, 0.0)
    dis = np.maximum(both - x[model.fine_col], 0.0)
    np.add.at(limit, cell, fine_x)
    gran = topology.granularity_a[:, None]
    limit = np.floor(limit / gran + 1e-9) * gran
    mins = topology.min_current_a[:, None]
    limit = np.where(limit >= mins - 1e-9, limit, 0.0)
    delivered = np.zeros(len(sessions))
    rounded = limit[cell]
    np.add.at(delivered, session, np.minimum(rounded, fine_x) * model.fine_wh_per_a)
    if dis.any():  # V2X: a negative limit, its magnitude rounded down (fuses and export room hold)
        limit_dis = np.zeros_like(limit)
        np.add.at(limit_dis, cell, dis)
        limit_dis = np.floor(limit_dis / gran + 1e-6) * gran
        limit = np.where(limit_dis > 0, -limit_dis, limit)
        np.subtract.at(delivered, session, dis * model.fine_wh_per_a)
    planned = {s.charger_id: float(max(min(delivered[k], s.energy_wh), 0.0)) for k, s in enumerate(sessions)}
    result = Plan(start, slot_s, topology.charger_ids, limit, planned, model.hourly_from_slot)
    return SolveOutcome("optimal", result, used, seconds)


def slot_times(start: datetime, n_slots: int, slot_s: int = 900) -> list[datetime]:
    """Start time of every slot."""
    return [start + timedelta(seconds=k * slot_s) for k in range(n_slots)]
