"""Charging strategies compared in ``bench/quality.py``, all on the same simulated days.

Each strategy gets the cars present now (what the charger knows: arrival, need, departure when
known) and returns a limit per charger. Baselines respect the same fuses (except "uncontrolled"),
so the comparison is about decisions, not about ignoring limits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from balancer.allocate import AllocationRequest, allocate
from balancer.plan import PlanSession, plan
from balancer.topology import Topology, phase_mask

__all__ = ["FACTORIES", "STRATEGIES", "Present", "make_lp_plus_allocator"]


@dataclass
class Present:
    """The cars plugged in at ``now``: per charger index, NaN/0 where none."""

    now: datetime
    topology: Topology
    capacity_a: np.ndarray        # (3,) connection capacity now
    capacity_ahead: np.ndarray    # (n_slots_left, 3)
    here: np.ndarray              # (n,) bool
    max_a: np.ndarray             # (n,)
    phases: np.ndarray            # (n,)
    remaining_wh: np.ndarray      # (n,)
    arrival_s: np.ndarray         # (n,) seconds since start
    departure: list[datetime | None]
    laxity_s: np.ndarray          # (n,)
    requested_wh: np.ndarray | None = None  # (n,) each car's whole request


def _node_capacity(p: Present) -> np.ndarray:
    cap = np.repeat(p.topology.node_limit_a[:, None], 3, axis=1).astype(float)
    cap[0] = np.minimum(cap[0], p.capacity_a)
    return cap


def _greedy(p: Present, order: np.ndarray) -> np.ndarray:
    """Fill cars in ``order`` up to their max within the residual of every node above (min or nothing)."""
    topo = p.topology
    residual = _node_capacity(p)
    mask = phase_mask(topo, p.phases)
    limit = np.zeros(topo.n_chargers)
    for i in order:
        if not p.here[i] or p.max_a[i] <= 0:
            continue
        nodes = topo.ancestors[:, i].nonzero()[0]
        room = residual[np.ix_(nodes, np.flatnonzero(mask[i]))].min()
        value = np.floor(min(p.max_a[i], room) * 10) / 10
        if value >= topo.min_current_a[i]:
            limit[i] = value
            residual[np.ix_(nodes, np.flatnonzero(mask[i]))] -= value
    return limit


def uncontrolled(p: Present) -> np.ndarray:
    return np.where(p.here, p.max_a, 0.0)


def equal_share(p: Present) -> np.ndarray:
    """A static split: each car gets the tightest node capacity divided by the cars below it."""
    topo = p.topology
    mask = phase_mask(topo, p.phases) & p.here[:, None]
    count = np.asarray(topo.ancestors @ mask.astype(float))
    share = np.where(count > 0, _node_capacity(p) / np.maximum(count, 1), np.inf)
    limit = np.zeros(topo.n_chargers)
    for i in np.flatnonzero(p.here):
        nodes = topo.ancestors[:, i].nonzero()[0]
        value = min(p.max_a[i], share[np.ix_(nodes, np.flatnonzero(mask[i]))].min())
        value = np.floor(value * 10) / 10
        limit[i] = value if value >= topo.min_current_a[i] else 0.0
    return limit


def fcfs(p: Present) -> np.ndarray:
    return _greedy(p, np.argsort(p.arrival_s, kind="stable"))


def edf(p: Present) -> np.ndarray:
    deadline = np.array([d.timestamp() if d else np.inf for d in p.departure])
    return _greedy(p, np.argsort(deadline, kind="stable"))


def llf(p: Present) -> np.ndarray:
    return _greedy(p, np.argsort(p.laxity_s, kind="stable"))


def _request(p: Present, target: np.ndarray | None) -> AllocationRequest:
    topo = p.topology
    return AllocationRequest(topology=topo, capacity_a=_node_capacity(p), phase_mask=phase_mask(topo, p.phases),
                             min_a=topo.min_current_a, max_a=np.where(p.here, p.max_a, 0.0), target_a=target,
                             urgency=-p.laxity_s, now_s=p.now.timestamp(), rotation_period_s=900.0)


def allocator_alone(p: Present) -> np.ndarray:
    return allocate(_request(p, None)).limit_a


FORECAST_AS = "bid"
"""How the arrival forecast reaches the plan: ``bid`` (``plan(expected_a=...)``) or ``reserve``
(the capacity less ``RESERVE_SHARE`` of it, as before)."""


def lp_plus_allocator(p: Present, guard: Any = None, history: Any = None, history_days: float = 1.0) -> np.ndarray:
    """Online: plan the cars present now over the rest of the day, allocate with the plan's target
    (through the controller's ``min_pause_s`` / ``min_charge_s`` guard when one is given; with the
    capacity ahead less the arrivals expected from ``history``, ``forecast.arrivals``, when given)."""
    topo = p.topology
    slot_start = p.now
    extra: dict[str, Any] = {}
    sessions = []
    for i in np.flatnonzero(p.here & (p.remaining_wh > 0)):
        if p.requested_wh is not None and "requested_wh" in PlanSession.__dataclass_fields__:
            extra = {"requested_wh": float(p.requested_wh[i])}  # (a baseline checkout may not know it)
        sessions.append(PlanSession(topo.charger_ids[i], p.now, p.departure[i] or p.now + timedelta(hours=24),
                                    float(p.remaining_wh[i]), max_current_a=float(p.max_a[i]),
                                    phases=int(p.phases[i]), **extra))
    target = None
    if sessions:
        # Without the minimum-current MIP (``mip_s`` 0, where the checkout knows it): 288 replans a
        # day at up to MIP_MAX_S each; bench/quality_mip.py measures what it adds.
        mip = {"mip_s": 0.0} if "mip_s" in plan.__code__.co_varnames else {}
        capacity = p.capacity_ahead
        if history:
            from forecast.arrivals import RESERVE_SHARE, expected_load_a

            expected = expected_load_a(history, p.now, slot_start, len(capacity), days=history_days)
            if FORECAST_AS == "bid":
                mip["expected_a"] = expected
            else:
                capacity = capacity.copy()  # the slot of now: the cars here
                capacity[1:] = np.maximum(capacity[1:] - RESERVE_SHARE * expected[1:], 0.0)
        outcome = plan(topo, capacity, sessions, slot_start, budget_s=5.0, **mip)
        if outcome.plan is not None:
            target = np.where(p.here, outcome.plan.first_slot(), np.nan)
    if guard is not None:
        return np.asarray(allocate_holding(_request(p, target), guard, p.now.timestamp()).limit_a)
    return allocate(_request(p, target)).limit_a


def make_lp_plus_allocator(min_pause_s: float | None = None, min_charge_s: float | None = None,
                           history: Any = None, history_days: float = 1.0) -> Callable[[Present], np.ndarray]:
    """``lp_plus_allocator`` with a churn guard of its own (defaults: the controller's); a
    balancer without ``balancer.churn`` (an older checkout measured as the baseline) gets none."""
    from balancer.model import ControlSettings

    defaults = ControlSettings()
    if not hasattr(defaults, "min_pause_s"):
        return lambda p: lp_plus_allocator(p, None, history, history_days)
    from balancer.churn import ChurnGuard
    pause = defaults.min_pause_s if min_pause_s is None else min_pause_s
    charge = defaults.min_charge_s if min_charge_s is None else min_charge_s
    guards: dict[int, ChurnGuard] = {}

    def run(p: Present) -> np.ndarray:
        guard = guards.setdefault(0, ChurnGuard(p.topology.n_chargers, pause, charge))
        return lp_plus_allocator(p, guard, history, history_days)

    return run


def allocate_holding(request: AllocationRequest, guard: Any, now_s: float) -> Any:
    from balancer.churn import allocate_holding as holding

    return holding(request, guard, now_s)


STRATEGIES: dict[str, Callable[[Present], np.ndarray]] = {
    "uncontrolled": uncontrolled,
    "equal share": equal_share,
    "first-come-first-served": fcfs,
    "earliest deadline first": edf,
    "least laxity first": llf,
    "our allocator alone": allocator_alone,
    "our LP + allocator": lp_plus_allocator,
}

FACTORIES: dict[str, Callable[[], Callable[[Present], np.ndarray]]] = {
    "our LP + allocator": make_lp_plus_allocator,
}
"""Strategies with state across the steps of one day: a fresh one per simulated day."""
