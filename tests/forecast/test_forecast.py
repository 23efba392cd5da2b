"""forecast/: conversion, merging, fallback rules, validation."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from balancer.errors import InvalidInput
from balancer.model import Site
from forecast.blocks import CapacityForecast, ForecastedBlock, parse_update_forecast
from forecast.book import ForecastBook, merge_blocks
from forecast.slots import block_amps, blocks_to_slots

T0 = datetime(2026, 3, 1, 0, 0, tzinfo=UTC)
SITE = Site(id="s", voltage_v=230.0, grid_limit_a=100.0, fallback_kw=13.8)  # 20 A per phase


def block(cap: float, h0: float, h1: float, unit: str = "A", phase: str = "ALL") -> ForecastedBlock:
    return ForecastedBlock(cap, phase, unit, T0 + timedelta(hours=h0), T0 + timedelta(hours=h1))


@pytest.mark.parametrize(("cap", "unit", "phase", "expected"), [
    (32, "A", "ALL", [32, 32, 32]),
    (32, "A", "TWO", [np.nan, 32, np.nan]),
    (32, "A", "UNKNOWN", [32, 32, 32]),
    (69000, "W", "ALL", [100, 100, 100]),
    (69, "KW", "ALL", [100, 100, 100]),
    (23, "KW", "ONE", [100, np.nan, np.nan]),
    (69, "KW", "UNKNOWN", [100, 100, 100]),
    (69, "KWH", "ALL", [100, 100, 100]),     # over one hour
    (69000, "WH", "THREE", [np.nan, np.nan, 300]),
])
def test_block_units(cap: float, unit: str, phase: str, expected: list[float]) -> None:
    np.testing.assert_allclose(block_amps(block(cap, 0, 1, unit, phase), 230.0), expected)


def test_slot_partly_covered_by_two_blocks_takes_the_lowest() -> None:
    cap, cov = blocks_to_slots([block(50, 0, 0.1), block(30, 0.1, 1)], T0, 4, 230.0)
    assert cap[0].tolist() == [30, 30, 30] and cov[0] == pytest.approx(1.0)


def test_newer_replaces_older_only_where_they_overlap() -> None:
    merged = merge_blocks([block(50, 0, 10)], [block(20, 2, 4)])
    spans = [(b.capacity, (b.start - T0).total_seconds() / 3600, (b.end - T0).total_seconds() / 3600) for b in merged]
    assert spans == [(50, 0, 2), (20, 2, 4), (50, 4, 10)]


def test_capacity_sources_and_fallback_order() -> None:
    book = ForecastBook()
    cap, src = book.capacity_slots(SITE, T0, 4)
    assert src == ["fallback_config"] * 4 and cap[0, 0] == pytest.approx(20.0)
    book.accept(CapacityForecast("s", "FALLBACK_CONSUMPTION", (block(10, 0, 24),)), T0)
    book.accept(CapacityForecast("s", "CONSUMPTION", (block(500, 0, 0.5),)), T0)
    cap, src = book.capacity_slots(SITE, T0, 4)
    assert src == ["forecast", "forecast", "fallback_forecast", "fallback_forecast"]
    assert cap[:, 0].tolist() == [100, 100, 10, 10]  # the forecast is capped by the connection


def test_offline_edge_is_exact() -> None:
    book = ForecastBook()
    book.accept(CapacityForecast("s", "CONSUMPTION", (block(60, 0, 24),)), T0)
    edge = T0 + timedelta(hours=1)
    book.link.heartbeat(T0, edge)
    assert book.capacity_at(SITE, edge - timedelta(microseconds=1))[1] == "forecast"
    assert book.capacity_at(SITE, edge)[1] == "fallback_config"
    # A forecast from the grid operator ends its offline state.
    book.accept(CapacityForecast("s", "CONSUMPTION", (block(60, 1, 24),)), edge + timedelta(minutes=1))
    assert book.link.online(edge + timedelta(minutes=1))


def test_book_round_trips_through_json() -> None:
    book = ForecastBook()
    book.accept(CapacityForecast("s", "CONSUMPTION", (block(60, 0, 24, "KW"),)), T0)
    book.link.heartbeat(T0, T0 + timedelta(minutes=2))
    again = ForecastBook.from_json(book.to_json())
    np.testing.assert_allclose(again.capacity_slots(SITE, T0, 8)[0], book.capacity_slots(SITE, T0, 8)[0])
    assert again.link.offline_mode_at == book.link.offline_mode_at


GOOD = {"group_id": "g", "type": "CONSUMPTION", "forecasted_blocks": [
    {"capacity": 10, "phase": "ALL", "unit": "KW", "start_time": "2026-03-01T00:00:00Z",
     "end_time": "2026-03-01T01:00:00Z"}]}


@pytest.mark.parametrize(("mutate", "field"), [
    (lambda b: b.pop("group_id"), "group_id"),
    (lambda b: b.update(extra=1), "extra"),
    (lambda b: b.update(type="BOGUS"), "type"),
    (lambda b: b["forecasted_blocks"][0].update(capacity=-1), "forecasted_blocks[0].capacity"),
    (lambda b: b["forecasted_blocks"][0].update(capacity="10"), "forecasted_blocks[0].capacity"),
    (lambda b: b["forecasted_blocks"][0].update(unit="MW"), "forecasted_blocks[0].unit"),
    (lambda b: b["forecasted_blocks"][0].update(phase="FOUR"), "forecasted_blocks[0].phase"),
    (lambda b: b["forecasted_blocks"][0].update(end_time="2026-03-01T00:00:00Z"), "forecasted_blocks[0].end_time"),
    (lambda b: b["forecasted_blocks"][0].update(start_time="yesterday"), "forecasted_blocks[0].start_time"),
    (lambda b: b.update(forecasted_blocks=[]), "forecasted_blocks"),
])
def test_bad_forecasts_name_the_field(mutate, field) -> None:  # type: ignore[no-untyped-def]
    import copy

    body = copy.deepcopy(GOOD)
    mutate(body)
    with pytest.raises(InvalidInput) as err:
        parse_update_forecast(body)
    assert field in [p.path for p in err.value.problems]


@settings(max_examples=200, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.floats() | st.text(max_size=5) | st.integers(),
                    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=20), kids, max_size=4),
                    max_leaves=20))
def test_parser_fuzz_only_raises_invalid_input(body: object) -> None:
    with contextlib.suppress(InvalidInput):
        parse_update_forecast(body)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 200), st.integers(0, 40), st.integers(1, 16)), min_size=1, max_size=6))
def test_merge_then_read_equals_newest_covering_block(specs: list[tuple[float, int, int]]) -> None:
    """Blocks sent one forecast at a time: each slot reads the newest block covering it."""
    book = ForecastBook()
    newest: dict[int, float] = {}
    for cap, start_q, length_q in specs:
        b = ForecastedBlock(cap, "ALL", "A", T0 + timedelta(minutes=15 * start_q),
                            T0 + timedelta(minutes=15 * (start_q + length_q)))
        book.accept(CapacityForecast("s", "CONSUMPTION", (b,)), T0)
        for q in range(start_q, start_q + length_q):
            newest[q] = cap
    cap_a, src = book.capacity_slots(SITE, T0, 60)
    for q in range(60):
        if q in newest:
            assert src[q] == "forecast" and cap_a[q, 0] == pytest.approx(min(newest[q], 100.0))
        else:
            assert src[q] == "fallback_config"
