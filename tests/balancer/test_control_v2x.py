"""V2X through the controller: a building peak carried by a V2G car, reasons ``discharge`` and
``meter``, the schedule of a discharge, the planner's inputs, and the compliance error."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from balancer.control import Controller, slot_floor
from balancer.discharge import discharge_bound_a
from balancer.events import MeterSample, NeedsUpdated, SessionStarted, SiteMeterReading
from balancer.grid_reports import compliance_problem
from balancer.model import Charger, MeterSettings, Site
from forecast.blocks import CapacityForecast, ForecastedBlock
from forecast.book import ForecastBook
from tests.balancer.chargers import online

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
METER = MeterSettings(source="http", stale_after_s=10.0, fallback_base_load_a=(30.0, 30.0, 30.0),
                      margin_a=1.0, frozen_after_s=60.0)


def office(capacity_a: float = 40.0, export_limit_a: float = 0.0) -> Controller:
    site = Site(id="office", voltage_v=230.0, grid_limit_a=63.0, fallback_kw=20.0, meter=METER,
                export_limit_a=export_limit_a, chargers=(
                    Charger(id="V2G", max_current_a=32.0, allow_discharge=True, max_discharge_current_a=16.0),
                    Charger(id="AC1", max_current_a=32.0)))
    ctrl = Controller(site)
    ctrl.set_capacity(slot_floor(T0), np.full((96, 3), capacity_a), ["forecast"] * 96)
    online(ctrl, "V2G", T0, "ocpp2.1")
    online(ctrl, "AC1", T0, "ocpp2.0.1")
    for cid in ("V2G", "AC1"):
        ctrl.handle(SessionStarted(cid, T0, transaction_id=f"tx-{cid}", meter_start_wh=0.0))
    ctrl.handle(NeedsUpdated("V2G", T0, energy_wh=10000.0, departure=T0 + timedelta(hours=8), v2x=True,
                             discharge_max_a=20.0, source="iso15118"))
    return ctrl


def test_building_peak_is_carried_by_the_v2g_car() -> None:
    ctrl = office()
    ctrl.handle(SiteMeterReading("office", T0, (50.0, 50.0, 50.0)))  # building 50 A, 40 A in force
    schedules = {s.charger_id: s for s in ctrl.decide(T0)}
    v2g, ac1 = ctrl.states["V2G"], ctrl.states["AC1"]
    # 50 A + 1 A margin - 40 A = 11 A short: the car discharges at least that, within 16 A.
    assert -16.0 <= v2g.limit_a <= -11.0
    assert ac1.limit_a == 0.0
    status = ctrl.status(T0)
    reasons = {c["id"]: c["limit_reason"] for c in status.chargers}
    assert reasons["V2G"]["code"] == "discharge" and reasons["V2G"]["node"] == "office"
    assert reasons["AC1"]["code"] == "meter"
    assert status.discharge_a[0] == -v2g.limit_a
    assert status.allocation_status != "infeasible"
    # The discharge ends with the slot at the latest.
    periods = schedules["V2G"].periods
    assert periods[0][1] == v2g.limit_a and periods[1] == (slot_floor(T0) + timedelta(minutes=15), 0.0)


def test_no_v2x_protocol_or_no_offer_means_no_discharge_and_a_compliance_error() -> None:
    ctrl = office()
    online(ctrl, "V2G", T0, "ocpp2.0.1")  # 2.0.1 cannot carry a setpoint
    ctrl.handle(SiteMeterReading("office", T0, (50.0, 50.0, 50.0)))
    ctrl.decide(T0)
    assert ctrl.states["V2G"].limit_a == 0.0
    status = ctrl.status(T0)
    assert status.allocation_status == "infeasible"
    message = compliance_problem(measured_a=status.measured_a, capacity_a=status.capacity_a,
                                 allocation_status=status.allocation_status, slot=slot_floor(T0),
                                 last_reported_slot=None, allocation_message=status.allocation_message)
    assert message is not None and "V2X" in message and "11.0 A on L1" in message
    reasons = {c["id"]: c["limit_reason"] for c in status.chargers}
    assert reasons["AC1"]["code"] == "meter" and "cannot comply" in reasons["AC1"]["detail"]


def test_no_deficit_no_discharge_and_stale_meter_reason_says_meter() -> None:
    ctrl = office(capacity_a=60.0)
    ctrl.handle(SiteMeterReading("office", T0, (20.0, 20.0, 20.0)))
    ctrl.decide(T0)
    assert ctrl.states["V2G"].limit_a > 0 and ctrl.states["AC1"].limit_a > 0
    later = T0 + timedelta(seconds=30)  # stale: the fallback of 30 A is assumed
    ctrl.decide(later)
    reasons = {c["id"]: c["limit_reason"] for c in ctrl.status(later).chargers}
    assert reasons["AC1"]["code"] == "meter" and "stale" in reasons["AC1"]["detail"]


def test_car_near_departure_with_unmet_need_is_not_discharged() -> None:
    ctrl = office()
    # 10 kWh in 40 minutes needs more than 32 A x 3 phases can give after a slot of discharge.
    ctrl.handle(NeedsUpdated("V2G", T0, energy_wh=10000.0, departure=T0 + timedelta(minutes=40), v2x=True))
    ctrl.handle(SiteMeterReading("office", T0, (50.0, 50.0, 50.0)))
    ctrl.decide(T0)
    assert ctrl.states["V2G"].limit_a >= 0.0


def test_planner_gets_the_deficit_and_the_v2x_session() -> None:
    ctrl = office()
    ctrl.handle(SiteMeterReading("office", T0, (50.0, 50.0, 50.0)))
    ctrl.decide(T0)
    request = ctrl.plan_request(T0)
    assert request.deficit_a is not None and request.export_room_a is not None
    assert np.allclose(request.deficit_a[0], 11.0)
    v2g = next(s for s in request.sessions if s.charger_id == "V2G")
    assert v2g.discharge_max_a == 16.0
    assert next(s for s in request.sessions if s.charger_id == "AC1").discharge_max_a is None


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(meter=st.tuples(st.floats(-30.0, 90.0), st.floats(-30.0, 90.0), st.floats(-30.0, 90.0)),
       capacity=st.floats(0.0, 63.0), drawn=st.floats(0.0, 32.0), export=st.floats(0.0, 20.0),
       need_kwh=st.floats(0.0, 60.0), hours=st.floats(0.1, 10.0))
def test_property_import_within_capacity_where_possible(meter: tuple[float, float, float], capacity: float,
                                                        drawn: float, export: float, need_kwh: float,
                                                        hours: float) -> None:
    """Charger limits (discharge negative) + non-EV load within the capacity per phase wherever the
    V2X car at its bound can make it so; else a compliance error; never past the export limit; the
    car's need stays reachable at its maximum rate after a slot of discharge."""
    ctrl = office(capacity, export)
    ctrl.handle(NeedsUpdated("V2G", T0, energy_wh=need_kwh * 1000.0, departure=T0 + timedelta(hours=hours),
                             v2x=True))
    for cid in ("V2G", "AC1"):
        ctrl.handle(MeterSample(cid, T0, current_a=(drawn, drawn, drawn)))
    ctrl.handle(SiteMeterReading("office", T0, meter))
    ctrl.decide(T0)
    view = ctrl.meter_view
    assert view is not None
    load = np.array([ctrl.states["V2G"].limit_a + ctrl.states["AC1"].limit_a] * 3)
    room = capacity - view.non_ev_load_a - METER.margin_a
    status = ctrl.status(T0)
    deficit = np.maximum(-room, 0.0)
    bound = float(discharge_bound_a(
        need_wh=np.array([need_kwh * 1000.0]), seconds_left=np.array([hours * 3600.0]), charge_max_a=np.array([32.0]),
        discharge_max_a=np.array([16.0]), phases=np.array([3]), voltage_v=230.0, hold_s=900.0)[0])
    best = min(bound, float(np.min(export + view.non_ev_load_a)))  # a three-phase car: all phases at once
    if status.allocation_status == "infeasible":
        assert "V2X" in status.allocation_message
        assert deficit.max() > best - 0.1 - 1e-6  # not even the car at its bound could have made it
    else:
        assert np.all(load <= room + 1e-6)
    # Discharge never pushes the connection past the export limit (PV may export on its own).
    assert np.all(load >= np.minimum(0.0, -(export + view.non_ev_load_a)) - 1e-6)
    v2g = ctrl.states["V2G"].limit_a
    if v2g < 0:
        wh_per_a_s = 3 * 230.0 / 3600.0
        need_after = need_kwh * 1000.0 + (-v2g) * wh_per_a_s * 900.0
        assert need_after <= 32.0 * wh_per_a_s * (hours * 3600.0 - 900.0) + 1e-6
        assert np.any(room < 0)  # discharge only against a deficit


def test_discharge_holds_when_the_meter_sees_the_export() -> None:
    """The meter reading includes the car's export: the non-EV load must not look smaller for it
    (else the next decision would stop the discharge and the peak would come back)."""
    ctrl = office()
    ctrl.handle(SiteMeterReading("office", T0, (50.0, 50.0, 50.0)))
    ctrl.decide(T0)
    given_a = ctrl.states["V2G"].limit_a
    assert given_a < 0
    t1 = T0 + timedelta(seconds=5)
    for cid in ("V2G", "AC1"):
        ctrl.handle(MeterSample(cid, t1, current_a=(0.0, 0.0, 0.0)))  # import 0: it exports
    net = 50.0 + given_a
    ctrl.handle(SiteMeterReading("office", t1, (net, net, net)))
    ctrl.decide(t1)
    assert ctrl.meter_view is not None and np.allclose(ctrl.meter_view.non_ev_load_a, 50.0)
    assert ctrl.states["V2G"].limit_a <= -11.0


def test_failsafe_limits_leave_room_for_the_fallback_base_load() -> None:
    """If the balancer is gone the building still draws: the failsafe limits together stay within
    the fallback less ``fallback_base_load_a`` and the margin (58 - 30 - 1 = 27 A per phase)."""
    ctrl = Controller(dataclasses.replace(office().site, fallback_kw=40.0))
    assert ctrl.site.fallback_a > 57.0
    room = min(ctrl.site.fallback_a, ctrl.site.grid_limit_a) - 30.0 - 1.0
    assert float(ctrl.failsafe_a.sum()) <= room + 1e-9
    assert float(ctrl.failsafe_a.sum()) > 0.0
    no_meter = Controller(dataclasses.replace(ctrl.site, meter=None))
    assert float(no_meter.failsafe_a.sum()) > room


def test_a_generation_forecast_caps_the_export_of_a_discharge() -> None:
    """A three-phase car covering an L1 peak discharges on L2 and L3 too: there the export room
    (``export_limit_a``, lowered by the grid operator's GENERATION forecast) bounds it."""
    ctrl = office(export_limit_a=20.0)
    ctrl.handle(SiteMeterReading("office", T0, (55.0, 10.0, 10.0)))  # 16 A short on L1
    ctrl.decide(T0)
    assert -16.0 <= ctrl.states["V2G"].limit_a <= -15.0  # L2/L3 room: 20 A export + 10 A load
    ctrl.export_cap_a = np.zeros(3)  # the grid operator takes no feed-in now
    ctrl.decide(T0 + timedelta(seconds=1))
    assert ctrl.states["V2G"].limit_a == -10.0  # only what the building's 10 A on L2/L3 absorbs
    status = ctrl.status(T0 + timedelta(seconds=1))
    assert status.allocation_status == "infeasible" and "6.0 A on L1" in status.allocation_message


def test_forecast_book_reads_the_generation_forecast_in_force() -> None:
    site = office().site
    book = ForecastBook()
    assert book.export_cap_a(site, T0) is None
    block = ForecastedBlock(capacity=2.3, phase="ALL", unit="KW", start=T0, end=T0 + timedelta(hours=1))
    book.accept(CapacityForecast("office", "GENERATION", (block,)), T0)
    cap = book.export_cap_a(site, T0 + timedelta(minutes=20), T0 + timedelta(minutes=20))
    assert cap is not None and np.allclose(cap, 2300.0 / 3 / 230.0, atol=0.05)
    assert book.export_cap_a(site, T0 + timedelta(hours=2), T0 + timedelta(minutes=20)) is None
