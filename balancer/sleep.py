"""Cars that fall asleep: detected, counted, and their capacity given to others (issue 17 item 5).

Many cars (Renault Zoe, Dacia Spring, Fiat 500e are known cases) go to sleep after a pause and do
not resume when the limit rises again. Such a car holds at least its minimum current that no one
uses: ``not_drawing`` frees only what is above the minimum. ``SleepWatch`` remembers, per charger,
when its limit last rose to the minimum or more; a car that has not drawn within
``car_asleep_after_s`` of that, while the charger says it is not drawing (a fresh meter value
below ``IDLE_DRAW_A``, or the status ``SuspendedEV``), is *asleep*: counted, reported with the
reason ``car_asleep``, left out of the plan and given 0 A, so its capacity goes to the others.

It is awake again as soon as it draws, or the charger reports ``SuspendedEVSE`` (the car asks for
current; at 0 A its meter reads 0 either way), or ``Charging`` without a fresh meter value. A car
at 0 A cannot show that it draws, so every ``car_wake_retry_s`` it is offered its minimum again,
if that fits, for another
``car_asleep_after_s``; if it still does not draw it sleeps on (not counted again). A car without
a fresh meter value or a status saying so is never taken for asleep: nothing is freed on a guess.
Safety: a car is only ever given less; what it may draw is counted until its limit is 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

__all__ = ["SleepWatch"]

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
IntArray = npt.NDArray[np.int64]


@dataclass
class SleepWatch:
    """Per-charger sleep state; ``after_s`` 0 turns detection off."""

    n: int
    after_s: float = 300.0
    retry_s: float = 1800.0
    raised_at: FloatArray = field(init=False)
    """When the limit last rose to at least the minimum with no draw seen since [epoch s]; -inf: none."""
    asleep: BoolArray = field(init=False)
    asleep_since: FloatArray = field(init=False)
    """When it fell asleep, or was last offered its minimum again while asleep [epoch s]."""
    detections: IntArray = field(init=False)
    """How often each charger's car was found asleep in its session."""
    total: int = 0
    """Cars found asleep since the start, all chargers."""

    def __post_init__(self) -> None:
        self.raised_at = np.full(self.n, -np.inf)
        self.asleep = np.zeros(self.n, dtype=bool)
        self.asleep_since = np.full(self.n, -np.inf)
        self.detections = np.zeros(self.n, dtype=np.int64)

    def observe(self, now_s: float, wants: BoolArray, drawing: BoolArray, idle: BoolArray,
                ready: BoolArray) -> None:
        """What the chargers say now, before the allocation: ``wants`` in a transaction and taking
        current; ``drawing`` a fresh meter value shows it draws; ``idle`` a fresh meter value or the
        status shows it does not; ``ready`` the status says the car asks for current."""
        if self.after_s <= 0:
            return
        awake = drawing | (ready & ~idle)
        self.asleep &= ~awake
        self.raised_at[awake] = -np.inf
        overdue = wants & idle & np.isfinite(self.raised_at) & (now_s - self.raised_at >= self.after_s)
        found = overdue & ~self.asleep
        self.asleep |= found
        self.detections += found
        self.total += int(found.sum())
        self.asleep_since[overdue] = now_s  # found now, or a wake-up offer that went unanswered
        self.raised_at[overdue] = -np.inf
        gone = ~wants
        self.asleep[gone] = False
        self.raised_at[gone] = -np.inf
        self.detections[gone] = 0

    def sleeping(self, now_s: float) -> BoolArray:
        """Asleep and not due for a wake-up offer: planned at nothing and given 0 A this step."""
        if self.after_s <= 0:
            return np.zeros(self.n, dtype=bool)
        return self.asleep & (now_s - self.asleep_since < self.retry_s)

    def record(self, now_s: float, before_a: FloatArray, limit_a: FloatArray, min_a: FloatArray) -> None:
        """The limits sent now: one that rose to at least the minimum starts the wait for a draw."""
        rose = (limit_a >= min_a - 1e-9) & (limit_a > 0) & (limit_a > before_a + 1e-9)
        self.raised_at = np.where(rose & ~np.isfinite(self.raised_at), now_s, self.raised_at)
        self.raised_at[limit_a <= 0] = -np.inf
