"""The slot every part of the balancer counts in, and the capacity in force as one immutable value.

``SLOT_S`` is the one slot length (the grid operator's 15 minutes). A ``CapacityTimeline`` is what
``forecast`` makes of the forecast book for one site: the capacity in force per slot and phase
from ``start``, with the source of every slot, already capped by the connection (the grid limit is
applied here, once, by ``CapacityTimeline.of``). The controller takes it as an event
(``events.CapacityUpdated``) instead of asking for it; a timeline of the same ``revision`` as the
one it holds is the same forecasts read one slot later, not a change (no array is compared).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import numpy.typing as npt

__all__ = ["SLOT", "SLOT_S", "CapacityTimeline", "horizon_slots", "slot_floor"]

FloatArray = npt.NDArray[np.float64]

SLOT_S = 900
"""The slot length [s]: forecasts, plans, schedules and compliance reports all count in it."""
SLOT = timedelta(seconds=SLOT_S)


def slot_floor(t: datetime, slot_s: int = SLOT_S) -> datetime:
    """The start of the 15-minute slot holding ``t`` (aligned to the quarter hour, UTC)."""
    epoch = int(t.timestamp())
    return datetime.fromtimestamp(epoch - epoch % slot_s, tz=t.tzinfo)


def horizon_slots(hours: float) -> int:
    """How many slots ``hours`` hold (the planning horizon in slots)."""
    return int(hours * 3600) // SLOT_S


@dataclass(frozen=True)
class CapacityTimeline:
    """The capacity in force per slot from ``start``: ``capacity_a`` (n_slots, 3) [A per phase],
    read-only, and the source of each slot (``CapacitySource`` values). Build it with ``of``."""

    start: datetime
    capacity_a: FloatArray
    sources: tuple[str, ...]
    slot_s: int = SLOT_S
    revision: int = 0
    """Which state of the forecasts it was read from: equal revisions differ only in ``start``."""

    @classmethod
    def of(cls, start: datetime, capacity_a: FloatArray | Sequence[Sequence[float]], sources: Sequence[str], *,
           grid_limit_a: float, revision: int = 0, slot_s: int = SLOT_S) -> CapacityTimeline:
        """A timeline with unknown values (NaN) read as 0 A and every value within [0, grid limit]."""
        capacity = np.nan_to_num(np.array(capacity_a, dtype=np.float64).reshape(-1, 3), nan=0.0)
        capacity = np.clip(capacity, 0.0, grid_limit_a)
        capacity.flags.writeable = False
        if len(sources) != len(capacity):
            raise ValueError(f"{len(sources)} sources for {len(capacity)} slots")
        return cls(start, capacity, tuple(sources), slot_s, revision)

    def __len__(self) -> int:
        return len(self.capacity_a)

    def slot_of(self, t: datetime) -> int:
        """The index of the slot holding ``t`` (negative before ``start``, >= len after the end)."""
        return int((t - self.start).total_seconds() // self.slot_s)

    def at(self, t: datetime) -> tuple[FloatArray, str] | None:
        """The capacity in force at ``t`` (3,) [A] and its source, or None outside the timeline."""
        k = self.slot_of(t)
        if 0 <= k < len(self.capacity_a):
            return self.capacity_a[k].copy(), self.sources[k]
        return None

    def window(self, start: datetime, n_slots: int, fill_a: float) -> FloatArray:
        """(n_slots, 3) capacity from ``start`` [A]; slots the timeline does not cover get ``fill_a``."""
        out = np.full((n_slots, 3), fill_a)
        offset = self.slot_of(start)
        lo, hi = max(0, -offset), min(n_slots, len(self.capacity_a) - offset)
        if lo < hi:
            out[lo:hi] = self.capacity_a[offset + lo:offset + hi]
        return out
