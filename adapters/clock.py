"""Clocks for the service: the real UTC clock, and an accelerated one for the demo."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

__all__ = ["AcceleratedClock", "Clock", "utc_now", "wall_seconds"]

Clock = Callable[[], datetime]
"""What reads the time (aware UTC): ``utc_now``, an ``AcceleratedClock``, a test's fake clock."""


def utc_now() -> datetime:
    """The current time, aware UTC."""
    return datetime.now(UTC)


class AcceleratedClock:
    """Simulated time that runs ``speed`` times faster than the wall clock from ``start``.

    Call the instance to read it; the demo hands the same clock to the service and the simulators
    so absolute times in forecasts and charging profiles agree on both sides.
    """

    def __init__(self, start: datetime, speed: float) -> None:
        self.start = start
        self.speed = speed
        self._t0 = time.monotonic()

    def __call__(self) -> datetime:
        return self.start + timedelta(seconds=(time.monotonic() - self._t0) * self.speed)

    def wall_seconds(self, sim_seconds: float) -> float:
        """Wall-clock seconds that ``sim_seconds`` of simulated time take."""
        return sim_seconds / self.speed


def wall_seconds(clock: Clock, seconds: float) -> float:
    """Wall-clock seconds that ``seconds`` of ``clock``'s time take (fewer on an ``AcceleratedClock``)."""
    return clock.wall_seconds(seconds) if isinstance(clock, AcceleratedClock) else seconds
