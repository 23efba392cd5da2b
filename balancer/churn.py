"""Fewer pauses and resumes: a car that starts charging keeps its minimum for ``min_charge_s``, a
car the balancer paused stays paused for ``min_pause_s`` (issue 17 item 5).

Every pause costs: many cars (Renault Zoe, Dacia Spring, Fiat 500e are known cases) fall asleep
after one and do not resume, and every change is a profile push. The allocator alone re-decides
every step: rotating turns, a plan that moves a car from one slot to the next, a measured draw
that frees a few amperes. ``ChurnGuard`` remembers, per charger, since when the limit has been
on (> 0) or off, and turns that into the allocator's inputs:

- a car that has charged for less than ``min_charge_s`` *cannot pause* this step: the allocator
  reserves its minimum first (the same rule as for chargers configured ``can_pause = false``);
- a car the balancer paused less than ``min_pause_s`` ago gets *no current* this step, so the
  capacity goes to the cars that are charging.

Safety first: the holds only change whom the allocator serves, never a capacity. When the held
minimums do not fit (the capacity fell), ``allocate_holding`` allocates again without the holds:
a fuse comes before a car's rest. A car's first start is never delayed (it was not paused by
us), and a car that leaves or is full is forgotten.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import numpy.typing as npt

from balancer.allocate import Allocation, AllocationRequest, allocate

__all__ = ["ChurnGuard", "allocate_holding"]

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


@dataclass
class ChurnGuard:
    """Per-charger on/off memory; ``min_pause_s`` / ``min_charge_s`` 0 disable either rule."""

    n: int
    min_pause_s: float = 0.0
    min_charge_s: float = 0.0
    on: BoolArray = field(init=False)
    since_s: FloatArray = field(init=False)
    paused_by_us: BoolArray = field(init=False)

    def __post_init__(self) -> None:
        self.on = np.zeros(self.n, dtype=bool)
        self.since_s = np.full(self.n, -np.inf)
        self.paused_by_us = np.zeros(self.n, dtype=bool)

    def holds(self, now_s: float, wants: BoolArray) -> tuple[BoolArray, BoolArray]:
        """(keep running, keep paused): (n,) bool for this step, among the chargers that want current."""
        age = now_s - self.since_s
        keep_running = wants & self.on & (age < self.min_charge_s)
        keep_paused = wants & ~self.on & self.paused_by_us & (age < self.min_pause_s)
        return keep_running, keep_paused

    def record(self, now_s: float, limit_a: FloatArray, wants: BoolArray) -> None:
        """The limits sent at ``now_s``; chargers that no longer want current start afresh."""
        on = np.asarray(limit_a, dtype=np.float64) > 0.0
        changed = on != self.on
        self.paused_by_us = np.where(changed & ~on, wants, self.paused_by_us & ~on)
        self.since_s = np.where(changed, now_s, self.since_s)
        self.on = on & wants
        gone = ~wants
        self.since_s[gone] = -np.inf
        self.paused_by_us[gone] = False


def allocate_holding(request: AllocationRequest, guard: ChurnGuard | None, now_s: float) -> Allocation:
    """``allocate`` with the guard's holds (module docstring); without the holds if they do not fit.

    The guard then records the limits given.
    """
    wants = np.asarray(request.max_a, dtype=np.float64) > 0
    if guard is None or guard.n != len(wants):
        return allocate(request)
    keep_running, keep_paused = guard.holds(now_s, wants)
    allocation = None
    can_pause = np.ones(len(wants), dtype=bool) if request.can_pause is None else \
        np.asarray(request.can_pause, dtype=bool)
    keep_paused &= can_pause
    if keep_running.any() or keep_paused.any():
        held = replace(request, max_a=np.where(keep_paused, 0.0, request.max_a),
                       can_pause=can_pause & ~keep_running)
        allocation = allocate(held)
        if allocation.status == "infeasible":
            allocation = None
    if allocation is None:
        allocation = allocate(request)
    guard.record(now_s, allocation.limit_a, wants)
    return allocation
