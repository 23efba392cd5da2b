"""Idle chargers over real websockets: the idle limit as a stack-1 default, what a car plugging in
draws before its TxProfile, the idle default zeroed once the TxProfile is held, decreases first."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from adapters.ocpp.simulator import SimCar, SimulatedCharger
from balancer.events import ChargerSchedule, ProfileResult, SessionStarted
from tests.adapters.ocpp_env import Env, ocpp_config, running_env, wait_for

CHARGERS = [{"id": "A16", "max_current_a": 32}, {"id": "B201", "max_current_a": 32},
            {"id": "E16", "max_current_a": 32, "profile_strategy": "TxDefaultProfile"},
            {"id": "F201", "max_current_a": 32, "profile_strategy": "ChargePointMax"}]


@pytest.fixture
async def env():  # type: ignore[no-untyped-def]
    async with running_env(ocpp_config(CHARGERS)) as e:
        yield e


def late_car(env: Env, charger_id: str, protocol: str, arrive_s: float | None) -> SimulatedCharger:
    """A charger that is idle until a car arrives ``arrive_s`` from now (never when None)."""
    now = datetime.now(UTC)
    car = None if arrive_s is None else SimCar(arrival=now + timedelta(seconds=arrive_s),
                                               departure=now + timedelta(hours=5), energy_wh=30000)
    sim = SimulatedCharger(charger_id, env.url, protocol=protocol, car=car, meter_interval_s=0.2, tick_s=0.05)
    env.chargers.append(sim)
    sim.start()
    return sim


END = datetime.now(UTC) + timedelta(hours=1)
"""The horizon's end, the same for every decision of a test (as within one slot)."""


def idle_schedule(cid: str, limit_a: float, failsafe_a: float = 10.0) -> ChargerSchedule:
    now = datetime.now(UTC)
    periods = ((now, limit_a), (END, failsafe_a))
    return ChargerSchedule(cid, now, limit_a, periods, failsafe_a, idle_periods=periods)


def session_schedule(cid: str, tx: str, limit_a: float, failsafe_a: float = 10.0) -> ChargerSchedule:
    now = datetime.now(UTC)
    return ChargerSchedule(cid, now, limit_a, ((now, limit_a), (END, failsafe_a)), failsafe_a, transaction_id=tx,
                           idle_periods=((now, 0.0), (END, failsafe_a)))


def installed(sim: SimulatedCharger, purpose: str, stack: int) -> dict[str, Any] | None:
    found = [p for (kind, level, _), p in sim.store.profiles.items() if kind == purpose and level == stack]
    return found[0] if found else None


def first_limit(profile: dict[str, Any]) -> float:
    schedule = profile["charging_schedule"]
    schedule = schedule[0] if isinstance(schedule, list) else schedule
    return float(schedule["charging_schedule_period"][0]["limit"])


@pytest.mark.parametrize("protocol", ["ocpp1.6", "ocpp2.0.1"])
async def test_idle_charger_holds_its_idle_limit_and_a_new_car_draws_no_more(env: Env, protocol: str) -> None:
    cid = "A16" if protocol == "ocpp1.6" else "B201"
    sim = late_car(env, cid, protocol, arrive_s=2.0)
    await env.online(cid)
    await env.server.apply([idle_schedule(cid, 8.0)])
    idle = installed(sim, "TxDefaultProfile", 1)
    assert idle is not None and first_limit(idle) == 8.0
    assert idle.get("charging_profile_id", idle.get("id")) == 3  # not the TxProfile's id
    assert first_limit(installed(sim, "TxDefaultProfile", 0) or {}) == 10.0  # the failsafe stays below
    assert sim.limit_now(datetime.now(UTC)) == 8.0

    # The car plugs in: before the balancer says anything, it draws at most the idle limit.
    await wait_for(lambda: env.of(SessionStarted))
    tx = env.of(SessionStarted)[0].transaction_id
    await wait_for(lambda: sim.draw_a > 0)
    assert max(a for _, a in sim.draw_log) <= 8.0

    # The session's TxProfile arrives; once held, the idle default goes to 0 A until the horizon.
    await env.server.apply([session_schedule(cid, tx, 12.0)])
    await wait_for(lambda: sim.draw_a == pytest.approx(12.0))
    idle = installed(sim, "TxDefaultProfile", 1)
    assert idle is not None and first_limit(idle) == 0.0
    pushes = [e.detail for e in env.of(ProfileResult) if e.result == "Accepted"]
    assert pushes.index("TxProfile") < len(pushes) - 1 - pushes[::-1].index("idle TxDefaultProfile")
    assert env.server.charger_status(cid)["idle_limit_a"] == 0.0


@pytest.mark.parametrize(("cid", "protocol", "purpose"), [("E16", "ocpp1.6", "TxDefaultProfile"),
                                                         ("F201", "ocpp2.0.1", "ChargingStationMaxProfile")])
async def test_tx_default_and_max_strategies_carry_the_idle_limit_in_their_profile(
        env: Env, cid: str, protocol: str, purpose: str) -> None:
    sim = late_car(env, cid, protocol, arrive_s=None)
    await env.online(cid)
    await env.server.apply([idle_schedule(cid, 7.0)])
    profile = installed(sim, purpose, 1)
    assert profile is not None and first_limit(profile) == 7.0
    assert profile.get("charging_profile_id", profile.get("id")) == 2
    assert sim.limit_now(datetime.now(UTC)) == 7.0


async def test_lower_idle_limit_is_accepted_before_an_increase_is_sent(env: Env) -> None:
    late_car(env, "A16", "ocpp1.6", arrive_s=None)
    late_car(env, "E16", "ocpp1.6", arrive_s=None)
    await env.online("A16", "E16")
    await env.server.apply([idle_schedule("A16", 9.0), idle_schedule("E16", 6.0)])
    env.events.clear()
    await env.server.apply([idle_schedule("A16", 6.0), idle_schedule("E16", 9.0)])
    pushes = [e for e in env.of(ProfileResult) if e.result == "Accepted"]
    assert [p.charger_id for p in pushes] == ["A16", "E16"]
    assert [p.limit_a for p in pushes] == [6.0, 9.0]
    # Within the deadband an idle increase is not sent; a decrease always is.
    env.events.clear()
    await env.server.apply([idle_schedule("A16", 6.5), idle_schedule("E16", 8.9)])
    assert [e.charger_id for e in env.of(ProfileResult)] == ["E16"]
