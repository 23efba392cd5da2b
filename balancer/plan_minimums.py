"""Minimum currents (a car stops below ~6 A) on top of the LP's plan.

Minimum currents (a car stops below ~6 A) are met by post-processing, ``meet_minimums``: planned
values between 0 and the minimum are set to 0 and each car gets the energy it lost back where the
plan leaves headroom (its other slots, up to its maximum and every node's capacity; an empty slot
at the minimum, paid for by lowering its other slots); a car charging now that the LP gave less
than its minimum in the first slot stays at the minimum there where the cars beside it can give
way (``KEEP_CHARGING``: a pause costs). Lowering a current never breaks a capacity
and the top-up only uses what is left, so the plan stays feasible. Then ``improve_with_mip``
solves the minimum currents as a MIP started from that plan, for at most ``MIP_MAX_S`` within the
budget, on models of up to ``MIP_MAX_PAIRS`` pairs, and keeps its plan only when it delivers
``MIP_GAIN_WH`` more (``mip_s=0``: post-processing only). (A first version
re-solved the LP with the sub-minimum slots fixed at 0: that doubled the time, a warm start from
the first basis did not help at 1,000 sessions, and it planned no more energy, see
bench/README.md.)
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from balancer.plan_model import FAIR_SEGMENTS
from balancer.plan_types import FloatArray, IntArray, LpModel

__all__ = ["MIP_GAIN_WH", "MIP_MAX_PAIRS", "MIP_MAX_S", "improve_with_mip", "meet_minimums"]

MIP_MAX_PAIRS = 2_000
"""The minimum-current MIP runs on models of at most this many (session, block) pairs (about 20
cars present all day; the 40-charger example of ``balancer plan`` has 1,532): on 40-300 chargers
1 s of branch and bound found nothing better than the post-processing, which was within 0.4 % of
a 30 s MIP already (bench/README.md), so larger models are not given the CPU."""
MIP_MAX_S = 1.0
"""At most this long [s] for the MIP of one plan (and never past the plan's budget)."""
KEEP_CHARGING = True
"""Keep a charging car at its minimum in the first slot where the LP gave it some current
(``_keep_charging``); False: zeroed like any current below the minimum, as before. On the days of
``bench/quality_round2.py`` (seeds 1-10) it cut pauses per car x0.38-0.83 and moved energy by
-0.04..+0.25 points of the bound (bench/README.md, round 6)."""
MIP_GAIN_WH = 10.0
"""The MIP's plan replaces the post-processed one only when it delivers this much more [Wh]."""

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
            _seat_small_need(model, mip_x, headroom, cols, int(cols[0]) if x[cols[0]] > 0.0 else None)
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
    protected_hi = model.col_hi[g0 + n_s * k: g0 + n_s * (k + 1)]
    if np.any(energy_kwh > seg_hi.sum(axis=1) + protected_hi + 1e-9):
        return None
    protected = np.minimum(energy_kwh, protected_hi)
    left = energy_kwh - protected
    before = np.cumsum(seg_hi, axis=1) - seg_hi
    segs = np.clip(left[:, None] - before, 0.0, seg_hi)
    start = np.concatenate([x, model.load @ x, segs.ravel(), protected])
    return np.pad(start, (0, model.a.shape[1] - len(start)))  # columns added later (bids, keep-going): 0


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
    lp_x, x = x, np.where(x >= model.min_a - 1e-6, x, 0.0)
    # Columns are grouped by session and sorted by slot; one session's columns are in different
    # slots, so they share no node row and can be raised together.
    first = np.searchsorted(model.col_session, np.arange(n_s + 1))
    headroom = model.cap_a - model.load @ x
    slot_wh = np.zeros(n_s)
    np.maximum.at(slot_wh, model.col_session, model.min_a * model.wh_per_a)
    for s in np.flatnonzero((lp_wh > 1e-6) & (model.need_wh <= slot_wh + 1e-6)):
        cols = np.arange(first[s], first[s + 1])
        if not np.any(x[cols] > 0.0):
            # A small need (or a car's last part) in one slot at its minimum; in its first slot if
            # the LP gave it current there (the cars that give way get their energy back below).
            _seat_small_need(model, x, headroom, cols, int(cols[0]) if lp_x[cols[0]] > 1e-6 else None)
    if KEEP_CHARGING:
        _keep_charging(model, lp_x, x, headroom, first, np.asarray(lp_wh, dtype=np.float64))
    lost_wh = lp_wh - np.bincount(model.col_session, weights=x * model.wh_per_a, minlength=n_s)
    short = np.flatnonzero(lost_wh > 1e-6)
    hi = model.col_hi[: model.n_x]
    indptr, indices, share = model.load.indptr, model.load.indices, model.load.data
    for s in short[np.argsort(-model.weight[short], kind="stable")]:
        cols = np.arange(first[s], first[s + 1])
        seg = indptr[first[s]: first[s + 1] + 1]
        rows = indices[seg[0]: seg[-1]]
        row_share = share[seg[0]: seg[-1]]
        wh = model.wh_per_a[cols]
        mins = model.min_a[cols]
        room = np.minimum(hi[cols] - x[cols],
                          np.minimum.reduceat(headroom[rows] / row_share, seg[:-1] - seg[0]))
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
        np.subtract.at(headroom, rows, np.repeat(delta, np.diff(seg)) * row_share)
    return x


def _keep_charging(model: LpModel, lp_x: FloatArray, x: FloatArray, headroom: FloatArray, first: IntArray,
                   lp_wh: FloatArray) -> None:
    """A car charging now that the LP gave less than its minimum in the first slot (but some) stays
    at its minimum there where the cars beside it can give way (``_seat_small_need``), and what that
    adds comes off its latest slots: zeroing it was a pause that the keep-going bonus had argued
    against but could not see below the minimum (on the car park days of ``bench/quality_round2.py``
    two in five charging cars planned a pause were planned some current, zeroed here).
    The cars that gave way get their energy back in ``meet_minimums``'s top-up. In place."""
    by_row = None
    for c in model.keep_col:
        if x[c] > 0.0 or not 1e-6 < lp_x[c] < model.min_a[c] - 1e-6:
            continue
        s = int(model.col_session[c])
        cols = np.arange(first[s], first[s + 1])
        by_row = model.load.tocsr() if by_row is None else by_row
        _seat_small_need(model, x, headroom, np.array([c]), c, by_row)
        excess_wh = float(x[cols] @ model.wh_per_a[cols]) - lp_wh[s]
        ptr, idx, share = model.load.indptr, model.load.indices, model.load.data
        for whole in (False, True):  # its latest slots first: above their minimum, then whole
            for j in cols[::-1]:
                if excess_wh <= 1e-6:
                    break
                if j == c or x[j] <= 0.0:
                    continue
                cut = x[j] if whole else min(x[j] - model.min_a[j], excess_wh / model.wh_per_a[j])
                x[j] -= cut
                headroom[idx[ptr[j]: ptr[j + 1]]] += cut * share[ptr[j]: ptr[j + 1]]
                excess_wh -= cut * model.wh_per_a[j]


def _seat_small_need(model: LpModel, x: FloatArray, headroom: FloatArray, cols: IntArray,
                     prefer: int | None = None, by_row: sp.csr_matrix | None = None) -> None:
    """A need smaller than one slot at the minimum (a 0.5 kWh car: 1.035 kWh is one slot at 6 A on
    three phases) can only be met by a current the car takes for part of a slot: the LP plans it
    below the minimum and zeroing loses all of it, for the car's whole stay. Give it one slot at
    its minimum (it stops drawing when full, and the allocator hands out what it leaves): the
    earliest slot with room for it; else the earliest slot where the other cars on its nodes can
    give way without going below their own minimum (their spare current above it, largest first).
    ``prefer`` (the car's first slot, where the LP gave it current) is tried first: the LP chose to
    serve it now, and for a car charging now any other slot is a pause.
    Lowering never breaks a limit; the raise uses only what is then free. In place."""
    hi = model.col_hi[: model.n_x]
    ptr, idx, share = model.load.indptr, model.load.indices, model.load.data
    by_row = model.load.tocsr() if by_row is None else by_row  # (the caller's, when it seats many)
    need_a = model.min_a[cols]
    fits = [c for c, m in zip(cols, need_a, strict=True) if hi[c] >= m and
            np.all(headroom[idx[ptr[c]: ptr[c + 1]]] >= m * share[ptr[c]: ptr[c + 1]] - 1e-9)]
    candidates = fits[:1] if fits else [c for c in cols if hi[c] >= model.min_a[c]]
    if prefer is not None and hi[prefer] >= model.min_a[prefer]:
        candidates = [prefer, *(c for c in candidates if c != prefer)]
    for c in candidates:
        rows = idx[ptr[c]: ptr[c + 1]]
        trial_x, trial_room = x.copy(), headroom.copy()
        ok = True
        own = share[ptr[c]: ptr[c + 1]]
        for r, own_share in zip(rows, own, strict=True):
            # In load units of row r (a current times its share of the slot).
            deficit = model.min_a[c] * own_share - trial_room[r]
            lo, up = by_row.indptr[r], by_row.indptr[r + 1]
            others, other_share = by_row.indices[lo:up], by_row.data[lo:up]
            keep = (others != c) & (trial_x[others] > 0.0)
            others, other_share = others[keep], other_share[keep]
            spare = (trial_x[others] - model.min_a[others]) * other_share
            for o, o_share in zip(others[np.argsort(-spare, kind="stable")],
                                  other_share[np.argsort(-spare, kind="stable")], strict=True):
                if deficit <= 1e-9:
                    break
                give = min(float(trial_x[o] - model.min_a[o]), deficit / o_share)
                if give <= 1e-9:
                    break
                trial_x[o] -= give
                trial_room[idx[ptr[o]: ptr[o + 1]]] += give * share[ptr[o]: ptr[o + 1]]
                deficit -= give * o_share
            if deficit > 1e-9:
                ok = False
                break
        if ok:
            trial_x[c] = model.min_a[c]
            trial_room[rows] -= model.min_a[c] * own
            x[:] = trial_x
            headroom[:] = trial_room
            return
