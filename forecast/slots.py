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

from balancer.timeline import SLOT_S
from forecast.blocks import ForecastedBlock

__all__ = ["block_amps", "blocks_amps", "blocks_to_slots"]

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


def blocks_amps(blocks: Sequence[ForecastedBlock], voltage_v: float) -> FloatArray:
    """``block_amps`` for many blocks at once, shape (n_blocks, 3) [A]."""
    n = len(blocks)
    capacity = np.fromiter((b.capacity for b in blocks), dtype=np.float64, count=n)
    hours = np.fromiter(((b.end - b.start).total_seconds() / 3600.0 for b in blocks), dtype=np.float64, count=n)
    unit = np.array([b.unit for b in blocks], dtype=object)
    phase = np.fromiter((_PHASE_INDEX.get(b.phase, -1) for b in blocks), dtype=np.int64, count=n)
    per_w = 1.0 / voltage_v
    scale = np.select([unit == "A", unit == "W", unit == "KW", unit == "WH"],
                      [np.ones(n), np.full(n, per_w), np.full(n, 1000.0 * per_w), per_w / hours],
                      1000.0 * per_w / hours)
    value = capacity * scale
    # Power over ALL/UNKNOWN phases is split over three; amperes limit every phase.
    value = np.where((phase < 0) & (unit != "A"), value / 3.0, value)
    out = np.repeat(value[:, None], 3, axis=1)
    rows = np.flatnonzero(phase >= 0)
    out[rows] = np.nan
    out[rows, phase[rows]] = value[rows]
    return out


def blocks_to_slots(blocks: Sequence[ForecastedBlock], start: datetime, n_slots: int, voltage_v: float,
                    slot_s: int = SLOT_S) -> tuple[FloatArray, FloatArray]:
    """Per-slot capacity and coverage.

    returns : capacity_a, shape (n_slots, 3) [A], the lowest of every block touching the slot
        (NaN where no block does, or where the blocks leave that phase free);
        coverage, shape (n_slots,) in [0, 1], the share of the slot that blocks cover.
    A slot only partly covered keeps the lowest touching block; the caller takes the lower of it
    and the next fallback for the uncovered part (conservative). Vectorised over the
    (block, slot) pairs: a book of hundreds of blocks is read on every capacity change.
    """
    capacity = np.full((n_slots, 3), np.nan)
    if not blocks or n_slots <= 0:
        return capacity, np.zeros(n_slots)
    t0 = start.timestamp()
    b0 = np.fromiter((b.start.timestamp() for b in blocks), dtype=np.float64, count=len(blocks))
    b1 = np.fromiter((b.end.timestamp() for b in blocks), dtype=np.float64, count=len(blocks))
    first = np.maximum(np.floor((b0 - t0) / slot_s), 0).astype(np.int64)
    last = np.minimum(np.ceil((b1 - t0) / slot_s), n_slots).astype(np.int64)
    inside = np.flatnonzero(first < last)
    if inside.size == 0:
        return capacity, np.zeros(n_slots)
    amps = blocks_amps([blocks[int(i)] for i in inside], voltage_v)
    first, last, b0, b1 = first[inside], last[inside], b0[inside], b1[inside]
    counts = last - first
    pair_block = np.repeat(np.arange(inside.size), counts)
    offsets = np.cumsum(counts) - counts
    pair_slot = np.arange(int(counts.sum())) - np.repeat(offsets, counts) + np.repeat(first, counts)
    np.fmin.at(capacity, pair_slot, amps[pair_block])
    edges = t0 + slot_s * np.arange(n_slots + 1, dtype=np.float64)
    overlap = np.minimum(edges[pair_slot + 1], b1[pair_block]) - np.maximum(edges[pair_slot], b0[pair_block])
    covered_s = np.bincount(pair_slot, weights=np.maximum(overlap, 0.0), minlength=n_slots)
    return capacity, np.clip(covered_s / slot_s, 0.0, 1.0)
