"""Scheduling quality round 2 (issue 17): each fix with the reproduction that failed before it."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from unittest import mock

import numpy as np

from balancer import plan_model
from balancer.control import Controller, slot_floor
from balancer.events import NeedsUpdated, SessionStarted
from balancer.model import Charger, ControlSettings, Site
from balancer.plan import PlanSession, plan
from balancer.topology import Topology
from tests.balancer.chargers import online

T0 = datetime(2026, 3, 2, 18, 0, tzinfo=UTC)


def small_site(n: int = 2, grid_limit_a: float = 16.0, phases: int = 3) -> Site:
    chargers = tuple(Charger(id=f"CP{i}", max_current_a=32.0, min_current_a=6.0, phases=phases)
                     for i in range(n))
    return Site(id="s", voltage_v=230.0, grid_limit_a=grid_limit_a, fallback_kw=0.0, circuits=(),
                chargers=chargers)


def start_cars(ctrl: Controller, at: datetime = T0) -> None:
    for cid in ctrl.topology.charger_ids:
        online(ctrl, cid, at, "ocpp1.6")
        ctrl.handle(SessionStarted(cid, at, transaction_id=f"tx-{cid}", meter_start_wh=0.0))


def replan(ctrl: Controller, now: datetime) -> None:
    request = ctrl.plan_request(now)
    ctrl.accept_plan(plan(request.topology, request.capacity_a, list(request.sessions), request.start,
                          fine_slots=request.fine_slots))


def test_a_car_that_takes_zero_amperes_holds_no_capacity_in_the_plan() -> None:
    ctrl = Controller(small_site(grid_limit_a=32.0))
    ctrl.set_capacity(slot_floor(T0), np.full((96, 3), 32.0), ["forecast"] * 96)
    start_cars(ctrl)
    ctrl.handle(NeedsUpdated("CP0", T0, energy_wh=20000.0, departure=T0 + timedelta(hours=8), max_current_a=0.0))
    ctrl.handle(NeedsUpdated("CP1", T0, energy_wh=60000.0, departure=T0 + timedelta(hours=8)))
    request = ctrl.plan_request(T0)
    assert [s.charger_id for s in request.sessions] == ["CP1"]
    replan(ctrl, T0)
    assert ctrl.plan is not None
    # The whole 32 A goes to the car that can take it (60 kWh: 2.7 h at 22 kW).
    assert np.all(ctrl.plan.limit_a[ctrl.topology.index("CP1"), :8] == 32.0)


def test_a_need_below_one_slot_at_the_minimum_is_planned_at_the_minimum() -> None:
    # 0.5 kWh is 2.9 A for one slot on three phases: below 6 A, and the LP never plans more than
    # the need. Next to a car that fills the 16 A site all along, it used to get nothing.
    site = small_site(grid_limit_a=16.0)
    topo = Topology.from_site(site)
    sessions = [PlanSession("CP0", T0, T0 + timedelta(hours=4), 500.0),
                PlanSession("CP1", T0, T0 + timedelta(hours=4), 60000.0)]
    out = plan(topo, np.full((96, 3), 16.0), sessions, T0)
    assert out.plan is not None
    limit = out.plan.limit_a
    assert out.plan.planned_wh["CP0"] == 500.0
    assert limit[0].max() >= 6.0 and np.count_nonzero(limit[0]) == 1
    assert np.all(limit.sum(axis=0) <= 16.0 + 1e-9)


def test_a_small_need_next_to_a_car_that_fills_the_site_is_served_online() -> None:
    ctrl = Controller(small_site(grid_limit_a=16.0))
    ctrl.set_capacity(slot_floor(T0), np.full((96, 3), 16.0), ["forecast"] * 96)
    start_cars(ctrl)
    ctrl.handle(NeedsUpdated("CP0", T0, energy_wh=500.0, departure=T0 + timedelta(hours=4)))
    ctrl.handle(NeedsUpdated("CP1", T0, energy_wh=60000.0, departure=T0 + timedelta(hours=4)))
    replan(ctrl, T0)
    limits = {s.charger_id: s.limit_a for s in ctrl.decide(T0)}
    assert limits["CP0"] >= 6.0 and limits["CP0"] + limits["CP1"] <= 16.0 + 1e-9


def one_and_three_phase(grid_limit_a: float = 16.0) -> Topology:
    return Topology.from_site(small_site(grid_limit_a=grid_limit_a))


def test_a_single_phase_car_on_the_short_phase_keeps_its_protected_share() -> None:
    # 16 A per phase for 4 h: every ampere of L1 gives the three-phase car three times the energy,
    # so energy first planned the single-phase car 0 Wh. By default it keeps 1/16 of its request
    # (at most 0.5 kWh); without the cap 1/16 of 10 kWh.
    topo = one_and_three_phase()
    sessions = [PlanSession("CP0", T0, T0 + timedelta(hours=4), 10000.0, phases=1),
                PlanSession("CP1", T0, T0 + timedelta(hours=4), 44000.0)]
    out = plan(topo, np.full((96, 3), 16.0), sessions, T0)
    assert out.plan is not None
    assert 500.0 - 6.0 * 230.0 * 0.25 <= out.plan.planned_wh["CP0"] <= 500.0 + 500.0
    with mock.patch.object(plan_model, "PROTECT_MAX_WH", float("inf")):
        out = plan(topo, np.full((96, 3), 16.0), sessions, T0)
    assert out.plan is not None
    protected = 10000.0 / 16
    # (less at most one slot at the 6 A minimum: a sliver below it cannot be given anywhere)
    assert out.plan.planned_wh["CP0"] >= protected - 6.0 * 230.0 * 0.25
    # ... and no more than that share is traded at 3:1.
    assert out.plan.planned_wh["CP0"] <= protected + 500.0


def test_the_car_with_less_laxity_charges_first() -> None:
    # Both can finish on 16 A: the car leaving in 75 minutes needs 60 of them at 16 A, the other
    # has all evening. Earlier delivery per Wh alone was a tie between them, broken by the solver
    # (here against the urgent car, which a later arrival would then squeeze out).
    topo = one_and_three_phase()
    sessions = [PlanSession("CP1", T0, T0 + timedelta(hours=8), 11040.0),
                PlanSession("CP0", T0, T0 + timedelta(minutes=75), 11040.0)]
    out = plan(topo, np.full((96, 3), 16.0), sessions, T0)
    assert out.plan is not None
    assert np.all(out.plan.limit_a[0, :4] == 16.0) and np.all(out.plan.limit_a[1, :4] == 0.0)
    assert out.plan.planned_wh["CP0"] == 11040.0 and out.plan.planned_wh["CP1"] == 11040.0


def turn_taking_site(min_pause_s: float, min_charge_s: float) -> Controller:
    # Room for one minimum (8 A, two cars of 6 A): the cars take turns every 60 s.
    site = Site(id="s", voltage_v=230.0, grid_limit_a=8.0, fallback_kw=0.0, circuits=(), rotation_period_s=60.0,
                chargers=tuple(Charger(id=f"CP{i}", max_current_a=32.0, min_current_a=6.0) for i in range(2)))
    ctrl = Controller(site, ControlSettings(min_pause_s=min_pause_s, min_charge_s=min_charge_s))
    ctrl.set_capacity(slot_floor(T0), np.full((96, 3), 8.0), ["forecast"] * 96)
    start_cars(ctrl)
    return ctrl


def who_charges(ctrl: Controller, at: datetime) -> list[str]:
    schedules = ctrl.decide(at)
    assert sum(s.limit_a for s in schedules) <= 8.0 + 1e-9
    return [s.charger_id for s in schedules if s.limit_a > 0]


def test_cars_taking_turns_are_not_paused_before_min_charge_s() -> None:
    steps = [T0 + timedelta(seconds=30 * k) for k in range(40)]  # 20 minutes, a decision every 30 s
    churning = turn_taking_site(0.0, 0.0)
    held = turn_taking_site(0.0, 900.0)
    before = [who_charges(churning, t) for t in steps]
    after = [who_charges(held, t) for t in steps]
    switches = [sum(a != b for a, b in itertools.pairwise(seq)) for seq in (before, after)]
    assert switches[0] >= 10  # a turn every minute
    assert switches[1] == 1  # one turn in 20 minutes: after 15 minutes of charging
    assert after[0] == after[29] != after[31]


def test_a_paused_car_stays_paused_for_min_pause_s() -> None:
    ctrl = turn_taking_site(900.0, 0.0)
    seq = [who_charges(ctrl, T0 + timedelta(seconds=30 * k)) for k in range(40)]
    # The first turn comes after a minute; the car it paused may not take it back for 15 minutes.
    switches = [k for k in range(1, 40) if seq[k] != seq[k - 1]]
    assert switches[0] == 2 and all(k >= 32 for k in switches[1:])


def test_a_held_minimum_that_no_longer_fits_gives_way_to_the_fuse() -> None:
    ctrl = turn_taking_site(900.0, 900.0)
    first = who_charges(ctrl, T0)
    ctrl.set_capacity(slot_floor(T0), np.full((96, 3), 4.0), ["forecast"] * 96)
    schedules = ctrl.decide(T0 + timedelta(seconds=30))
    assert first and all(s.limit_a == 0 for s in schedules)
    assert ctrl.last_allocation is not None and ctrl.last_allocation.status != "infeasible"


def test_the_minimum_current_mip_plans_what_the_post_processing_loses() -> None:
    # 20 A for three cars of 6-16 A: the LP splits it 6.7 A each and more; zeroing and topping up
    # slot by slot loses about 3 kWh that a MIP over who charges when keeps.
    site = Site(id="s", voltage_v=230.0, grid_limit_a=20.0, fallback_kw=0.0, circuits=(),
                chargers=tuple(Charger(id=f"CP{i}", max_current_a=16.0, min_current_a=6.0) for i in range(3)))
    topo = Topology.from_site(site)
    sessions = [PlanSession("CP0", T0, T0 + timedelta(minutes=60), 4809.0),
                PlanSession("CP1", T0, T0 + timedelta(minutes=45), 6778.0),
                PlanSession("CP2", T0, T0 + timedelta(minutes=60), 6337.0)]
    capacity = np.full((8, 3), 20.0)
    post = plan(topo, capacity, sessions, T0, mip_s=0.0)
    mip = plan(topo, capacity, sessions, T0)
    assert post.plan is not None and mip.plan is not None
    assert sum(mip.plan.planned_wh.values()) >= sum(post.plan.planned_wh.values()) + 2000.0
    assert np.all(mip.plan.limit_a.sum(axis=0) <= 20.0 + 1e-9)
    assert np.all((mip.plan.limit_a == 0) | (mip.plan.limit_a >= 6.0))
    assert all(mip.plan.planned_wh[s.charger_id] <= s.energy_wh + 1e-6 for s in sessions)


def test_a_car_leaving_at_0535_gets_the_0530_slot() -> None:
    # The car leaving at 05:35 can take 32 A for 5 minutes; the car staying takes the 10 minutes
    # after. Counting the leaving car's current against the whole slot, the plan gave the slot to
    # the staying car (a full slot of energy per ampere against a third) and the leaving car 0.
    at = datetime(2026, 3, 3, 5, 30, tzinfo=UTC)
    topo = Topology.from_site(small_site(grid_limit_a=32.0))
    for now in (at, at + timedelta(minutes=2)):
        sessions = [PlanSession("CP0", now, at + timedelta(minutes=5), 20000.0),
                    PlanSession("CP1", now, at + timedelta(hours=2), 80000.0)]
        out = plan(topo, np.full((96, 3), 32.0), sessions, at)
        assert out.plan is not None
        # The slot's limits still fit the site at once: the staying car keeps its minimum (6 A),
        # the leaving car gets the rest (26 A less the 0.1 A step), before its departure.
        limit = out.plan.limit_a[:, 0]
        assert limit[0] >= 32.0 - 6.0 - 0.1 and limit[1] == 6.0 and limit.sum() <= 32.0
        hours = (at + timedelta(minutes=5) - now).total_seconds() / 3600
        assert np.isclose(out.plan.planned_wh["CP0"], limit[0] * 3 * 230.0 * hours)


def test_a_car_leaving_at_0535_charges_online_until_it_leaves() -> None:
    at = datetime(2026, 3, 3, 5, 30, tzinfo=UTC)
    ctrl = Controller(small_site(grid_limit_a=32.0))
    ctrl.set_capacity(slot_floor(at), np.full((96, 3), 32.0), ["forecast"] * 96)
    start_cars(ctrl, at - timedelta(hours=6))
    ctrl.handle(NeedsUpdated("CP0", at, energy_wh=20000.0, departure=at + timedelta(minutes=5)))
    ctrl.handle(NeedsUpdated("CP1", at, energy_wh=80000.0, departure=at + timedelta(hours=2)))
    replan(ctrl, at)
    limits = {s.charger_id: s.limit_a for s in ctrl.decide(at)}
    assert limits["CP0"] >= 25.9 and np.isclose(limits["CP1"], 32.0 - limits["CP0"])
