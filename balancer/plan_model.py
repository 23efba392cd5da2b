"""The planner's LP, built as sparse matrices (no Python loop over sessions x slots).

Variables ``x[s, t]``: per-phase current of session ``s`` in slot ``t`` [A], only where the car is
present (a partly covered slot counts the car's energy with the covered fraction, and in the first
slot its current with the share of the slot it takes, ``load_share``). Constraints per
slot, node and phase: the sessions below the node that load the phase draw at most its capacity
(node 0: the capacity in force from the caller; circuits: their fuse). Per session: at most the
car/charger maximum, and never more energy than needed.

The objective is lexicographic by weights, in one LP (one solve keeps 1,000 sessions under 1 s):
  1. priority-weighted energy delivered before departure (weight 1 per Wh and priority);
  2. fairness: each session's need is cut into ``FAIR_SEGMENTS`` equal segments whose weights
     fall by ``FAIR_STEP`` each, so a Wh that fills a car's first segment is worth more than one
     topping up another car's last: shortfall is spread max-min fairly to 1/8 of the need, and a
     Wh of total energy always outweighs the at most ``8 * FAIR_STEP`` gained by moving it;
     A protected share, ``PROTECT_SHARE`` (1/16) of the car's whole request but at most
     ``PROTECT_MAX_WH`` (0.5 kWh), weighs ``PROTECT_WEIGHT`` (3.5) divided by the car's phases
     times more (a single-phase car 3.5, a three-phase car 1.17, so a priority of 2 still comes
     first): an ampere of a short phase gives a three-phase car three times the Wh it gives a
     single-phase car, so without it a single-phase car on the binding phase is planned 0 Wh.
     Bound: a protected Wh is bought with at most ``PROTECT_WEIGHT - 1`` (2.5) Wh of other cars'
     energy, only where the trade is that uneven: at most 1.25 kWh per session;
  3. earlier delivery: a bonus of at most ``2 * EARLY_BONUS`` per Wh, larger in earlier slots (in
     a large model only within the slots decided one by one, see Resolution below), times the
     car's urgency ``1 + 1 / (1 + laxity in hours)``: among cars that can all finish, the least
     laxity charges first (per Wh alone it was a tie the solver broke). Counting it per
     phase-ampere instead (so that a single-phase car would come first on a short phase) was
     measured and lost energy and completed sessions (bench/README.md): ``EARLY_PER_PHASE``.
  4. fewer pauses: a car charging now (``PlanSession.charging``) gets ``KEEP_BONUS`` per Wh of its
     minimum current in the first slot (above the earlier-delivery tie-break, below a fairness
     step: it goes on rather than pausing unless energy or fairness need its minimum elsewhere),
     and ``STICKY_BONUS`` per Wh of the rest up to the limit it holds (``limit_now_a``), so among
     equal plans it keeps what it has.
     The bonus cannot see below the minimum: where the LP gives such a car less than its
     minimum now, ``meet_minimums`` keeps it at the minimum (``plan_minimums.KEEP_CHARGING``).
A need below one slot at the minimum current is given one slot at its minimum (``meet_minimums``).
(A first version solved stage 1 and a fairness stage with a max-min variable as two LPs: the
max-min variable is a dense column that made interior point 5x slower, see bench/README.md.)

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

from collections.abc import Sequence
from datetime import datetime

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from balancer.plan_types import FloatArray, IntArray, LpModel, PlanSession
from balancer.timeline import SLOT_S
from balancer.topology import Topology

__all__ = ["BLOCK_S", "FINE_SLOTS", "HOURLY_ABOVE_PAIRS", "build_model", "load_share", "slot_blocks"]

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
PROTECT_SHARE = 1 / 16
"""Of every car's whole request, this share (at most ``PROTECT_MAX_WH``) is protected: it weighs
``PROTECT_WEIGHT`` divided by the car's phases times more than energy elsewhere (less what the car
already got). Without the cap, 1/16 cost the tight depot of ``bench/quality_round2.py`` 2.5 points of
energy and 24 completed sessions (1/32: 1.4 points); capped at 1 kWh 1.1 points, at 0.5 kWh 0.76
(bench/README.md), for a worst car above 0 where it was 0."""
PROTECT_MAX_WH = 500.0
"""At most this much of a car's request is protected [Wh]: enough that no car on a short phase is
planned nothing, small enough that the energy it costs stays below a point (``PROTECT_SHARE``)."""
PROTECT_WEIGHT = 3.5
"""More than 3: an ampere of a short phase gives a three-phase car three times the energy it gives
a single-phase car, and below 3 the protected share of a single-phase car would still be traded."""
EDGE_SHARE = True
"""Count a partly covered pair with the share of the slot it covers (``load_share``); False: whole."""
EDGE_FIRST_SLOT_ONLY = True
"""Count partly covered pairs by their share in the first slot only (``load_share``)."""
STICKY_BONUS = 1e-5
"""Per Wh in the first slot of a car that charges now (``PlanSession.charging``), above its minimum
(``KEEP_BONUS``) and up to the limit it holds (``limit_now_a``): the LP has many
plans of equal energy and fairness and chose among them afresh at every replan, pausing one car
and starting another. About one slot's worth of the earlier-delivery bonus, far below a fairness
step. On ``bench/quality_round2.py``'s days 1e-5 cut the depot's pauses per car from 7.0 to 1.3
for 0.4 points of energy and gained the car park 0.3; 3e-5 and 1e-4 paused less on the depot and
lost more elsewhere (bench/README.md)."""
KEEP_BONUS = 1e-3
"""Per Wh of its minimum current in the first slot of a car that charges now
(``PlanSession.charging``): a pause costs (a car may fall asleep, every change is a push), and
the earlier-delivery tie-break alone moved a charging car's slot whenever another car arrived
(per Wh an ampere of a short phase is worth three times as much to a three-phase car), pausing it
mid-session. Above that tie-break's usual trades, below a fairness step (``FAIR_STEP``). On
``bench/quality_round2.py``'s days (seeds 1-10) 5e-3 cost the tight depot 0.70 points of energy
against main, 1e-3 0.37, for the same pauses (x0.25-0.28 of main; bench/README.md)."""
HOURLY_ABOVE_PAIRS = 10_000
"""Models with more (session, slot) pairs than this decide per hour after ``fine_slots``."""
FINE_SLOTS = 8
"""Default number of leading slots decided one by one in a large model (2 h of 15 minutes)."""
BLOCK_S = 3600
"""Length of a decision block past the fine slots [s]: clock hours."""

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
    # Where in each slot the car is: from ``start_in`` to ``end_in`` (fractions of the slot).
    start_in = np.clip(arrive[:, None] - slots, 0.0, 1.0)
    end_in = np.clip(leave[:, None] - slots, 0.0, 1.0)
    energy = np.array([max(0.0, s.energy_wh) for s in sessions], dtype=np.float64)
    requested = np.array([e if s.requested_wh is None else max(s.requested_wh, e)
                          for s, e in zip(sessions, energy, strict=True)], dtype=np.float64)
    protected = np.clip(np.minimum(PROTECT_SHARE * requested, PROTECT_MAX_WH) - (requested - energy), 0.0, energy)
    stay_h = coverage.sum(axis=1) * slot_s / 3600.0
    full_w = np.maximum(max_a * phases * voltage_v, 1e-9)
    laxity_h = np.maximum(stay_h - energy / full_w, 0.0)
    return {"charger": charger, "max_a": max_a, "min_a": min_a, "phases": phases, "weight": weight,
            "coverage": coverage, "start_in": start_in, "end_in": end_in, "energy": energy, "protected": protected,
            "urgency": 1.0 + 1.0 / (1.0 + laxity_h),
            "wh_per_a": phases[:, None] * voltage_v * (slot_s / 3600.0) * coverage}


def load_share(coverage: FloatArray, start_in: FloatArray, end_in: FloatArray,
               present: npt.NDArray[np.bool_]) -> FloatArray:
    """How much of a slot's capacity a car's current takes, (n_sessions, n_slots) in [0, 1].

    A car present for part of a slot holds its current only while there: a car leaving at 05:35
    at 32 A takes the 05:30 slot's capacity for 5 of its 15 minutes, and a car present all slot
    can take the rest after it left (the allocator raises it then). So a current counts with the
    share of the slot's *window* (from the first car's arrival to the last car's departure in that
    slot) the car covers: 1 for a car there all window long (every car, when a plan starts mid-slot
    with every car arriving now), 1/3 for the car leaving at 05:35 next to one staying. This is the
    slot's energy balance; the instantaneous limit is kept by the allocator and by ``plan`` lowering
    the staying cars' planned limits in such a slot (``balancer.plan.fit_edge_slots``).

    Only in the first slot (``EDGE_FIRST_SLOT_ONLY``), the one about to be carried out, which every
    replan refines: the cars leaving in it are all there at its start (the plan starts at the earliest
    arrival), which the share counts right. In later slots it is a relaxation that measured worse on the car park
    (several departures in one slot, cars with little room left above their maximum): 96.8 against
    97.8 % of the bound (bench/README.md), so they count whole as before.
    """
    lo = np.where(present, start_in, np.inf).min(axis=0, initial=np.inf)
    hi = np.where(present, end_in, -np.inf).max(axis=0, initial=-np.inf)
    window = np.clip(hi - lo, 1e-9, 1.0)
    share = np.where(present, np.minimum(coverage / window, 1.0), 0.0)
    if not EDGE_SHARE:
        return present.astype(np.float64)
    if EDGE_FIRST_SLOT_ONLY and share.shape[1] > 1:
        share[:, 1:] = present[:, 1:]
    return share


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
                start: datetime, *, slot_s: int = SLOT_S, voltage_v: float | None = None,
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
    share = load_share(np.asarray(arr["coverage"], dtype=np.float64), np.asarray(arr["start_in"], dtype=np.float64),
                       np.asarray(arr["end_in"], dtype=np.float64), present)
    block_share = np.maximum.reduceat(share, first_slot, axis=1) if n_slots else share
    in_block = np.maximum.reduceat(present, first_slot, axis=1) if n_slots else present
    capacity = np.minimum.reduceat(capacity, first_slot, axis=0) if n_slots else capacity
    s_idx, t_idx = np.nonzero(in_block)
    s_idx = s_idx.astype(np.int64)
    t_idx = t_idx.astype(np.int64)
    fine_col = np.searchsorted(s_idx * n_blocks + t_idx, fine_s * n_blocks + slot_block[fine_t]).astype(np.int64)
    n_x = len(s_idx)
    wh_per_a = np.asarray(block_wh[s_idx, t_idx], dtype=np.float64)
    col_share = np.asarray(block_share[s_idx, t_idx], dtype=np.float64)
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
    vals = np.concatenate([np.ones(n_cap), -col_share[d_cols], -np.ones(len(child)), wh_per_a / 1000.0,
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
    charging = np.array([s.charging for s in sessions], dtype=bool)
    discharging = np.array([bool(s.discharge_max_a) for s in sessions], dtype=bool)
    cost = np.concatenate([
        EARLY_BONUS * earliness * urgency * per_phase / 1000.0,
        np.zeros(n_cap),
        arr["weight"][seg_session] * protect * (1.0 + FAIR_STEP * (k - 1 - seg_rank)),
    ])
    keep_col = np.flatnonzero(charging[s_idx] & (t_idx == 0) & ~discharging[s_idx]).astype(np.int64) if n_x \
        else np.zeros(0, np.int64)
    a, row_lo, row_hi, col_lo, col_hi, cost = _add_keep(
        a, row_lo, row_hi, col_lo, col_hi, cost, keep_col,
        np.asarray(arr["min_a"][s_idx], dtype=np.float64), wh_per_a,
        np.array([np.inf if s.limit_now_a is None else s.limit_now_a for s in sessions])[s_idx])
    key_col = np.concatenate(key_cols)
    load = sp.csc_matrix((col_share[key_col], (key_row.ravel(), key_col)), shape=(n_cap, n_x))
    return LpModel(a=a, load=load, cap_a=cap_hi, row_lo=row_lo, row_hi=row_hi, col_lo=col_lo, col_hi=col_hi, cost=cost,
                   col_session=s_idx, col_slot=t_idx, wh_per_a=wh_per_a,
                   min_a=np.asarray(arr["min_a"][s_idx], dtype=np.float64),
                   need_wh=need, weight=np.asarray(arr["weight"], dtype=np.float64), slot_block=slot_block,
                   fine_col=fine_col, fine_slot=fine_t.astype(np.int64),
                   fine_wh_per_a=np.asarray(arr["wh_per_a"][fine_s, fine_t], dtype=np.float64),
                   fine_share=np.asarray(share[fine_s, fine_t], dtype=np.float64), session_mask=mask,
                   hourly_from_slot=hourly_from, cap_node=cap_node.astype(np.int64),
                   cap_phase=cap_phase.astype(np.int64), cap_slot=cap_slot.astype(np.int64), keep_col=keep_col)


def _add_keep(a: sp.csc_matrix, row_lo: FloatArray, row_hi: FloatArray, col_lo: FloatArray, col_hi: FloatArray,
              cost: FloatArray, first: IntArray, min_a: FloatArray, wh_per_a: FloatArray, held_a: FloatArray
              ) -> tuple[sp.csc_matrix, FloatArray, FloatArray, FloatArray, FloatArray, FloatArray]:
    """The keep-going bonus (objective 4): for each first-block column ``x`` in ``first`` (a car
    that charges now), a column ``k`` in [0, its minimum] worth ``KEEP_BONUS`` per Wh and a column
    ``r`` for the rest up to the limit it holds now (``held_a``, per column; inf: up to its
    maximum) worth ``STICKY_BONUS``, with ``k + r - x <= 0``: the car goes on rather than pausing,
    and of equal plans the one that changes no car's current now is taken (with the bonus on all
    of ``x``, two charging cars tied, and the current above their minimums went back and forth
    between them at every replan)."""
    n = len(first)
    if not n:
        return a, row_lo, row_hi, col_lo, col_hi, cost
    n_row, n_col = a.shape
    rows = np.tile(np.arange(n), 3)
    cols = np.concatenate([first, n_col + np.arange(2 * n)])
    vals = np.concatenate([-np.ones(n), np.ones(2 * n)])
    keep = sp.csc_matrix((vals, (rows, cols)), shape=(n, n_col + 2 * n))
    a = sp.vstack([sp.hstack([a, sp.csc_matrix((n_row, 2 * n))]), keep]).tocsc()
    rest_a = np.clip(held_a[first] - min_a[first], 0.0, np.maximum(col_hi[first] - min_a[first], 0.0))
    return (a, np.concatenate([row_lo, np.full(n, -np.inf)]), np.concatenate([row_hi, np.zeros(n)]),
            np.concatenate([col_lo, np.zeros(2 * n)]), np.concatenate([col_hi, min_a[first], rest_a]),
            np.concatenate([cost, KEEP_BONUS * wh_per_a[first] / 1000.0, STICKY_BONUS * wh_per_a[first] / 1000.0]))
