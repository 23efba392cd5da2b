"""Idle chargers (connected, no transaction): they get only what charging cars leave over, at most
their failsafe, and the sum of every limit stays within every node and phase, now and ahead."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from balancer.control import INCREASE_LAG, SLOT_S, Controller, slot_floor
from balancer.events import ChargerSchedule, NeedsUpdated, ProfileResult, SessionStarted
from balancer.model import Charger, Circuit, ControlSettings, Site
from balancer.topology import phase_mask
from tests.balancer.chargers import online as verified_online
from tests.balancer.strategies import sites

T0 = datetime(2026, 3, 2, 18, 0, 7, tzinfo=UTC)
TOL = 1e-6


def make_site(grid_limit_a: float = 40.0) -> Site:
    # CP0, CP1 on a 25 A row; CP2, CP3 on the connection.
    chargers = tuple(Charger(id=f"CP{i}", max_current_a=32.0, min_current_a=6.0, circuit="row" if i < 2 else "")
                     for i in range(4))
    return Site(id="s", voltage_v=230.0, grid_limit_a=grid_limit_a, fallback_kw=11.0,
                circuits=(Circuit(id="row", max_current_a=25.0),), chargers=chargers)


def controller(site: Site, capacity_a: float | np.ndarray, horizon_h: int = 24) -> Controller:
    ctrl = Controller(site, ControlSettings(plan_horizon_h=horizon_h))
    n = horizon_h * 4
    capacity = np.full((n, 3), capacity_a) if np.isscalar(capacity_a) else np.asarray(capacity_a)
    ctrl.set_capacity(slot_floor(T0), capacity, ["forecast"] * len(capacity))
    return ctrl


def online(ctrl: Controller, ids: list[str], *, sessions: tuple[str, ...] | list[str] = ()) -> None:
    for cid in ids:
        verified_online(ctrl, cid, T0, "ocpp1.6")
    for cid in sessions:
        ctrl.handle(SessionStarted(cid, T0, transaction_id=f"tx-{cid}", meter_start_wh=0.0))


def value_at(schedule: ChargerSchedule, t: datetime) -> float:
    value = schedule.periods[0][1]
    for start, limit in schedule.periods:
        if start <= t:
            value = limit
    return value


def node_loads(ctrl: Controller, schedules: dict[str, ChargerSchedule], t: datetime) -> np.ndarray:
    """Per node and phase, what every connected charger may draw at ``t`` by its schedule [A]:
    chargers in a transaction on their car's phases, idle chargers on all their phases."""
    topo = ctrl.topology
    limit = np.zeros(topo.n_chargers)
    car_phases = np.full(topo.n_chargers, 3)
    for i, cid in enumerate(topo.charger_ids):
        if cid in schedules:
            limit[i] = value_at(schedules[cid], t)
        state = ctrl.states[cid]
        if state.transaction_id is not None and state.car_phases is not None:
            car_phases[i] = state.car_phases
    mask = phase_mask(topo, car_phases)
    return np.asarray(topo.ancestors @ (limit[:, None] * mask))


def capacity_at(ctrl: Controller, t: datetime) -> np.ndarray:
    topo = ctrl.topology
    cap, _ = ctrl.capacity_now(t)
    out = np.repeat(topo.node_limit_a[:, None], 3, axis=1).astype(float)
    out[0] = np.minimum(out[0], cap)
    return out


def test_idle_chargers_get_only_what_charging_cars_leave() -> None:
    base = make_site()
    alone = controller(Site(id="s", voltage_v=230.0, grid_limit_a=40.0, fallback_kw=11.0,
                            chargers=base.chargers[2:]), 40.0)  # the same two cars, no idle charger
    online(alone, ["CP2", "CP3"], sessions=["CP2", "CP3"])
    cars_alone = {s.charger_id: s.limit_a for s in alone.decide(T0)}

    ctrl = controller(make_site(), 40.0)
    online(ctrl, ["CP0", "CP1", "CP2", "CP3"], sessions=["CP2", "CP3"])
    schedules = {s.charger_id: s for s in ctrl.decide(T0)}
    # The cars get exactly what they got without idle chargers around: nothing is taken from them.
    assert {cid: schedules[cid].limit_a for cid in ("CP2", "CP3")} == cars_alone
    assert sum(cars_alone.values()) == 40.0
    # The site is fully allocated: nothing left for the idle chargers.
    assert schedules["CP0"].limit_a == 0.0 and schedules["CP1"].limit_a == 0.0
    assert schedules["CP0"].transaction_id is None
    status = ctrl.status(T0)
    by_id = {c["id"]: c for c in status.chargers}
    assert by_id["CP0"]["idle_limit_a"] == 0.0 and by_id["CP0"]["limit_a"] == 0.0
    assert status.idle_allocated_a == (0.0, 0.0, 0.0)


def test_idle_limits_share_the_leftover_up_to_the_failsafe() -> None:
    ctrl = controller(make_site(), 40.0)
    online(ctrl, ["CP0", "CP1", "CP2", "CP3"], sessions=["CP2"])
    ctrl.handle(NeedsUpdated("CP2", T0, max_current_a=16.0))
    schedules = {s.charger_id: s for s in ctrl.decide(T0)}
    assert schedules["CP2"].limit_a == 16.0  # the car first, whatever the idle chargers
    idle = {cid: schedules[cid].limit_a for cid in ("CP0", "CP1", "CP3")}
    failsafe = dict(zip(ctrl.topology.charger_ids, ctrl.failsafe_a, strict=True))
    assert all(v == 0.0 or 6.0 <= v <= failsafe[cid] + TOL for cid, v in idle.items())
    assert sum(idle.values()) > 0  # 24 A are left over: idle chargers do get some
    assert sum(idle.values()) + 16.0 <= 40.0 + TOL
    assert idle["CP0"] + idle["CP1"] <= 25.0 + TOL
    status = {c["id"]: c for c in ctrl.status(T0).chargers}
    assert status["CP0"]["idle_limit_a"] == idle["CP0"]
    assert status["CP2"]["idle_limit_a"] == 0.0  # a charger in a transaction has no idle limit


def test_idle_schedule_shrinks_with_capacity_ahead_and_ends_in_the_failsafe() -> None:
    capacity = np.full((96, 3), 40.0)
    capacity[4:8] = 20.0  # the capacity halves an hour from now
    ctrl = controller(make_site(), capacity)
    online(ctrl, ["CP0", "CP1", "CP2", "CP3"], sessions=["CP2"])
    ctrl.handle(NeedsUpdated("CP2", T0, max_current_a=10.0))
    schedules = {s.charger_id: s for s in ctrl.decide(T0)}
    start = slot_floor(T0)
    for k in range(96):
        t = start + timedelta(seconds=k * SLOT_S)
        load = node_loads(ctrl, schedules, max(t, T0))
        cap = np.repeat(ctrl.topology.node_limit_a[:, None], 3, axis=1).astype(float)
        cap[0] = np.minimum(cap[0], capacity[k])
        assert np.all(load <= cap + TOL), (k, load, cap)
    end = start + timedelta(hours=24)
    failsafe = dict(zip(ctrl.topology.charger_ids, ctrl.failsafe_a, strict=True))
    for cid in ("CP0", "CP1", "CP3"):
        # The failsafe at the horizon (a minute later if it is a rise: see INCREASE_LAG).
        assert schedules[cid].periods[-1][1] == failsafe[cid]
        assert schedules[cid].periods[-1][0] in (end, end + INCREASE_LAG)
        assert schedules[cid].idle_periods == schedules[cid].periods
    # A charger in a transaction: its idle default goes to 0 A until the horizon, then the failsafe.
    assert schedules["CP2"].idle_periods == ((T0, 0.0), (end + INCREASE_LAG, failsafe["CP2"]))


@st.composite
def situations(draw: st.DrawFn) -> tuple[Site, list[str], list[str], dict[str, int], np.ndarray, float]:
    site = draw(sites(max_chargers=12, max_circuits=4))
    ids = [c.id for c in site.chargers]
    connected = [cid for cid in ids if draw(st.booleans())]
    sessions = [cid for cid in connected if draw(st.booleans())]
    phases = {cid: draw(st.sampled_from([1, 3])) for cid in sessions if draw(st.booleans())}
    n_slots = 8
    capacity = np.array(draw(st.lists(st.floats(0.0, site.grid_limit_a * 1.2), min_size=n_slots,
                                      max_size=n_slots)))
    offset_s = draw(st.floats(0.0, SLOT_S - 1))
    return site, connected, sessions, phases, np.repeat(capacity[:, None], 3, axis=1), offset_s


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(situations())
def test_cars_and_idle_limits_fit_every_node_now_and_ahead(
        case: tuple[Site, list[str], list[str], dict[str, int], np.ndarray, float]) -> None:
    site, connected, sessions, phases, capacity, offset_s = case
    ctrl = Controller(site, ControlSettings(plan_horizon_h=2))
    ctrl.set_capacity(slot_floor(T0), capacity, ["forecast"] * len(capacity))
    now = slot_floor(T0) + timedelta(seconds=offset_s)
    for cid in connected:
        verified_online(ctrl, cid, now, "ocpp1.6")
    for cid in sessions:
        ctrl.handle(SessionStarted(cid, now, transaction_id=f"tx-{cid}"))
    for cid, n in phases.items():
        ctrl.handle(NeedsUpdated(cid, now, phases=n))
    schedules = {s.charger_id: s for s in ctrl.decide(now)}
    topo = ctrl.topology
    reserve, mask = ctrl._reserved_a(now)  # offline chargers keep their failsafe reserved
    reserved = np.asarray(topo.ancestors @ (reserve[:, None] * mask))
    for k in range(len(capacity)):
        t = max(now, slot_floor(T0) + timedelta(seconds=k * SLOT_S))
        cap = np.repeat(topo.node_limit_a[:, None], 3, axis=1).astype(float)
        cap[0] = np.minimum(cap[0], capacity[k])
        load = node_loads(ctrl, schedules, t) + reserved
        # The reserve itself may exceed a shrunken capacity ahead; the controller can only give 0.
        limit = np.maximum(cap, reserved)
        assert np.all(load <= limit + TOL), (k, load, cap)
    for i, cid in enumerate(topo.charger_ids):
        if cid in schedules and cid not in sessions:
            idle_a = schedules[cid].limit_a
            assert idle_a <= ctrl.failsafe_a[i] + TOL
            assert idle_a == 0.0 or idle_a >= topo.min_current_a[i] - TOL


def test_idle_default_results_do_not_change_the_held_limit_and_a_new_session_holds_the_idle_limit() -> None:
    ctrl = controller(replace(make_site(), fallback_kw=40.0), 40.0)  # every charger has a failsafe
    online(ctrl, ["CP0", "CP1", "CP2", "CP3"], sessions=["CP2"])
    ctrl.handle(NeedsUpdated("CP2", T0, max_current_a=16.0))
    schedules = {s.charger_id: s for s in ctrl.decide(T0)}
    ctrl.handle(ProfileResult("CP2", T0, 16.0, "Accepted"))
    ctrl.handle(ProfileResult("CP2", T0, 0.0, "Accepted", idle=True))  # the idle default zeroed
    assert ctrl.states["CP2"].held_a == 16.0
    idle_a = schedules["CP3"].limit_a
    assert idle_a > 0
    # A car plugs into CP3: until its TxProfile is held it may draw the idle limit, and an
    # offline charger in a session is reserved at what it holds.
    ctrl.handle(SessionStarted("CP3", T0, transaction_id="tx-new"))
    assert ctrl.states["CP3"].held_a == idle_a
