"""Cars that fall asleep (issue 17 item 5): found, counted, reported, their capacity given to others."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from balancer.control import Controller, slot_floor
from balancer.events import ChargerStatus, MeterSample, NeedsUpdated, SessionStarted
from balancer.model import Charger, ControlSettings, LimitCode, Site
from balancer.sleep import SleepWatch
from tests.balancer.chargers import online

T0 = datetime(2026, 3, 2, 18, 0, tzinfo=UTC)


def site(grid_limit_a: float = 32.0) -> Site:
    return Site(id="s", voltage_v=230.0, grid_limit_a=grid_limit_a, fallback_kw=0.0, circuits=(),
                chargers=tuple(Charger(id=f"CP{i}", max_current_a=32.0, min_current_a=6.0) for i in range(2)))


def controller(**settings: float) -> Controller:
    ctrl = Controller(site(), ControlSettings(**settings))  # type: ignore[arg-type]
    ctrl.set_capacity(slot_floor(T0), np.full((96, 3), 32.0), ["forecast"] * 96)
    for cid in ("CP0", "CP1"):
        online(ctrl, cid, T0, "ocpp1.6")
        ctrl.handle(SessionStarted(cid, T0, transaction_id=f"tx-{cid}", meter_start_wh=0.0))
        ctrl.handle(NeedsUpdated(cid, T0, energy_wh=40000.0, departure=T0 + timedelta(hours=8)))
    return ctrl


def step(ctrl: Controller, at: datetime, draws: dict[str, float]) -> dict[str, float]:
    """Meter values of what each car draws (its limit if it is awake), then a decision."""
    for cid, amps in draws.items():
        ctrl.handle(MeterSample(cid, at, current_a=(amps, amps, amps)))
    schedules = ctrl.decide(at)
    assert sum(s.limit_a for s in schedules) <= 32.0 + 1e-9
    return {s.charger_id: s.limit_a for s in schedules}


def test_a_car_that_does_not_resume_is_found_asleep_and_its_capacity_goes_to_the_other() -> None:
    ctrl = controller(car_asleep_after_s=300.0, car_wake_retry_s=1800.0)
    limits = step(ctrl, T0, {})
    assert limits["CP0"] >= 6.0 and limits["CP1"] >= 6.0  # both raised from 0
    ctrl.handle(ChargerStatus("CP0", T0, "SuspendedEV"))
    at = T0
    for _ in range(4):  # CP0 never draws; within the timeout it keeps its minimum
        at += timedelta(seconds=60)
        limits = step(ctrl, at, {"CP0": 0.0, "CP1": limits["CP1"]})
        assert limits["CP0"] >= 6.0
    at = T0 + timedelta(seconds=300)
    limits = step(ctrl, at, {"CP0": 0.0, "CP1": limits["CP1"]})
    assert limits == {"CP0": 0.0, "CP1": 32.0}
    status = {c["id"]: c for c in ctrl.status(at).chargers}
    assert status["CP0"]["limit_reason"]["code"] == LimitCode.CAR_ASLEEP.value
    assert status["CP0"]["car_asleep"] is True and status["CP0"]["asleep_count"] == 1
    assert ctrl.sleep.total == 1
    assert [s.charger_id for s in ctrl.plan_request(at).sessions] == ["CP1"]

    # Every car_wake_retry_s it is offered its minimum again; no draw: it sleeps on, not counted again.
    at += timedelta(seconds=1800)
    limits = step(ctrl, at, {"CP0": 0.0, "CP1": 32.0})
    assert limits["CP0"] >= 6.0
    at += timedelta(seconds=300)
    limits = step(ctrl, at, {"CP0": 0.0, "CP1": limits["CP1"]})
    assert limits["CP0"] == 0.0 and ctrl.sleep.total == 1

    # It draws again (woken at the car): awake, planned and given current again.
    at += timedelta(seconds=1800)
    limits = step(ctrl, at, {"CP0": 0.0, "CP1": 32.0})
    ctrl.handle(ChargerStatus("CP0", at, "Charging"))
    at += timedelta(seconds=60)
    limits = step(ctrl, at, {"CP0": limits["CP0"], "CP1": limits["CP1"]})
    assert not ctrl.sleep.asleep[0] and limits["CP0"] >= 6.0
    assert ctrl.status(at).chargers[0]["limit_reason"]["code"] != LimitCode.CAR_ASLEEP.value
    assert len(ctrl.plan_request(at).sessions) == 2


def test_a_car_without_meter_values_or_status_is_never_taken_for_asleep() -> None:
    ctrl = controller(car_asleep_after_s=300.0)
    step(ctrl, T0, {})
    limits = step(ctrl, T0 + timedelta(seconds=900), {})
    assert limits["CP0"] >= 6.0 and ctrl.sleep.total == 0


def test_detection_off_at_zero() -> None:
    ctrl = controller(car_asleep_after_s=0.0)
    step(ctrl, T0, {})
    ctrl.handle(ChargerStatus("CP0", T0, "SuspendedEV"))
    limits = step(ctrl, T0 + timedelta(seconds=900), {"CP0": 0.0, "CP1": 16.0})
    assert limits["CP0"] >= 6.0 and ctrl.sleep.total == 0


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.floats(0.0, 32.0), st.booleans(), st.booleans(), st.integers(1, 600)),
                min_size=1, max_size=40))
def test_only_a_car_offered_its_minimum_that_did_not_draw_since_is_found_asleep(
        steps: list[tuple[float, bool, bool, int]]) -> None:
    watch = SleepWatch(1, after_s=300.0, retry_s=1800.0)
    now, limit, last_draw = 0.0, 0.0, -np.inf
    raises: list[float] = []  # times the limit rose to 6 A or more, while it has stayed above 0
    for new_limit, draws, suspended, dt in steps:
        now += dt
        drawing = draws and limit > 0  # a car at 0 A cannot draw
        found_before = watch.total
        watch.observe(now, np.array([True]), np.array([drawing]), np.array([not drawing or suspended]),
                      np.array([False]))
        if drawing:
            last_draw = now
            assert not watch.asleep[0]
        if watch.total > found_before:
            assert any(now - r >= 300.0 and r >= last_draw for r in raises), (raises, last_draw, now)
        before = limit
        limit = 0.0 if watch.sleeping(now)[0] or new_limit < 6.0 else new_limit
        watch.record(now, np.array([before]), np.array([limit]), np.array([6.0]))
        raises = [] if limit <= 0 else raises + ([now] if limit > before else [])


def test_an_asleep_car_that_asks_for_current_at_0_amperes_is_awake_at_once() -> None:
    ctrl = controller(car_asleep_after_s=300.0, car_wake_retry_s=1800.0)
    step(ctrl, T0, {})
    ctrl.handle(ChargerStatus("CP0", T0, "SuspendedEV"))
    at = T0 + timedelta(seconds=300)
    assert step(ctrl, at, {"CP0": 0.0, "CP1": 16.0})["CP0"] == 0.0 and ctrl.sleep.asleep[0]
    # At 0 A its meter reads 0 either way: the charger's SuspendedEVSE says the car wants current.
    at += timedelta(seconds=60)
    ctrl.handle(ChargerStatus("CP0", at, "SuspendedEVSE"))
    limits = step(ctrl, at, {"CP0": 0.0, "CP1": 32.0})
    assert not ctrl.sleep.asleep[0] and limits["CP0"] >= 6.0
