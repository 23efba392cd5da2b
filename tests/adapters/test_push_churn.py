"""Push churn (issue 11 item 6): a steady state sends nothing; a real decrease still goes out at once.

A real controller's decisions go to a real OcppServer and simulated chargers over websockets; what
was sent is counted from the server's ``ProfileResult`` events.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from adapters.ocpp.steps import value_at
from balancer.control import Controller, slot_floor
from balancer.events import ChargerOnline, ChargerSchedule, ObedienceChanged, ProfileResult, SessionStarted
from tests.adapters.ocpp_env import Env, ocpp_config, running_env, wait_for

CHARGERS = [{"id": "A16", "max_current_a": 16}, {"id": "B201", "max_current_a": 16}]


@pytest.fixture
async def env():  # type: ignore[no-untyped-def]
    async with running_env(ocpp_config(CHARGERS)) as e:
        yield e


async def _controlled(env: Env) -> Controller:
    """Both chargers in a session, under control, and a controller that knows it, both seen
    keeping their limits in an earlier session (``verified``, as ``tests.balancer.chargers.online``):
    a never-verified charger is held at 0 A in the slots ahead and rises at every slot start."""
    env.charger("A16", "ocpp1.6")
    env.charger("B201", "ocpp2.0.1")
    await wait_for(lambda: len(env.of(SessionStarted)) == 2)
    await env.online("A16", "B201")
    controller = Controller(env.server.config.sites[0], env.server.config.control)
    for event in env.events:
        if isinstance(event, (ChargerOnline, SessionStarted)):
            controller.handle(event)
    for cid in ("A16", "B201"):
        controller.handle(ObedienceChanged(cid, datetime.now(UTC), True, verified=True))
    return controller


def _decide(controller: Controller, now: datetime, capacity_a: float) -> list[ChargerSchedule]:
    horizon = int(controller.settings.plan_horizon_h * 4)
    controller.set_capacity(slot_floor(now), np.full((horizon, 3), capacity_a), ["test"] * horizon)
    return controller.decide(now)


def _sent(env: Env) -> list[ProfileResult]:
    return [e for e in env.of(ProfileResult) if e.result == "Accepted"]


async def test_unchanged_inputs_push_nothing_after_the_first_across_slot_boundaries(env: Env) -> None:
    """Every 5 minutes for an hour the same inputs: the horizon moves on by a slot every 15
    minutes, which is no reason for a push (nor for a new idle default), and nothing else moved."""
    controller = await _controlled(env)
    start = datetime.now(UTC)
    await env.server.apply(_decide(controller, start, 20.0))
    await wait_for(lambda: all(env.server.links[c].pusher.held_a for c in ("A16", "B201")))
    await env.server.apply(_decide(controller, start, 20.0))  # the idle default goes to 0 A once the TxProfile is held
    first = len(_sent(env))
    assert [e.detail for e in _sent(env)].count("idle TxDefaultProfile") == 2
    for k in range(1, 13):
        schedules = _decide(controller, start + timedelta(minutes=5 * k), 20.0)
        assert [s.limit_a for s in schedules] == [10.0, 10.0]
        await env.server.apply(schedules)
    assert len(_sent(env)) == first, [(e.charger_id, e.detail, e.limit_a) for e in _sent(env)[first:]]


async def test_a_decrease_of_any_size_goes_out_at_once_and_a_tiny_rise_waits(env: Env) -> None:
    controller = await _controlled(env)
    start = datetime.now(UTC)
    await env.server.apply(_decide(controller, start, 20.0))
    await wait_for(lambda: all(env.server.links[c].pusher.held_a for c in ("A16", "B201")))
    await env.server.apply(_decide(controller, start, 20.0))
    n = len(_sent(env))
    # 0.2 A less per charger: below the deadband, but what they hold would exceed it. At once.
    await env.server.apply(_decide(controller, start + timedelta(seconds=5), 19.6))
    assert [e.detail for e in _sent(env)[n:]] == ["TxProfile", "TxProfile"]
    assert [env.server.links[c].pusher.held_a for c in ("A16", "B201")] == [9.8, 9.8]
    # Back up by the same 0.2 A (below the deadband, the small-increase timer not due): nothing.
    await env.server.apply(_decide(controller, start + timedelta(seconds=10), 20.0))
    assert len(_sent(env)) == n + 2


async def test_a_fall_only_at_the_horizon_goes_out_when_the_failsafe_falls(env: Env) -> None:
    """The tail is taken as renewed only up to the failsafe: a lower failsafe is a decrease."""
    env.charger("A16", "ocpp1.6")
    await wait_for(lambda: env.of(SessionStarted))
    await env.online("A16")
    now = datetime.now(UTC)
    end = now + timedelta(hours=24)
    held = ChargerSchedule("A16", now, 10.0, ((now, 10.0), (end, 6.0)), 6.0)
    await env.server.apply([held])
    n = len(_sent(env))
    later = now + timedelta(minutes=15)
    moved = ChargerSchedule("A16", later, 10.0, ((later, 10.0), (end + timedelta(minutes=15), 6.0)), 6.0)
    await env.server.apply([moved])
    assert len(_sent(env)) == n
    lower = ChargerSchedule("A16", later, 10.0, ((later, 10.0), (end + timedelta(minutes=15), 5.0)), 5.0)
    await env.server.apply([lower])
    tx = env.server.links["A16"].pusher.held_periods
    assert len(_sent(env)) > n and value_at(tx, end + timedelta(hours=1)) == 5.0


async def test_plans_swapping_slots_ahead_send_nothing_after_the_first_fall(
        env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """Replans that move a car's hour of charging between two equally good slots: each move
    lowers one slot and raises another. Only the first fall goes out; no rise ahead is sent, so
    no later fall has anything to undo. A rise now goes out at once, and alone."""
    import adapters.ocpp.push_plan as push_plan

    monkeypatch.setattr(push_plan, "SMALL_INCREASE_AFTER_S", 0.0)  # not a matter of waiting
    env.charger("A16", "ocpp1.6")
    await wait_for(lambda: env.of(SessionStarted))
    await env.online("A16")
    now = datetime.now(UTC)
    hour, end = timedelta(hours=1), now + timedelta(hours=24)

    def decision(t: datetime, limit_a: float, first_a: float, second_a: float) -> ChargerSchedule:
        return ChargerSchedule("A16", t, limit_a, ((t, limit_a), (now + hour, first_a), (now + 2 * hour, second_a),
                                                   (now + 3 * hour, 0.0), (end, 6.0)), 6.0)

    await env.server.apply([decision(now, 10.0, 10.0, 0.0)])
    n = len(_sent(env))
    for k in range(1, 9):
        t = now + timedelta(seconds=10 * k)
        await env.server.apply([decision(t, 10.0, 0.0, 10.0) if k % 2 else decision(t, 10.0, 10.0, 0.0)])
    held = env.server.links["A16"].pusher.held_periods
    assert len(_sent(env)) == n + 1, [(e.detail, e.limit_a) for e in _sent(env)[n:]]
    assert value_at(held, now + 1.5 * hour) == 0.0 and value_at(held, now + 2.5 * hour) == 0.0
    # A rise now (more than the deadband) goes out at once, without the rises ahead.
    t = now + timedelta(seconds=100)
    await env.server.apply([decision(t, 16.0, 10.0, 10.0)])
    held = env.server.links["A16"].pusher.held_periods
    assert len(_sent(env)) == n + 2 and env.server.links["A16"].pusher.held_a == 16.0
    assert value_at(held, now + 1.5 * hour) == 0.0 and value_at(held, now + 2.5 * hour) == 0.0
    assert value_at(held, end) == 6.0
