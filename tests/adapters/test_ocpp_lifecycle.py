"""A charger's lifecycle over real websockets: boot, capabilities, reconnects, profile-kind fallbacks
(issue 11 items 2 and 3)."""

from __future__ import annotations

import asyncio

import pytest

from adapters.ocpp.simulator import Misbehaviour
from balancer.events import ChargerOffline, ChargerOnline, ProfileResult, SessionStarted
from tests.adapters.ocpp_env import Env, ocpp_config, running_env, schedule, wait_for

CHARGERS = [{"id": "A16", "max_current_a": 32}, {"id": "B201", "max_current_a": 32}]


@pytest.fixture
async def env():  # type: ignore[no-untyped-def]
    async with running_env(ocpp_config(CHARGERS)) as e:
        yield e


@pytest.mark.parametrize("protocol", ["ocpp1.6", "ocpp2.0.1"])
async def test_no_profile_before_the_boot_and_the_capabilities(env: Env, protocol: str) -> None:
    """A charger that boots a while after connecting and takes only W: nothing is sent to it
    before its BootNotification is answered and its capabilities read, then W profiles only."""
    cid = "A16" if protocol == "ocpp1.6" else "B201"
    sim = env.charger(cid, protocol, misbehaviour=Misbehaviour(boot_delay_s=1.0, watts_only=True))
    await wait_for(lambda: env.server.links[cid].connected)
    # A decision while the charger is connected but has not booted yet.
    await env.server.apply([schedule(cid, 10.0, failsafe_a=8.0)])
    await wait_for(lambda: env.of(ChargerOnline) and sim.booted_at is not None and env.of(SessionStarted))
    await env.server.apply([schedule(cid, 10.0, failsafe_a=8.0)])
    await wait_for(lambda: sim.draw_a == pytest.approx(10.0))
    assert sim.profile_log, "no profile arrived"
    assert all(r["booted"] for r in sim.profile_log), "a profile arrived before the BootNotification"
    assert {(r["unit"], r["result"]) for r in sim.profile_log} == {("W", "Accepted")}
    assert env.server.charger_status(cid)["capabilities"]["rate_units"] == ["W"]


@pytest.mark.parametrize("protocol", ["ocpp1.6", "ocpp2.0.1"])
async def test_transient_errors_do_not_switch_the_profile_kind(env: Env, protocol: str) -> None:
    """Three CALLERRORs to a TxProfile are trouble, not a refusal: the next push is a TxProfile."""
    cid = "A16" if protocol == "ocpp1.6" else "B201"
    sim = env.charger(cid, protocol, misbehaviour=Misbehaviour(tx_profile_errors=3))
    await wait_for(lambda: env.of(SessionStarted))
    await env.online(cid)
    await env.server.apply([schedule(cid, 12.0)])
    assert [e.result for e in env.of(ProfileResult) if e.detail.startswith("TxProfile")] == ["CallError"] * 3
    # Its decrease did not land: flagged, its draw reserved, retried in the background until it
    # takes a limit again (no higher than the draw reserved for it).
    await wait_for(lambda: not env.server.links[cid].pusher.refusing)
    await env.server.apply([schedule(cid, 12.0)])
    await wait_for(lambda: sim.draw_a == pytest.approx(12.0))
    assert [(r["purpose"], r["result"]) for r in sim.profile_log if r["limits"] == [12.0]] == [
        ("TxProfile", "Accepted")]
    assert env.server.links[cid].pusher.tx_profile_refused is False


async def test_a_rejected_tx_profile_is_tried_again_after_a_reconnect(env: Env) -> None:
    """A Rejected TxProfile falls back to TxDefaultProfile for that transaction; a reconnect
    tries the TxProfile again (the charger may have changed), then falls back again."""
    sim = env.charger("A16", "ocpp1.6", misbehaviour=Misbehaviour(rejects_tx_profile=True, drop_every_s=1.5))
    await wait_for(lambda: env.of(SessionStarted))
    await env.online("A16")
    await env.server.apply([schedule("A16", 12.0)])
    assert [r["purpose"] for r in sim.profile_log[-2:]] == ["TxProfile", "TxDefaultProfile"]
    await wait_for(lambda: env.of(ChargerOffline), timeout=5)
    await wait_for(lambda: len(env.of(ChargerOnline)) >= 2, timeout=10)
    n = len(sim.profile_log)
    await env.server.apply([schedule("A16", 11.0)])
    assert [(r["purpose"], r["result"]) for r in sim.profile_log[n:]] == [
        ("TxDefaultProfile", "Accepted"), ("TxProfile", "Rejected"), ("TxDefaultProfile", "Accepted")]
    assert sim.limit_now(sim.clock()) == pytest.approx(11.0)


@pytest.mark.parametrize("protocol", ["ocpp1.6", "ocpp2.0.1"])
async def test_charge_point_max_is_not_capped_by_the_failsafe(protocol: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 11 item 4: a charger draws min(station maximum, Tx/TxDefault). With the limit in a
    stack-1 maximum, the failsafe must not be a TxDefault below it; the status reports what the
    charger's composite schedule allows."""
    import adapters.ocpp.obedience as pusher

    monkeypatch.setattr(pusher, "READ_BACK_DELAY_S", 0.0)
    cid = "M16" if protocol == "ocpp1.6" else "M201"
    config = ocpp_config([{"id": cid, "max_current_a": 32, "profile_strategy": "ChargePointMax"}])
    async with running_env(config) as env:
        sim = env.charger(cid, protocol)
        await wait_for(lambda: env.of(SessionStarted))
        await env.online(cid)
        await env.server.apply([schedule(cid, 14.5, failsafe_a=6.4)])
        await wait_for(lambda: sim.draw_a > 0)
        assert sim.limit_now(sim.clock()) == pytest.approx(14.5)
        assert sim.draw_a == pytest.approx(14.5)
        await wait_for(lambda: env.server.charger_status(cid)["composite_a"] is not None)
        assert env.server.charger_status(cid)["composite_a"] == pytest.approx(14.5)
        # The balancer gone, the station maximum at stack 0 (the failsafe) is what remains.
        sim.store.clear(profile_id=2)
        assert sim.limit_now(sim.clock()) == pytest.approx(6.4)


async def test_a_transaction_ending_during_a_rejected_tx_profile_is_no_endless_loop(env: Env) -> None:
    """A TxProfile Rejected while the charger's transaction ended meanwhile: the fallback logic
    asked for the TxProfile again (the refusal was noted for a transaction that no longer runs),
    round after round without end (the storms of thousands of rejections in ``balancer demo``)."""
    sim = env.charger("A16", "ocpp1.6", misbehaviour=Misbehaviour(rejects_tx_profile=True, answer_delay_s=0.3))
    await wait_for(lambda: env.of(SessionStarted))
    await env.online("A16")
    link = env.server.links["A16"]
    tx = link.transaction_id
    assert tx is not None
    push = asyncio.get_running_loop().create_task(env.server.apply([schedule("A16", 12.0, transaction_id=tx)]))
    await wait_for(lambda: link.pusher.last_push is not None)  # the failsafe is out, the TxProfile next
    link.transaction_ended(tx)  # the session ends while the TxProfile is on its way
    await asyncio.sleep(2.0)
    rejected = [r for r in sim.profile_log if r["purpose"] == "TxProfile" and r["result"] == "Rejected"]
    assert len(rejected) <= 1
    assert not link.pusher.refusing  # a moved transaction is no refusal
    push.cancel()
