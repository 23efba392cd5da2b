"""The 24 h planner: a linear program over 15-minute slots, built as sparse matrices.

Variables ``x[s, t]``: per-phase current of session ``s`` in slot ``t`` [A], only where the car is
present (a partly covered slot counts the car's energy with the covered fraction, and in the first
slot its current with the share of the slot it takes, ``load_share``). Constraints per
slot, node and phase: the sessions below the node that load the phase draw at most its capacity
(node 0: the capacity in force from the caller; circuits: their fuse). Per session: at most the
car/charger maximum, and never more energy than needed.

The objective and the model: ``balancer.plan_model``; minimum currents: ``balancer.plan_minimums``;
the data types: ``balancer.plan_types``. This module solves and returns the plan.

Routes: ``highs-simplex`` (default; HiGHS dual simplex on the matrices, which measured faster
than interior point on this LP at every size in bench/README.md), ``highs-ipm`` (same matrices,
interior point with crossover), ``pulp-highs`` and ``pulp-cbc`` (the same LP
built with pulp, the readable reference and the CBC fallback, see ``balancer.plan_pulp``).
Every failure comes back as a ``SolveOutcome`` status, never an exception.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime, timedelta

import numpy as np
import numpy.typing as npt

from balancer.allocate import node_load_a
from balancer.plan_expected import add_expected
from balancer.plan_minimums import MIP_MAX_PAIRS, MIP_MAX_S, improve_with_mip, meet_minimums
from balancer.plan_model import FINE_SLOTS, build_model, slot_blocks
from balancer.plan_types import FloatArray, LpModel, Plan, PlanSession, SolveOutcome
from balancer.plan_v2x import add_discharge, discharge_rows
from balancer.rounding import floor_to
from balancer.timeline import SLOT_S
from balancer.topology import Topology

__all__ = [
    "FINE_SLOTS",
    "LpModel",
    "Plan",
    "PlanSession",
    "SolveOutcome",
    "build_model",
    "fit_edge_slots",
    "improve_with_mip",
    "meet_minimums",
    "plan",
    "slot_blocks",
    "slot_times",
]


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


def plan(topology: Topology, capacity_a: FloatArray, sessions: Sequence[PlanSession], start: datetime,
         *, slot_s: int = SLOT_S, budget_s: float = 2.0, solver: str = "highs-simplex",
         voltage_v: float | None = None, fine_slots: int | None = FINE_SLOTS,
         mip_s: float | None = None, deficit_a: FloatArray | None = None,
         export_room_a: FloatArray | None = None, expected_a: FloatArray | None = None) -> SolveOutcome:
    """Plan ``len(capacity_a)`` slots from ``start`` for ``sessions``; never raises on solver trouble.

    capacity_a : (n_slots, 3) [A] connection capacity in force per slot and phase (NaN counts as 0)
    fine_slots : slots decided one by one in a large model before hourly decisions (None: all)
    mip_s : at most this long for the minimum-current MIP (``improve_with_mip``; None:
        ``MIP_MAX_S``; 0: post-processing only), never past ``budget_s``
    deficit_a, export_room_a : (n_slots, 3) [A] V2X: how far non-EV load exceeds ``capacity_a``,
        and how far discharge may push the connection below zero (``balancer.plan_v2x``); a
        discharging car's limit in the plan is negative
    expected_a : (n_slots, 3) [A] the load of cars expected to arrive, bidding for the capacity of
        the slots after the first at less than a present car's energy (``balancer.plan_expected``)
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
    if expected_a is not None and model.n_x:
        volts = topology.site.voltage_v if voltage_v is None else voltage_v
        model = add_expected(model, expected_a, volts, slot_s)
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
    limit = floor_to(limit, gran)
    mins = topology.min_current_a[:, None]
    limit = np.where(limit >= mins - 1e-9, limit, 0.0)
    if model.fine_share is not None and np.any(model.fine_share < 1.0 - 1e-9):
        fit_edge_slots(topology, np.asarray(capacity_a, dtype=np.float64), limit, model, charger_of_session)
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


def fit_edge_slots(topology: Topology, capacity_a: FloatArray, limit: FloatArray, model: LpModel,
                   charger_of_session: npt.NDArray[np.int64]) -> None:
    """Keep every slot's planned limits within every node's capacity at once (in place).

    The LP counts a car present for part of a slot with the share of the slot it takes
    (``balancer.plan_model.load_share``), so in such a slot the limits of a car leaving at 05:35
    and of a car staying can add up to more than the capacity: together they only fit one after
    the other. A plan's limits are per slot, so there the staying cars' limits (cars there the
    whole slot, which the allocator raises again once the other left) are lowered until the slot
    fits, largest first, never below their minimum (else to 0); the car at the slot's edge keeps
    its limit, so the allocator, which serves planned cars first, gives it the capacity while it is
    there. Only lowers limits. limit : (n_chargers, n_slots) [A]
    """
    assert model.fine_share is not None and model.session_mask is not None
    session = model.col_session[model.fine_col]
    capacity = np.maximum(np.nan_to_num(capacity_a, nan=0.0), 0.0)
    gran = topology.granularity_a
    for t in np.unique(model.fine_slot[model.fine_share < 1.0 - 1e-9]):
        here = model.fine_slot == t
        chargers = charger_of_session[session[here]]
        mask = np.zeros((topology.n_chargers, 3), dtype=bool)
        mask[chargers] |= model.session_mask[session[here]]
        lowest = topology.min_current_a.copy()
        lowest[chargers] = np.maximum(lowest[chargers], model.min_a[model.fine_col[here]])
        edge = np.zeros(topology.n_chargers, dtype=bool)
        edge[chargers[model.fine_share[here] < 1.0 - 1e-9]] = True
        cap = np.repeat(topology.node_limit_a[:, None], 3, axis=1).astype(np.float64)
        cap[0] = np.minimum(cap[0], capacity[t])
        for _ in range(2 * topology.n_chargers + 1):
            over = node_load_a(topology, limit[:, t], mask) - cap
            node, phase = np.unravel_index(int(np.argmax(over)), over.shape)
            excess = float(over[node, phase])
            if excess <= 1e-9:
                break
            under = np.flatnonzero((topology.ancestors[node].toarray().ravel() > 0) & mask[:, phase]
                                   & (limit[:, t] > 0))
            # Staying cars down to their minimum, then the edge cars, then staying cars to 0.
            for group, keep_min in ((~edge, True), (edge, False), (~edge, False)):
                for c in (u for u in under[np.argsort(-limit[under, t], kind="stable")] if group[u]):
                    if excess <= 1e-9:
                        break
                    lowered = np.floor((limit[c, t] - excess) / gran[c] - 1e-9) * gran[c]
                    if lowered < lowest[c] - 1e-9:
                        lowered = lowest[c] if keep_min else 0.0
                    excess -= max(limit[c, t] - lowered, 0.0)
                    limit[c, t] = min(lowered, limit[c, t])


def slot_times(start: datetime, n_slots: int, slot_s: int = SLOT_S) -> list[datetime]:
    """Start time of every slot."""
    return [start + timedelta(seconds=k * slot_s) for k in range(n_slots)]
