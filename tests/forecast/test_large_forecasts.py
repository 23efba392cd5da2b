"""The vectorised merge and slot conversion equal the one-by-one versions they replaced (issue 19
item 2: those made twenty 800-block forecasts stall the event loop for seconds)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from forecast.blocks import PHASES, UNITS, ForecastedBlock
from forecast.book import merge_blocks
from forecast.slots import block_amps, blocks_amps, blocks_to_slots

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def merge_one_by_one(old: Sequence[ForecastedBlock], new: Sequence[ForecastedBlock]) -> list[ForecastedBlock]:
    """The reference: every old block cut by every new span in turn."""
    spans = sorted((b.start, b.end) for b in new)
    kept: list[ForecastedBlock] = []
    for block in old:
        pieces = [(block.start, block.end)]
        for s, e in spans:
            next_pieces = []
            for a, b in pieces:
                if e <= a or s >= b:
                    next_pieces.append((a, b))
                    continue
                if a < s:
                    next_pieces.append((a, s))
                if e < b:
                    next_pieces.append((e, b))
            pieces = next_pieces
        kept.extend(ForecastedBlock(block.capacity, block.phase, block.unit, a, b) for a, b in pieces)
    return sorted([*kept, *new], key=lambda b: (b.start, b.end))


def slots_one_by_one(blocks: Sequence[ForecastedBlock], start: datetime, n_slots: int,
                     voltage_v: float, slot_s: int = 900) -> tuple[np.ndarray, np.ndarray]:
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
        capacity[first:last] = np.fmin(capacity[first:last], block_amps(block, voltage_v)[None, :])
        overlap = np.minimum(edges[first + 1:last + 1], b1) - np.maximum(edges[first:last], b0)
        covered_s[first:last] += np.maximum(overlap, 0.0)
    return capacity, np.clip(covered_s / slot_s, 0.0, 1.0)


blocks_st = st.builds(
    lambda cap, phase, unit, start, length: ForecastedBlock(
        cap, phase, unit, T0 + timedelta(minutes=start), T0 + timedelta(minutes=start + length)),
    st.floats(0, 1000), st.sampled_from(PHASES), st.sampled_from(UNITS), st.integers(-120, 1800),
    st.integers(1, 600))


@settings(max_examples=300, deadline=None)
@given(st.lists(blocks_st, max_size=30), st.lists(blocks_st, max_size=30))
def test_merge_equals_one_by_one(old: list[ForecastedBlock], new: list[ForecastedBlock]) -> None:
    assert merge_blocks(old, new) == merge_one_by_one(old, new)


@settings(max_examples=300, deadline=None)
@given(st.lists(blocks_st, max_size=30), st.integers(-8, 8), st.integers(0, 40))
def test_slots_equal_one_by_one(blocks: list[ForecastedBlock], offset: int, n_slots: int) -> None:
    start = T0 + timedelta(minutes=15 * offset)
    got = blocks_to_slots(blocks, start, n_slots, 230.0)
    want = slots_one_by_one(blocks, start, n_slots, 230.0)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-12)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-12, atol=1e-12)


@given(st.lists(blocks_st, min_size=1, max_size=30))
def test_blocks_amps_vector_equals_scalar(blocks: list[ForecastedBlock]) -> None:
    np.testing.assert_allclose(blocks_amps(blocks, 230.0), np.array([block_amps(b, 230.0) for b in blocks]),
                               rtol=1e-12)


def test_merging_800_blocks_into_800_touches_each_block_a_few_times() -> None:
    """An algorithmic bound, not a timing: cutting is O((n + m) log m) comparisons, not O(n m)."""
    calls = 0

    class CountingDatetime(datetime):
        def __lt__(self, other: datetime) -> bool:
            nonlocal calls
            calls += 1
            return super().__lt__(other)

        def __le__(self, other: datetime) -> bool:
            nonlocal calls
            calls += 1
            return super().__le__(other)

        def __gt__(self, other: datetime) -> bool:
            nonlocal calls
            calls += 1
            return super().__gt__(other)

        def __ge__(self, other: datetime) -> bool:
            nonlocal calls
            calls += 1
            return super().__ge__(other)

    def blocks(n: int, shift_s: int) -> list[ForecastedBlock]:
        return [ForecastedBlock(50.0, "ALL", "A", CountingDatetime.fromtimestamp(T0.timestamp() + 108 * i + shift_s, UTC),
                                CountingDatetime.fromtimestamp(T0.timestamp() + 108 * (i + 1) + shift_s, UTC))
                for i in range(n)]

    old, new = blocks(800, 0), blocks(800, 54)
    calls = 0
    merged = merge_blocks(old, new)
    fast = calls
    assert merged == merge_one_by_one(old, new)
    assert fast < 100_000, fast  # the one-by-one cut compares 800 x 800 x 2 = 1.28 million times
