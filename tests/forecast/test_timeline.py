"""The capacity timeline: made when something it depends on changes, taken by the controller as an event."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from balancer.control import Controller
from balancer.events import CapacityUpdated
from balancer.model import Charger, Site
from balancer.rounding import floor_to
from balancer.timeline import SLOT, SLOT_S, CapacityTimeline, horizon_slots, slot_floor
from forecast.blocks import CapacityForecast, ForecastedBlock
from forecast.book import ForecastBook
from forecast.timeline import TimelineFeed

T0 = datetime(2026, 3, 1, 0, 0, tzinfo=UTC)
SITE = Site(id="s", voltage_v=230.0, grid_limit_a=100.0, fallback_kw=13.8)  # 20 A per phase


def forecast(cap: float, h0: float, h1: float, kind: str = "CONSUMPTION") -> CapacityForecast:
    return CapacityForecast("s", kind, (ForecastedBlock(cap, "ALL", "A", T0 + timedelta(hours=h0),
                                                        T0 + timedelta(hours=h1)),))


def test_timeline_of_applies_the_grid_limit_and_is_read_only() -> None:
    timeline = CapacityTimeline.of(T0, [[150.0, np.nan, -3.0], [40.0, 40.0, 40.0]], ["forecast"] * 2,
                                   grid_limit_a=100.0)
    assert timeline.capacity_a.tolist() == [[100.0, 0.0, 0.0], [40.0, 40.0, 40.0]]
    with pytest.raises(ValueError, match="read-only"):
        timeline.capacity_a[0, 0] = 1.0
    with pytest.raises(ValueError, match="1 sources for 2 slots"):
        CapacityTimeline.of(T0, np.zeros((2, 3)), ["forecast"], grid_limit_a=100.0)


def test_timeline_reads_at_a_moment_and_over_a_window() -> None:
    timeline = CapacityTimeline.of(T0, np.array([[10.0] * 3, [20.0] * 3]), ["forecast", "fallback_forecast"],
                                   grid_limit_a=100.0)
    cap, source = timeline.at(T0 + SLOT + timedelta(seconds=1)) or (None, None)
    assert source == "fallback_forecast" and cap is not None and cap.tolist() == [20.0] * 3
    assert timeline.at(T0 - timedelta(seconds=1)) is None and timeline.at(T0 + 2 * SLOT) is None
    window = timeline.window(T0 - SLOT, 4, fill_a=5.0)
    assert window[:, 0].tolist() == [5.0, 10.0, 20.0, 5.0]


def test_the_feed_answers_only_on_a_change_or_a_slot_boundary() -> None:
    book, feed = ForecastBook(), TimelineFeed()
    first = feed.update(book, SITE, T0, 24)
    assert first is not None and len(first) == horizon_slots(24) == 96 and first.sources[0] == "fallback_config"
    assert feed.update(book, SITE, T0 + timedelta(minutes=5), 24) is None  # nothing changed
    moved = feed.update(book, SITE, T0 + SLOT, 24)
    assert moved is not None and moved.start == T0 + SLOT and moved.revision == first.revision

    book.accept(forecast(50.0, 0, 4), T0 + SLOT)
    changed = feed.update(book, SITE, T0 + SLOT + timedelta(seconds=1), 24)
    assert changed is not None and changed.revision == first.revision + 1
    assert changed.sources[0] == "forecast" and changed.capacity_a[0].tolist() == [50.0] * 3

    book.accept(forecast(50.0, 0, 4), T0 + SLOT)  # the same forecast again: nothing changed
    assert feed.update(book, SITE, T0 + SLOT + timedelta(seconds=2), 24) is None

    reloaded = dataclasses.replace(SITE, grid_limit_a=40.0)  # a reloaded config
    capped = feed.update(book, reloaded, T0 + SLOT + timedelta(seconds=3), 24)
    assert capped is not None and capped.revision == changed.revision + 1 and capped.capacity_a.max() == 40.0


def test_the_feed_answers_when_the_grid_operator_goes_offline() -> None:
    book, feed = ForecastBook(), TimelineFeed()
    book.accept(forecast(50.0, 0, 24), T0)
    book.link.heartbeat(T0, T0 + timedelta(minutes=3))
    online = feed.update(book, SITE, T0 + timedelta(minutes=1), 24)
    assert online is not None and online.sources[0] == "forecast"
    assert feed.update(book, SITE, T0 + timedelta(minutes=2), 24) is None
    offline = feed.update(book, SITE, T0 + timedelta(minutes=3), 24)
    assert offline is not None and offline.revision == online.revision + 1
    assert offline.sources[0] == "fallback_config" and offline.capacity_a[0, 0] == pytest.approx(20.0)


def test_capacity_slots_read_the_same_as_the_timeline() -> None:
    book = ForecastBook()
    book.accept(forecast(500.0, 0, 1), T0)
    book.accept(forecast(10.0, 0, 24, "FALLBACK_CONSUMPTION"), T0)
    capacity, sources = book.capacity_slots(SITE, T0, 8)
    timeline = book.timeline(SITE, T0, 8)
    assert capacity.tolist() == timeline.capacity_a.tolist() and sources == list(timeline.sources)
    assert capacity.max() == SITE.grid_limit_a  # 500 A capped by the connection


def test_controller_replans_on_a_new_revision_not_on_a_slot_moving_on() -> None:
    site = dataclasses.replace(SITE, chargers=(Charger(id="CP1", max_current_a=32.0),))
    ctrl = Controller(site)
    book, feed = ForecastBook(), TimelineFeed()
    book.accept(forecast(30.0, 0, 24), T0)
    first = feed.update(book, site, T0, 24)
    assert first is not None
    ctrl.handle(CapacityUpdated("s", first))
    assert ctrl.capacity_now(T0)[1] == "forecast" and ctrl.replan_due
    ctrl.plan_request(T0)
    assert not ctrl.replan_due
    ctrl.handle(CapacityUpdated("other-site", CapacityTimeline.of(T0, np.zeros((96, 3)), ["forecast"] * 96,
                                                                  grid_limit_a=100.0, revision=7)))
    assert not ctrl.replan_due and ctrl.capacity_now(T0)[0].tolist() == [30.0] * 3  # not this site's
    moved = feed.update(book, site, T0 + SLOT, 24)
    assert moved is not None
    ctrl.handle(CapacityUpdated("s", moved))
    assert not ctrl.replan_due  # the same forecasts one slot on
    book.accept(forecast(12.0, 2, 3), T0 + SLOT)
    changed = feed.update(book, site, T0 + SLOT, 24)
    assert changed is not None
    ctrl.handle(CapacityUpdated("s", changed))
    assert ctrl.replan_due
    np.testing.assert_allclose(ctrl.capacity_ahead(slot_floor(T0 + SLOT), 12)[:, 0],
                               [30.0] * 7 + [12.0] * 4 + [30.0])  # 2 h to 3 h from one slot on


@given(st.floats(0.0, 80.0), st.sampled_from([0.1, 0.5, 1.0]), st.sampled_from([0.0, 6.0]))
def test_floor_to_rounds_down_to_the_step_and_never_up(value: float, step: float, min_a: float) -> None:
    scalar = floor_to(value, step, min_a)
    vector = floor_to(np.array([value]), step, min_a)
    assert scalar == vector[0]
    assert scalar <= value + 1e-9
    assert scalar == 0.0 or (scalar >= min_a and value - scalar < step + 1e-9)
    assert abs(scalar / step - round(scalar / step)) < 1e-6


def test_one_slot_length() -> None:
    assert SLOT_S == 900 and timedelta(minutes=15) == SLOT
    assert slot_floor(T0 + timedelta(minutes=29, seconds=59)) == T0 + SLOT
