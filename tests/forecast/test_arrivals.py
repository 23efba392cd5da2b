"""The arrival forecast from a site's own sessions (issue 17 item 6)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from balancer.control import Controller, slot_floor
from balancer.events import MeterSample, NeedsUpdated, SessionStarted, SessionStopped
from balancer.model import Charger, ControlSettings, Site
from forecast.arrivals import BID_SCALE, PastSession, SessionHistory, expected_load_a
from tests.balancer.chargers import online

MONDAY = datetime(2026, 3, 2, tzinfo=UTC)  # a Monday
THREE = (True, True, True)


def evenings(days: int, *, first: datetime = MONDAY, every: int = 1, phases: tuple[bool, bool, bool] = THREE,
             energy_wh: float = 22080.0) -> list[PastSession]:
    """One car a day (every ``every`` days) from 18:00 to 20:00 before ``first``."""
    out = []
    for d in range(1, days + 1):
        if d % every:
            continue
        day = first - timedelta(days=d)
        out.append(PastSession(day + timedelta(hours=18), day + timedelta(hours=20), energy_wh, phases, 32.0))
    return out


def test_a_car_every_evening_is_expected_this_evening_at_its_mean_current() -> None:
    history = evenings(7)
    noon = MONDAY + timedelta(hours=12)
    load = expected_load_a(history, noon, noon, 96, days=7)
    # 22.08 kWh over 2 h on three phases: 16 A per phase, 18:00 to 20:00 (slots 24-31 from noon).
    np.testing.assert_allclose(load[24:32], 16.0)
    assert np.all(load[:24] == 0.0) and np.all(load[32:] == 0.0)
    # Once 18:00 has passed, today's car is no longer expected (it is here, or not coming).
    late = MONDAY + timedelta(hours=18, minutes=30)
    assert np.all(expected_load_a(history, late, slot_floor(late), 40, days=7) == 0.0)


def test_half_the_days_halve_the_expectation_and_single_phase_cars_load_one_phase() -> None:
    history = evenings(14, every=2, phases=(True, False, False), energy_wh=7360.0)
    noon = MONDAY + timedelta(hours=12)
    load = expected_load_a(history, noon, noon, 96, days=14, by_weekday=False)
    # 7.36 kWh over 2 h on one phase is 16 A; on half the days: 8 A on L1 only.
    np.testing.assert_allclose(load[24:32, 0], 8.0)
    assert np.all(load[:, 1:] == 0.0)


def test_by_weekday_a_car_that_comes_on_mondays_is_not_expected_on_tuesdays() -> None:
    mondays = [s for s in evenings(21) if s.arrival.weekday() == 0]
    assert len(mondays) == 3
    monday_noon = MONDAY + timedelta(hours=12)
    assert expected_load_a(mondays, monday_noon, monday_noon, 48, days=21)[24:32].min() > 15.9
    tuesday_noon = monday_noon + timedelta(days=1)
    assert np.all(expected_load_a(mondays, tuesday_noon, tuesday_noon, 48, days=21) == 0.0)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 24 * 14), st.floats(0.25, 12), st.floats(0, 80000), st.booleans()),
                min_size=1, max_size=30), st.floats(0, 24 * 7))
def test_expected_load_is_never_negative_nor_more_than_the_cars_maxima(
        raw: list[tuple[float, float, float, bool]], now_h: float) -> None:
    history = [PastSession(MONDAY - timedelta(days=14) + timedelta(hours=a), MONDAY - timedelta(days=14)
                           + timedelta(hours=a + stay), e, (True, three, three), 32.0) for a, stay, e, three in raw]
    now = MONDAY + timedelta(hours=now_h)
    load = expected_load_a(history, now, slot_floor(now), 96, days=14)
    assert np.all(load >= 0.0)
    # Every session counts at most once per period, at most its maximum, over 14 days of history.
    assert np.all(load.sum(axis=1) <= sum(32.0 * 3 for _ in history) / 1.0 + 1e-6)


def test_history_keeps_recent_sessions_and_skips_what_does_not_parse() -> None:
    history = SessionHistory(keep_days=7)
    for s in sorted(evenings(10), key=lambda s: s.arrival):
        history.add(s)
    assert history.changed and len(history.sessions or []) == 8  # the newest and the 7 days before it
    again = SessionHistory()
    assert again.load([*history.to_json(), ["x"], "junk", [1, 2, 3, 4, 5]]) == 8
    assert again.sessions == history.sessions
    assert again.load({"not": "a list"}) == 0


def site() -> Site:
    return Site(id="s", voltage_v=230.0, grid_limit_a=32.0, fallback_kw=0.0, circuits=(),
                chargers=tuple(Charger(id=f"CP{i}", max_current_a=32.0, min_current_a=6.0) for i in range(2)))


def test_the_controller_learns_sessions_and_keeps_room_for_the_evening_arrivals() -> None:
    ctrl = Controller(site(), ControlSettings(arrival_forecast_days=7))
    # A week of evenings: a car plugs into CP1 at 18:00 and takes 22 kWh by 20:00.
    for s in sorted(evenings(7), key=lambda s: s.arrival):
        online(ctrl, "CP1", s.arrival, "ocpp1.6")
        ctrl.handle(SessionStarted("CP1", s.arrival, transaction_id=f"tx{s.arrival.day}", meter_start_wh=0.0))
        ctrl.handle(MeterSample("CP1", s.departure, energy_wh=s.energy_wh))
        ctrl.handle(SessionStopped("CP1", s.departure, transaction_id=f"tx{s.arrival.day}", meter_stop_wh=s.energy_wh))
    assert len(ctrl.history.sessions or []) == 7
    assert ctrl.history.sessions[0].energy_wh == 22080.0  # type: ignore[index]
    noon = MONDAY + timedelta(hours=12)
    ctrl.set_capacity(slot_floor(noon), np.full((96, 3), 32.0), ["forecast"] * 96)
    online(ctrl, "CP0", noon, "ocpp1.6")
    ctrl.handle(SessionStarted("CP0", noon, transaction_id="today", meter_start_wh=0.0))
    ctrl.handle(NeedsUpdated("CP0", noon, energy_wh=30000.0, departure=noon + timedelta(hours=10)))
    request = ctrl.plan_request(noon)
    np.testing.assert_allclose(request.capacity_a, 32.0)  # the capacity stays the present cars'
    assert request.expected_a is not None  # the 16 A expected bid for it
    np.testing.assert_allclose(request.expected_a[24:32], BID_SCALE * 16.0)
    np.testing.assert_allclose(request.expected_a[:24], 0.0)
    off = Controller(site())
    off.set_capacity(slot_floor(noon), np.full((96, 3), 32.0), ["forecast"] * 96)
    assert off.plan_request(noon).expected_a is None
