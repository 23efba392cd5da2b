"""Charging strategies compared in ``bench/quality.py``, all on the same simulated days.

Each strategy gets the cars present now (what the charger knows: arrival, need, departure when
known) and returns a limit per charger. Baselines respect the same fuses (except "uncontrolled"),
so the comparison is about decisions, not about ignoring limits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
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
    drew_a: np.ndarray | None = None        # (n,) what each car drew in the step before (its meter)
    asks: np.ndarray | None = None          # (n,) bool: held at 0 A, the car asks for current (SuspendedEVSE)


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
"""How the arrival forecast reaches the plan: ``bid`` (``plan(expected_a=...)``; a checkout
without it reserves) or ``reserve`` (the capacity less ``RESERVE_SHARE`` of it, as before)."""


def lp_plus_allocator(p: Present, guard: Any = None, history: Any = None, history_days: float = 1.0,
                      watch: Any = None, last_a: np.ndarray | None = None) -> np.ndarray:
    """Online: plan the cars present now over the rest of the day, allocate with the plan's target
    (through the controller's ``min_pause_s`` / ``min_charge_s`` guard when one is given; with the
    arrivals expected from ``history``, ``forecast.arrivals``, when given; with the controller's
    sleep detection, ``balancer.sleep``, fed what the chargers report, when ``watch`` is given)."""
    topo = p.topology
    slot_start = p.now
    before = None
    if watch is not None and p.drew_a is not None:
        p, before = _watch_sleep(p, watch)
    sessions = []
    for i in np.flatnonzero(p.here & (p.remaining_wh > 0)):
        extra: dict[str, Any] = {}
        if p.requested_wh is not None and "requested_wh" in PlanSession.__dataclass_fields__:
            extra = {"requested_wh": float(p.requested_wh[i])}  # (a baseline checkout may not know it)
        if guard is not None and "charging" in PlanSession.__dataclass_fields__:
            extra["charging"] = bool(guard.on[i])  # its limit was above 0 in the step before
            if "limit_now_a" in PlanSession.__dataclass_fields__ and guard.on[i] and last_a is not None:
                extra["limit_now_a"] = float(last_a[i])  # (the limit it holds, as the controller's)
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
            from forecast.arrivals import BID_SCALE, RESERVE_SHARE, expected_load_a

            expected = expected_load_a(history, p.now, slot_start, len(capacity), days=history_days)
            if FORECAST_AS == "bid" and "expected_a" in plan.__code__.co_varnames:
                mip["expected_a"] = BID_SCALE * expected  # (as balancer.planning does)
            else:
                capacity = capacity.copy()  # the slot of now: the cars here
                capacity[1:] = np.maximum(capacity[1:] - RESERVE_SHARE * expected[1:], 0.0)
        outcome = plan(topo, capacity, sessions, slot_start, budget_s=5.0, **mip)
        if outcome.plan is not None:
            target = np.where(p.here, outcome.plan.first_slot(), np.nan)
    if guard is not None:
        limit = np.asarray(allocate_holding(_request(p, target), guard, p.now.timestamp()).limit_a)
    else:
        limit = allocate(_request(p, target)).limit_a
    if before is not None:
        watch.sleep.record(p.now.timestamp(), before, limit, topo.min_current_a)
        watch.last_a = limit
    return limit


def _watch_sleep(p: Present, watch: Any) -> tuple[Present, np.ndarray]:
    """What the controller's ``_watch_sleep`` does with the chargers' reports: the cars found asleep
    leave the plan and get 0 A (their capacity goes to the others) until they draw or ask again."""
    from balancer.charger_state import IDLE_DRAW_A

    now_s = p.now.timestamp()
    assert p.drew_a is not None and p.asks is not None
    wants = p.here & (p.remaining_wh > 0) & (p.max_a > 0)
    drawing = p.drew_a > IDLE_DRAW_A
    watch.sleep.observe(now_s, wants, drawing, wants & ~drawing & ~p.asks, p.asks)
    sleeping = watch.sleep.sleeping(now_s)
    return replace(p, here=p.here & ~sleeping), watch.last_a


@dataclass
class Watched:
    """The controller's ``SleepWatch`` and the limits given in the step before."""

    sleep: Any
    last_a: np.ndarray


def make_lp_plus_allocator(min_pause_s: float | None = None, min_charge_s: float | None = None,
                           history: Any = None, history_days: float = 1.0,
                           car_asleep_after_s: float | None = None) -> Callable[[Present], np.ndarray]:
    """``lp_plus_allocator`` with a churn guard and sleep detection of its own (defaults: the
    controller's; ``car_asleep_after_s`` 0: no detection); a balancer without ``balancer.churn``
    or ``balancer.sleep`` (an older checkout measured as the baseline) gets none."""
    from balancer.model import ControlSettings

    defaults = ControlSettings()
    sleep_after_s = getattr(defaults, "car_asleep_after_s", None) if car_asleep_after_s is None \
        else car_asleep_after_s
    sleep_after_s = sleep_after_s or None
    if not hasattr(defaults, "min_pause_s"):
        return lambda p: lp_plus_allocator(p, None, history, history_days)
    from balancer.churn import ChurnGuard
    pause = defaults.min_pause_s if min_pause_s is None else min_pause_s
    charge = defaults.min_charge_s if min_charge_s is None else min_charge_s
    guards: dict[int, ChurnGuard] = {}
    watched: dict[int, Watched] = {}
    held: dict[int, np.ndarray] = {}
    stats = {"detected": 0}

    def run(p: Present) -> np.ndarray:
        n = p.topology.n_chargers
        guard = guards.setdefault(0, ChurnGuard(n, pause, charge))
        watch = None
        if sleep_after_s is not None:
            from balancer.sleep import SleepWatch

            watch = watched.setdefault(0, Watched(SleepWatch(n, sleep_after_s, defaults.car_wake_retry_s),
                                                  np.zeros(n)))
        limit = lp_plus_allocator(p, guard, history, history_days, watch, held.setdefault(0, np.zeros(n)))
        held[0] = limit
        stats["detected"] = watch.sleep.total if watch is not None else 0
        return limit

    run.stats = stats  # type: ignore[attr-defined]
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
