"""Non-EV load forecast for the planner, from the site's own meter history (DESIGN 3.8).

History is one value per 15-minute slot: the mean non-EV load per phase over that slot [A]. The
forecast for a slot is a high quantile (``quantile``, 0.9 by default) of the history at the same
weekday and time of day: a plan must not count on a quiet building. Where the history holds fewer
than ``min_samples`` such slots, the last value measured is used, or ``fallback_a`` without one.
Pure: times come in as aware datetimes, nothing is read or written here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

import numpy as np
import numpy.typing as npt

from balancer.timeline import SLOT_S

__all__ = ["SLOTS_PER_WEEK", "SLOT_S", "forecast_non_ev", "week_slot"]

FloatArray = npt.NDArray[np.float64]

SLOTS_PER_DAY = 86_400 // SLOT_S
SLOTS_PER_WEEK = 7 * SLOTS_PER_DAY


def week_slot(epoch_s: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Index of the 15-minute slot in the UTC week (Monday 00:00 = 0), shape like ``epoch_s``."""
    # 1970-01-01 was a Thursday: day 3 of a Monday-based week.
    slots = epoch_s // SLOT_S
    return np.asarray((slots + 3 * SLOTS_PER_DAY) % SLOTS_PER_WEEK, dtype=np.int64)


def forecast_non_ev(history: Mapping[datetime, Sequence[float]], start: datetime, n_slots: int, *,
                    last_a: Sequence[float] | None, fallback_a: Sequence[float],
                    quantile: float = 0.9, min_samples: int = 2) -> FloatArray:
    """Non-EV load per slot from ``start`` (n_slots, 3) [A].

    history : slot start -> mean non-EV load per phase over that slot [A]
    last_a : the last non-EV load measured (3,) [A], None when the meter was never read
    fallback_a : what is assumed with neither history nor a last value (3,) [A]
    """
    default = np.asarray(last_a if last_a is not None else fallback_a, dtype=np.float64)
    out = np.repeat(default[None, :], n_slots, axis=0)
    if not history or n_slots <= 0:
        return out
    times = np.array([int(t.timestamp()) for t in history], dtype=np.int64)
    values = np.array([list(v) for v in history.values()], dtype=np.float64).reshape(-1, 3)
    keys = week_slot(times)
    order = np.argsort(keys, kind="stable")
    keys, values = keys[order], values[order]
    bounds = np.searchsorted(keys, np.arange(SLOTS_PER_WEEK + 1))
    first = int(start.timestamp()) // SLOT_S * SLOT_S
    wanted = week_slot(first + SLOT_S * np.arange(n_slots, dtype=np.int64))
    for key in np.unique(wanted):
        lo, hi = bounds[key], bounds[key + 1]
        if hi - lo < min_samples:
            continue
        sample = values[lo:hi]
        sample = sample[np.all(np.isfinite(sample), axis=1)]
        if len(sample) < min_samples:
            continue
        out[wanted == key] = np.quantile(sample, quantile, axis=0, method="higher")
    return out
