"""The site meter in the core: non-EV load, the chargers' share of the connection, plausibility."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from balancer.control import Controller, slot_floor
from balancer.events import MeterSample, SessionStarted, SiteMeterReading
from balancer.model import Charger, MeterSettings, Site
from balancer.site_meter import MeterTracker, charger_capacity_a, non_ev_load_a
from tests.balancer.chargers import online

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
METER = MeterSettings(source="http", stale_after_s=10.0, fallback_base_load_a=(30.0, 30.0, 30.0),
                      margin_a=1.0, frozen_after_s=60.0)


def meter_site(n: int = 4, grid_limit_a: float = 100.0, phases: tuple[int, ...] = ()) -> Site:
    chargers = tuple(
        Charger(id=f"CP{i}", max_current_a=32.0, min_current_a=6.0,
                phases=phases[i] if i < len(phases) else 3, phase=("L1", "L2", "L3")[i % 3])
        for i in range(n)
    )
    return Site(id="s", voltage_v=230.0, grid_limit_a=grid_limit_a, fallback_kw=60.0, chargers=chargers,
                meter=METER)


def started(site: Site, at: datetime = T0) -> Controller:
    ctrl = Controller(site)
    ctrl.set_capacity(slot_floor(at), np.full((96, 3), site.grid_limit_a), ["forecast"] * 96)
    for cid in ctrl.topology.charger_ids:
        online(ctrl, cid, at, "ocpp1.6")
        ctrl.handle(SessionStarted(cid, at, transaction_id=f"tx-{cid}", meter_start_wh=0.0))
    return ctrl


def load_per_phase(ctrl: Controller) -> np.ndarray:
    limits = np.array([ctrl.states[c].limit_a for c in ctrl.topology.charger_ids])
    assert ctrl.last_allocation is not None
    mask = np.zeros((len(limits), 3))
    for i, cid in enumerate(ctrl.topology.charger_ids):
        mask[i, list(ctrl.site.chargers[i].grid_phases(ctrl.states[cid].car_phases))] = 1.0
    return np.asarray(limits @ mask)


def test_non_ev_load_is_meter_less_chargers_where_fresh() -> None:
    out = non_ev_load_a(np.array([50.0, np.nan, -20.0]), np.array([10.0, 10.0, 0.0]),
                        np.array([30.0, 30.0, 30.0]), fresh=True)
    np.testing.assert_allclose(out, [40.0, 30.0, -20.0])
    stale = non_ev_load_a(np.array([50.0, 50.0, 50.0]), np.array([45.0, 45.0, 45.0]),
                          np.array([30.0, 30.0, 30.0]), fresh=False)
    np.testing.assert_allclose(stale, [30.0, 30.0, 30.0])  # never offset a stale meter


def test_charger_share_capped_by_connection_and_zero() -> None:
    share = charger_capacity_a(np.array([100.0, 100.0, 100.0]), np.array([40.0, 120.0, -30.0]), 1.0, 100.0)
    np.testing.assert_allclose(share, [59.0, 0.0, 100.0])


def test_building_load_lowers_charger_limits() -> None:
    ctrl = started(meter_site(4))
    ctrl.decide(T0)
    np.testing.assert_allclose(load_per_phase(ctrl), [69.0] * 3, atol=0.5)  # fallback 30 + margin 1
    ctrl.handle(SiteMeterReading("s", T0, (40.0, 40.0, 40.0)))  # no charger draws yet: all non-EV
    ctrl.decide(T0)
    assert load_per_phase(ctrl).max() <= 100.0 - 40.0 - 1.0 + 1e-9
    status = ctrl.status(T0)
    assert status.meter is not None and status.meter.fresh
    np.testing.assert_allclose(status.meter.non_ev_load_a, [40.0] * 3)


def test_chargers_measured_draw_is_not_counted_as_non_ev() -> None:
    ctrl = started(meter_site(2))
    ctrl.handle(SiteMeterReading("s", T0, (20.0, 20.0, 20.0)))
    ctrl.decide(T0)
    t1 = T0 + timedelta(seconds=5)
    for cid in ctrl.topology.charger_ids:
        ctrl.handle(MeterSample(cid, t1, current_a=(32.0, 32.0, 32.0)))
    ctrl.handle(SiteMeterReading("s", t1, (84.0, 84.0, 84.0)))  # 20 A building + 2 x 32 A cars
    ctrl.decide(t1)
    assert ctrl.meter_view is not None
    np.testing.assert_allclose(ctrl.meter_view.non_ev_load_a, [20.0] * 3)
    assert [ctrl.states[c].limit_a for c in ctrl.topology.charger_ids] == [32.0, 32.0]


def test_stale_meter_falls_back_and_pv_export_is_usable() -> None:
    ctrl = started(meter_site(4, grid_limit_a=60.0))
    ctrl.handle(SiteMeterReading("s", T0, (-25.0, -25.0, -25.0)))  # PV exports 25 A
    ctrl.decide(T0)
    np.testing.assert_allclose(load_per_phase(ctrl), [60.0] * 3, atol=0.5)  # at most the connection
    later = T0 + timedelta(seconds=11)
    ctrl.decide(later)
    assert ctrl.meter_view is not None and not ctrl.meter_view.fresh
    assert load_per_phase(ctrl).max() <= 60.0 - 30.0 - 1.0 + 1e-9


def test_implausible_readings_are_refused_and_counted() -> None:
    tracker = MeterTracker(METER, grid_limit_a=100.0)
    assert tracker.update((float("nan"), 1.0, 1.0), T0) == "not_a_number"
    assert tracker.update((-150.0, 1.0, 1.0), T0) == "negative_beyond_limit"
    assert tracker.update((-90.0, 1.0, 1.0), T0) is None
    for s in range(1, 61, 5):
        assert tracker.update((5.0, 5.0, 5.0), T0 + timedelta(seconds=s)) is None
    assert tracker.update((5.0, 5.0, 5.0), T0 + timedelta(seconds=61)) == "frozen"
    assert not tracker.fresh(T0 + timedelta(seconds=67))  # the last accepted one was at +56 s
    assert tracker.update((5.0, 5.0, 5.1), T0 + timedelta(seconds=62)) is None
    assert tracker.update((5.0, 5.0, 5.1), T0 + timedelta(seconds=200)) is None  # after a gap: a new run
    assert tracker.rejected == {"not_a_number": 1, "negative_beyond_limit": 1, "frozen": 1}


def test_planner_capacity_less_non_ev_forecast() -> None:
    ctrl = started(meter_site(2))
    ctrl.handle(SiteMeterReading("s", T0, (10.0, 10.0, 10.0)))
    forecast = np.zeros((96, 3))
    forecast[4:8] = 70.0  # an hour of building peak, one hour ahead
    ctrl.non_ev_forecast = (slot_floor(T0), forecast)
    request = ctrl.plan_request(T0)
    np.testing.assert_allclose(request.capacity_a[0], [89.0] * 3)   # now: measured 10 A + margin
    np.testing.assert_allclose(request.capacity_a[5], [29.0] * 3)   # forecast 70 A + margin
    np.testing.assert_allclose(request.capacity_a[20], [99.0] * 3)


def test_schedule_ahead_keeps_room_for_the_non_ev_load() -> None:
    ctrl = started(meter_site(4))
    ctrl.set_capacity(slot_floor(T0), np.concatenate([np.full((4, 3), 100.0), np.full((92, 3), 70.0)]),
                      ["forecast"] * 96)
    ctrl.handle(SiteMeterReading("s", T0, (40.0, 40.0, 40.0)))
    schedules = ctrl.decide(T0)
    at = slot_floor(T0) + timedelta(hours=2)
    held = sum(next(v for t, v in reversed(s.periods) if t <= at) for s in schedules)
    assert held <= 70.0 - 40.0 - 1.0 + 1e-6


@settings(max_examples=150, deadline=None)
@given(
    meter=st.tuples(*[st.floats(-150.0, 300.0, allow_nan=False)] * 3),
    drawn=st.lists(st.floats(0.0, 40.0), min_size=6, max_size=6),
    capacity=st.floats(0.0, 100.0),
    phases=st.lists(st.sampled_from([1, 3]), min_size=6, max_size=6),
    fresh_s=st.sampled_from([0.0, 5.0, 30.0]),
)
def test_property_limits_plus_non_ev_within_capacity(meter: tuple[float, float, float], drawn: list[float],
                                                     capacity: float, phases: list[int], fresh_s: float) -> None:
    """With any meter reading and any sessions, charger limits + non-EV load stay within the capacity
    in force per phase (less the margin) wherever the non-EV load alone leaves room for it."""
    site = meter_site(6, phases=tuple(phases))
    ctrl = started(site)
    ctrl.set_capacity(slot_floor(T0), np.full((96, 3), capacity), ["forecast"] * 96)
    now = T0 + timedelta(seconds=fresh_s)
    for i, cid in enumerate(ctrl.topology.charger_ids):
        ctrl.handle(MeterSample(cid, now, current_a=(drawn[i], drawn[i], drawn[i])))
    ctrl.handle(SiteMeterReading("s", T0, meter))
    ctrl.decide(now)
    view = ctrl.meter_view
    assert view is not None
    room = capacity - view.non_ev_load_a - METER.margin_a
    load = load_per_phase(ctrl)
    possible = room >= 0
    assert np.all(load[possible] <= room[possible] + 1e-6)
    assert np.all(load[~possible] <= 1e-9)  # nothing left on that phase: every car at 0
    assert np.all(load <= site.grid_limit_a + 1e-9)
    plausible = min(meter) >= -site.grid_limit_a  # else refused: the fallback is assumed
    assert view.fresh == (plausible and fresh_s <= METER.stale_after_s)
