"""Forecast blocks to per-phase amperes per 15-minute slot.

Units (PROTOCOLS.md A.7): ``A`` is per phase; ``W``/``KW`` is the total over the phases the block
names (ALL: split over three phases; ONE/TWO/THREE: that phase alone); ``WH``/``KWH`` is energy
over the block, turned into its average power. ``UNKNOWN`` phase is read conservatively: an
ampere value limits every phase, a power value is split over three phases (so the total holds).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import numpy as np
import numpy.typing as npt

from forecast.blocks import ForecastedBlock

__all__ = ["block_amps", "blocks_to_slots"]

FloatArray = npt.NDArray[np.float64]

_PHASE_INDEX = {"ONE": 0, "TWO": 1, "THREE": 2}


def block_amps(block: ForecastedBlock, voltage_v: float) -> FloatArray:
    """The per-phase current a block allows, shape (3,) [A]; NaN on phases it does not limit."""
    out = np.full(3, np.nan)
    hours = (block.end - block.start).total_seconds() / 3600.0
    if block.unit == "A":
        if block.phase in _PHASE_INDEX:
            out[_PHASE_INDEX[block.phase]] = block.capacity
        else:
            out[:] = block.capacity
        return out
    scale = {"W": 1.0, "KW": 1000.0, "WH": 1.0 / hours, "KWH": 1000.0 / hours}[block.unit]
    power_w = block.capacity * scale
    if block.phase in _PHASE_INDEX:
        out[_PHASE_INDEX[block.phase]] = power_w / voltage_v
    else:
        out[:] = power_w / (3.0 * voltage_v)
    return out


def blocks_to_slots(blocks: Sequence[ForecastedBlock], start: datetime, n_slots: int, voltage_v: float,
                    slot_s: int = 900) -> tuple[FloatArray, FloatArray]:
    """Per-slot capacity and coverage.

    returns : capacity_a, shape (n_slots, 3) [A], the lowest of every block touching the slot
        (NaN where no block does, or where the blocks leave that phase free);
        coverage, shape (n_slots,) in [0, 1], the share of the slot that blocks cover.
    A slot only partly covered keeps the lowest touching block; the caller takes the lower of it
    and the next fallback for the uncovered part (conservative).
    """
    capacity = np.full((n_slots, 3), np.nan)
    covered_s = np.zeros(n_slots)
    t0 = start.timestamp()
    edges = t0 + slot_s * np.arange(n_slots + 1, dtype=np.float64)
    for block in blocks:
        b0, b1 = block.start.timestamp(), block.end.timestamp()
        first = max(int(np.floor((b0 - t0) / slot_s)), 0)
        last = min(int(np.ceil((b1 - t0) / slot_s)), n_slots)
        if first >= last:
            continue
        amps = block_amps(block, voltage_v)
        capacity[first:last] = np.fmin(capacity[first:last], amps[None, :])
        overlap = np.minimum(edges[first + 1:last + 1], b1) - np.maximum(edges[first:last], b0)
        covered_s[first:last] += np.maximum(overlap, 0.0)
    return capacity, np.clip(covered_s / slot_s, 0.0, 1.0)
