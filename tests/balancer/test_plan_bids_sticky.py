"""The arrival forecast as bids for the capacity ahead (``balancer.plan_expected``), and the car
charging now going on among equal plans (``STICKY_BONUS``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from balancer.model import Charger, Site
from balancer.plan import PlanSession, plan
from balancer.topology import Topology

T0 = datetime(2026, 3, 2, 16, 0, tzinfo=UTC)


def topo() -> Topology:
    chargers = tuple(Charger(id=f"CP{i}", max_current_a=32.0, min_current_a=6.0) for i in range(2))
    return Topology.from_site(Site(id="s", voltage_v=230.0, grid_limit_a=32.0, fallback_kw=0.0, circuits=(),
                                   chargers=chargers))


def sessions() -> list[PlanSession]:
    # 2 h of 32 A on L1 hold both: the single-phase car's 7.36 kWh (1 h) and the three-phase car's 22 kWh (1 h).
    return [PlanSession("CP0", T0, T0 + timedelta(hours=2), 7360.0, phases=1),
            PlanSession("CP1", T0, T0 + timedelta(hours=2), 22080.0)]


def test_without_a_forecast_both_present_cars_are_planned_in_full() -> None:
    out = plan(topo(), np.full((16, 3), 32.0), sessions(), T0)
    assert out.plan is not None
    assert out.plan.planned_wh["CP0"] > 7000.0 and out.plan.planned_wh["CP1"] > 21500.0


def test_expected_three_phase_arrivals_outbid_a_single_phase_car_on_the_short_phase() -> None:
    # Three-phase cars expected from the second hour: an ampere of L1 then gives them three times
    # what it gives the single-phase car, so the three-phase car here charges in the first hour and
    # the single-phase car keeps only its protected share (0.5 kWh).
    expected = np.zeros((16, 3))
    expected[4:8] = 32.0
    out = plan(topo(), np.full((16, 3), 32.0), sessions(), T0, expected_a=expected)
    assert out.plan is not None
    limit = out.plan.limit_a
    assert out.plan.planned_wh["CP1"] > 21500.0
    assert np.all(limit[1, :4] == 32.0)
    assert out.plan.planned_wh["CP0"] <= 500.0 + 6.0 * 230.0 * 0.25
    assert np.all(limit.sum(axis=0) <= 32.0 + 1e-9)  # the bids are never current: limits as before


def test_expected_cars_never_outbid_a_present_three_phase_car() -> None:
    expected = np.full((16, 3), 32.0)
    only = [sessions()[1]]
    out = plan(topo(), np.full((16, 3), 32.0), only, T0, expected_a=expected)
    assert out.plan is not None
    assert out.plan.planned_wh["CP1"] > 21500.0


def test_among_equal_plans_the_car_charging_now_goes_on() -> None:
    # 16 A for two cars that each need 2 h of it within 4 h: any order is as good. The LP used to
    # pick one afresh at every replan (a pause and a start); the car charging now keeps the slot.
    chargers = tuple(Charger(id=f"CP{i}", max_current_a=32.0, min_current_a=6.0) for i in range(2))
    site = Topology.from_site(Site(id="s", voltage_v=230.0, grid_limit_a=16.0, fallback_kw=0.0, circuits=(),
                                   chargers=chargers))
    need = 16.0 * 3 * 230.0 * 2
    for on in (0, 1):
        cars = [PlanSession(f"CP{i}", T0, T0 + timedelta(hours=4), need, charging=i == on) for i in range(2)]
        out = plan(site, np.full((16, 3), 16.0), cars, T0)
        assert out.plan is not None
        assert out.plan.limit_a[on, 0] == 16.0 and out.plan.limit_a[1 - on, 0] == 0.0


def test_the_controller_plans_the_car_it_gave_current_as_charging() -> None:
    from balancer.control import Controller, slot_floor
    from balancer.events import ChargerOnline, NeedsUpdated, SessionStarted
    from balancer.model import ControlSettings

    chargers = tuple(Charger(id=f"CP{i}", max_current_a=32.0, min_current_a=6.0) for i in range(2))
    site = Site(id="s", voltage_v=230.0, grid_limit_a=16.0, fallback_kw=0.0, circuits=(), chargers=chargers)
    ctrl = Controller(site, ControlSettings())
    ctrl.set_capacity(slot_floor(T0), np.full((96, 3), 16.0), ["forecast"] * 96)
    for cid in ("CP0", "CP1"):
        ctrl.handle(ChargerOnline(cid, T0, "ocpp1.6"))
        ctrl.handle(SessionStarted(cid, T0, transaction_id=f"tx-{cid}", meter_start_wh=0.0))
        ctrl.handle(NeedsUpdated(cid, T0, energy_wh=16.0 * 3 * 230.0 * 2, departure=T0 + timedelta(hours=4)))
    request = ctrl.plan_request(T0)
    assert not any(s.charging for s in request.sessions)
    ctrl.accept_plan(plan(request.topology, request.capacity_a, list(request.sessions), request.start))
    limits = {c.charger_id: c.limit_a for c in ctrl.decide(T0)}
    later = ctrl.plan_request(T0 + timedelta(minutes=5))
    assert {s.charger_id: s.charging for s in later.sessions} == {cid: limits[cid] > 0 for cid in ("CP0", "CP1")}
    assert any(s.charging for s in later.sessions)


def three_phase_site(grid_limit_a: float, n: int = 2) -> Topology:
    chargers = tuple(Charger(id=f"CP{i}", max_current_a=16.0, min_current_a=6.0) for i in range(n))
    return Topology.from_site(Site(id="s", voltage_v=230.0, grid_limit_a=grid_limit_a, fallback_kw=0.0,
                                   circuits=(), chargers=chargers))


def test_a_charging_single_phase_car_is_not_paused_for_a_three_phase_arrival() -> None:
    # 20 A hold both all evening: the single-phase car's 6 kWh take 4.3 h at its minimum, the
    # three-phase car's 20 kWh 2.1 h at 14 A. Per Wh, L1's amperes were worth three times as much
    # to the three-phase car in the earlier-delivery tie-break, so the car charging now was paused
    # for the one that just arrived.
    cars = [PlanSession("CP0", T0, T0 + timedelta(hours=8), 6000.0, phases=1, charging=True),
            PlanSession("CP1", T0, T0 + timedelta(hours=9), 20000.0)]
    out = plan(three_phase_site(20.0), np.full((40, 3), 20.0), cars, T0)
    assert out.plan is not None
    assert out.plan.limit_a[0, 0] >= 6.0
    assert out.plan.planned_wh == pytest.approx({"CP0": 6000.0, "CP1": 20000.0}, abs=10.0)  # (0.1 A steps)


def test_a_charging_car_with_less_than_a_slot_left_finishes_now() -> None:
    # 0.9 kWh left: less than a slot at 6 A (1.035 kWh), so the LP plans 5.2 A, below the minimum.
    # The other car can give way (it has 2 h for 1.5 h of 16 A); the car used to be seated in the
    # first slot with room to spare, after the other had gone: paused now, resumed an hour later.
    cars = [PlanSession("CP0", T0, T0 + timedelta(hours=4), 900.0, charging=True),
            PlanSession("CP1", T0, T0 + timedelta(hours=2), 16.0 * 3 * 230.0 * 1.5, charging=True)]
    out = plan(three_phase_site(20.0), np.full((16, 3), 20.0), cars, T0)
    assert out.plan is not None
    assert out.plan.limit_a[0, 0] >= 6.0
    assert out.plan.limit_a[:, 0].sum() <= 20.0 + 1e-9
    assert out.plan.planned_wh["CP1"] == pytest.approx(16.0 * 3 * 230.0 * 1.5, abs=10.0)


def test_a_steady_site_does_not_pause_cars_as_others_arrive() -> None:
    # Replanned every 5 minutes as the controller does, with what each car drew taken off its need:
    # cars arrive every 10 minutes, one and three-phase, on a site that can charge them all. Once
    # a car draws, the plan keeps it drawing until it is full (the guard's min_charge_s aside).
    topo = Topology.from_site(Site(id="s", voltage_v=230.0, grid_limit_a=40.0, fallback_kw=0.0, circuits=(),
                                   chargers=tuple(Charger(id=f"CP{i}", max_current_a=32.0, min_current_a=6.0)
                                                  for i in range(8))))
    arrive = {f"CP{i}": T0 + timedelta(minutes=10 * i) for i in range(8)}
    need = {f"CP{i}": (4000.0 + 1500.0 * (i % 4)) for i in range(8)}
    phases = {f"CP{i}": 1 if i % 3 == 0 else 3 for i in range(8)}
    on = dict.fromkeys(need, False)
    pauses = dict.fromkeys(need, 0)
    for k in range(36):  # 3 hours
        now = T0 + timedelta(minutes=5 * k)
        cars = [PlanSession(c, now, T0 + timedelta(hours=9), need[c], phases=phases[c], charging=on[c])
                for c in need if arrive[c] <= now and need[c] > 1.0]
        out = plan(topo, np.full((96, 3), 40.0), cars, now)
        assert out.plan is not None
        first = dict(zip(topo.charger_ids, out.plan.first_slot(), strict=True))
        for c in need:
            drawing = c in {s.charger_id for s in cars} and first[c] >= 6.0
            pauses[c] += on[c] and not drawing and need[c] > 1.0
            on[c] = drawing
            if drawing:
                need[c] = max(need[c] - first[c] * phases[c] * 230.0 * 5 / 60, 0.0)
    assert pauses == dict.fromkeys(need, 0)


def test_two_charging_cars_keep_the_currents_they_hold_where_plans_are_equal() -> None:
    # 26 A for two cars alike that can both finish whatever the split: the current above their
    # minimums went to one or the other afresh at every replan (32 -> 6 -> 32 A every 5 minutes
    # on the depot days), a profile push each time; each now keeps what it holds.
    site = three_phase_site(26.0)
    for held in ((16.0, 10.0), (10.0, 16.0)):
        cars = [PlanSession(f"CP{i}", T0, T0 + timedelta(hours=8), 10000.0, charging=True, limit_now_a=held[i])
                for i in range(2)]
        out = plan(site, np.full((32, 3), 26.0), cars, T0)
        assert out.plan is not None
        assert tuple(out.plan.limit_a[:, 0]) == held
