"""OCPP server and simulated chargers over real websockets: both versions end to end."""

from __future__ import annotations

import asyncio

import pytest

from adapters.ocpp.simulator import Misbehaviour
from balancer.events import (
    ChargerOffline,
    ChargerOnline,
    MeterSample,
    NeedsUpdated,
    ObedienceChanged,
    ProfileResult,
    SessionStarted,
)
from tests.adapters.ocpp_env import Env, ocpp_config, running_env, schedule, wait_for

CHARGERS = [{"id": "A16", "max_current_a": 32}, {"id": "B201", "max_current_a": 32},
            {"id": "C16", "max_current_a": 32, "integer_amps": True}, {"id": "D201", "max_current_a": 32}]


@pytest.fixture
async def env():  # type: ignore[no-untyped-def]
    async with running_env(ocpp_config(CHARGERS)) as e:
        yield e


@pytest.mark.parametrize("protocol", ["ocpp1.6", "ocpp2.0.1"])
async def test_session_profile_and_obedience(env: Env, protocol: str) -> None:
    cid = "A16" if protocol == "ocpp1.6" else "B201"
    sim = env.charger(cid, protocol)
    await wait_for(lambda: any(isinstance(e, SessionStarted) for e in env.events))
    await env.online(cid)
    online = env.of(ChargerOnline)
    assert online and online[0].protocol == protocol
    await env.server.apply([schedule(cid, 10.0, failsafe_a=8.0, ahead=[(3600, 6.0)])])
    await wait_for(lambda: sim.draw_a == pytest.approx(10.0))
    purposes = [r["purpose"] for r in sim.profile_log if r["result"] == "Accepted"]
    assert purposes[0] == "TxDefaultProfile" and "TxProfile" in purposes
    tx = [r for r in sim.profile_log if r["purpose"] == "TxProfile"][-1]
    assert tx["limits"] == [10.0, 6.0] and tx["starts"] == [0, 3600]
    await wait_for(lambda: any(isinstance(e, MeterSample) and e.current_a[0] == pytest.approx(10.0)
                               for e in env.events))
    results = env.of(ProfileResult)
    assert {r.result for r in results} == {"Accepted"}
    if protocol == "ocpp2.0.1":
        needs = env.of(NeedsUpdated)
        assert needs and needs[0].energy_wh == 30000 and needs[0].source == "iso15118"
    status = env.server.charger_status(cid)
    assert status["connected"] and status["limit_a"] == 10.0 and status["obeys"]


async def test_decreases_are_accepted_before_increases_are_sent(env: Env) -> None:
    a = env.charger("A16", "ocpp1.6")
    b = env.charger("B201", "ocpp2.0.1")
    await wait_for(lambda: len(env.of(SessionStarted)) == 2)
    await env.online("A16", "B201")
    await env.server.apply([schedule("A16", 20.0), schedule("B201", 10.0)])
    await wait_for(lambda: a.draw_a == 20.0 and b.draw_a == 10.0)
    env.events.clear()
    await env.server.apply([schedule("A16", 10.0), schedule("B201", 20.0)])
    pushes = [e for e in env.of(ProfileResult) if e.detail == "TxProfile"]
    assert [p.charger_id for p in pushes] == ["A16", "B201"]
    assert pushes[0].at <= pushes[1].at


async def test_deadband_skips_small_increases_but_never_a_decrease(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    import adapters.ocpp.push_plan as pusher

    env.charger("A16", "ocpp1.6")
    await wait_for(lambda: env.of(SessionStarted))
    await env.online("A16")
    await env.server.apply([schedule("A16", 16.0)])
    n = len(env.of(ProfileResult))
    await env.server.apply([schedule("A16", 16.5)])  # within the 1 A deadband: nothing sent
    assert len(env.of(ProfileResult)) == n
    await env.server.apply([schedule("A16", 16.2)])  # undoes an unsent increase: nothing either
    assert len(env.of(ProfileResult)) == n
    # Slots ahead count too: a small rise an hour ahead waits; a small fall there goes out.
    await env.server.apply([schedule("A16", 16.0, ahead=[(3600, 16.8)])])
    assert len(env.of(ProfileResult)) == n
    await env.server.apply([schedule("A16", 16.0, ahead=[(3600, 15.8)])])
    assert len(env.of(ProfileResult)) == n + 1
    await env.server.apply([schedule("A16", 15.9)])  # a decrease always goes out
    assert len(env.of(ProfileResult)) == n + 2
    monkeypatch.setattr(pusher, "SMALL_INCREASE_AFTER_S", 0.0)  # small increases: once due, sent
    await env.server.apply([schedule("A16", 16.5)])
    assert len(env.of(ProfileResult)) == n + 3 and env.server.charger_status("A16")["limit_a"] == 16.5
    # A small increase goes as far as every decision since the last change did, not to the newest.
    monkeypatch.setattr(pusher, "SMALL_INCREASE_AFTER_S", 0.5)
    for limit in (16.9, 16.7):
        await env.server.apply([schedule("A16", limit)])
    assert len(env.of(ProfileResult)) == n + 3
    await asyncio.sleep(0.6)
    await env.server.apply([schedule("A16", 17.0)])
    assert len(env.of(ProfileResult)) == n + 4 and env.server.charger_status("A16")["limit_a"] == 16.7


async def test_integer_amps_and_tx_profile_refused_falls_back_to_tx_default(env: Env) -> None:
    sim = env.charger("C16", "ocpp1.6", misbehaviour=Misbehaviour(rejects_tx_profile=True))
    await wait_for(lambda: env.of(SessionStarted))
    await env.online("C16")
    await env.server.apply([schedule("C16", 12.7)])
    await wait_for(lambda: sim.draw_a == 12.0)
    accepted = [r for r in sim.profile_log if r["result"] == "Accepted"]
    assert accepted[-1]["purpose"] == "TxDefaultProfile" and accepted[-1]["limits"] == [12.0]
    assert "Rejected" in [e.result for e in env.of(ProfileResult)]


async def test_disobedient_charger_is_flagged(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    import adapters.ocpp.obedience as pusher

    monkeypatch.setattr(pusher, "OBEY_GRACE_S", 0.0)
    env.charger("D201", "ocpp2.0.1", misbehaviour=Misbehaviour(ignores_profiles=True))
    await wait_for(lambda: env.of(SessionStarted))
    await env.online("D201")
    await env.server.apply([schedule("D201", 8.0)])
    await wait_for(lambda: any(not e.obeys for e in env.of(ObedienceChanged)))
    flagged = next(e for e in env.of(ObedienceChanged) if not e.obeys)
    assert flagged.draw_a is not None and flagged.draw_a > 8.0
    assert env.server.charger_status("D201")["obeys"] is False


async def test_reconnect_keeps_the_transaction_and_repushes(env: Env) -> None:
    sim = env.charger("A16", "ocpp1.6", misbehaviour=Misbehaviour(drop_every_s=1.0))
    await wait_for(lambda: env.of(SessionStarted))
    await env.online("A16")
    await env.server.apply([schedule("A16", 14.0)])
    await wait_for(lambda: env.of(ChargerOffline), timeout=5)
    await wait_for(lambda: len(env.of(ChargerOnline)) >= 2, timeout=10)
    assert len(env.of(SessionStarted)) == 1  # the same transaction goes on
    assert env.server.charger_status("A16")["limit_a"] is None  # what it holds is not known now
    # Back under control, the controller's next decision re-pushes the failsafe and the limit.
    await env.server.apply([schedule("A16", 14.0)])
    assert sim.boots >= 2 and env.server.charger_status("A16")["limit_a"] == 14.0
    assert [r["purpose"] for r in sim.profile_log[-2:]] == ["TxDefaultProfile", "TxProfile"]


@pytest.mark.parametrize("protocol", ["ocpp1.6", "ocpp2.0.1"])
async def test_composite_read_back_flags_a_charger_holding_more(env: Env, protocol: str,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import adapters.ocpp.obedience as pusher

    monkeypatch.setattr(pusher, "READ_BACK_DELAY_S", 0.0)
    cid = "A16" if protocol == "ocpp1.6" else "B201"
    sim = env.charger(cid, protocol)
    await wait_for(lambda: env.of(SessionStarted))
    await env.online(cid)
    # The charger accepts the profile but its composite schedule says 20 A: it does not hold 8 A.
    monkeypatch.setattr(sim, "composite", lambda duration: {
        "start_schedule": "2026-03-02T12:00:00Z", "duration": duration, "charging_rate_unit": "A",
        "charging_schedule_period": [{"start_period": 0, "limit": 20.0}]})
    await env.server.apply([schedule(cid, 8.0)])
    await wait_for(lambda: any(not e.obeys for e in env.of(ObedienceChanged)))
    flagged = next(e for e in env.of(ObedienceChanged) if not e.obeys)
    assert flagged.draw_a == pytest.approx(20.0) and "composite schedule" in flagged.detail


async def test_trust_comes_back_only_after_following_for_a_while(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 19 item 7: the composite read-back never clears the flag (it said 'holds 7 A' while the
    car drew 32 A); only TRUST_SAMPLES readings in a row within the limit over TRUST_AFTER_S do."""
    import adapters.ocpp.obedience as pusher

    monkeypatch.setattr(pusher, "OBEY_GRACE_S", 0.0)
    monkeypatch.setattr(pusher, "READ_BACK_DELAY_S", 0.0)
    monkeypatch.setattr(pusher, "TRUST_AFTER_S", 2.0)
    sim = env.charger("D201", "ocpp2.0.1", misbehaviour=Misbehaviour(ignores_profiles=True))
    await wait_for(lambda: env.of(SessionStarted))
    await env.online("D201")
    await env.server.apply([schedule("D201", 8.0)])
    await wait_for(lambda: any(not e.obeys for e in env.of(ObedienceChanged)))
    await env.server.apply([schedule("D201", 7.0)])  # its composite reads back 7 A: no news of its draw
    await wait_for(lambda: env.server.charger_status("D201")["composite_a"] == pytest.approx(7.0))
    await asyncio.sleep(0.5)
    assert [e.obeys for e in env.of(ObedienceChanged)] == [False]
    sim.misbehaviour.ignores_profiles = False  # it follows from now on
    await wait_for(lambda: sim.draw_a == pytest.approx(7.0))
    followed = asyncio.get_running_loop().time()
    await wait_for(lambda: env.server.charger_status("D201")["obeys"], timeout=10)
    assert asyncio.get_running_loop().time() - followed >= 1.9
    trusted = env.of(ObedienceChanged)[-1]
    assert trusted.obeys and "followed its limit" in trusted.detail
