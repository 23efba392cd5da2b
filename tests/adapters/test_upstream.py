"""Local controller mode against a plain CSMS (the ``ocpp`` package's routing): real sockets,
simulated chargers, frames compared byte for byte on both wires."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from ocpp.v16 import call as call16

from adapters.ocpp.simulator import SimCar, SimulatedCharger
from adapters.ocpp.upstream_frames import OWN_PROFILE_ID_BASE
from balancer.config import parse_config
from balancer.events import SessionStarted, SessionStopped
from tests.adapters.ocpp_env import Env, schedule, wait_for
from tests.adapters.upstream_csms import PlainCsms


def _config(csms_url: str, state_dir: Path, **upstream: Any) -> Any:
    return parse_config({
        "sites": [{"id": "s", "grid_limit_a": 200, "fallback_kw": 20,
                   "chargers": [{"id": "A16", "max_current_a": 32}, {"id": "B201", "max_current_a": 32}]}],
        "ocpp": {"host": "127.0.0.1", "port": 0, "response_timeout_s": 2.0,
                 "upstream": {"url": csms_url, "answer_timeout_s": 1.0, "reconnect_max_s": 0.5, **upstream}},
        "state_dir": str(state_dir),
    })


@pytest.fixture
async def csms() -> AsyncIterator[PlainCsms]:
    server = PlainCsms()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def env(csms: PlainCsms, tmp_path: Path) -> AsyncIterator[Env]:
    e = Env(_config(csms.url, tmp_path))
    await e.start()
    yield e
    await e.stop()


def _calls(frames: list[str]) -> list[list[Any]]:
    return [f for f in map(json.loads, frames) if f[0] == 2]


def _sim(env: Env, cid: str, protocol: str, *, arrive_s: float = -1.0, stay_s: float = 3600.0) -> SimulatedCharger:
    now = datetime.now(UTC)
    car = SimCar(arrival=now + timedelta(seconds=arrive_s), departure=now + timedelta(seconds=stay_s),
                 energy_wh=30000)
    sim = SimulatedCharger(cid, env.url, protocol=protocol, car=car, meter_interval_s=0.2, tick_s=0.05)
    env.chargers.append(sim)
    sim.start()
    return sim


def _charger_calls(sim: SimulatedCharger) -> list[str]:
    return [f for d, f in sim.wire if d == "out" and f.startswith("[2")]


@pytest.mark.parametrize("protocol", ["ocpp1.6", "ocpp2.0.1"])
async def test_transparent_boot_and_transaction(env: Env, csms: PlainCsms, protocol: str) -> None:
    cid = "A16" if protocol == "ocpp1.6" else "B201"
    sim = _sim(env, cid, protocol)
    await wait_for(lambda: env.of(SessionStarted))
    await env.online(cid)
    await wait_for(lambda: len(csms.frames(cid, "in")) >= 6)
    # Every charger CALL the CSMS got is byte for byte one the charger sent, in the same order.
    sent = _charger_calls(sim)
    got = [f for f in csms.frames(cid, "in") if f.startswith("[2")]
    assert got == sent[:len(got)]
    assert {json.loads(f)[2] for f in got} >= {"BootNotification", "StatusNotification"}
    # Every answer the charger got to its calls is the CSMS's, byte for byte.
    answers_to_charger = [f for d, f in sim.wire if d == "in" and f[1] in "34"]
    csms_answers = set(csms.frames(cid, "out"))
    charger_ids = {json.loads(f)[1] for f in sent}
    mine = [f for f in answers_to_charger if json.loads(f)[1] in charger_ids]
    assert mine and all(f in csms_answers for f in mine)
    # The balancer's own calls (configuration reads, profiles) never reach the CSMS, nor their answers.
    actions_at_csms = {json.loads(f)[2] for f in got}
    assert not actions_at_csms & {"GetConfiguration", "GetVariables", "SetChargingProfile"}
    answers_from_charger = [json.loads(f)[1] for d, f in sim.wire if d == "out" and f[1] in "34"]
    assert answers_from_charger  # it answered the balancer's calls ...
    assert not [f for f in csms.frames(cid, "in") if f[1] in "34"]  # ... none of which went to the CSMS
    # The balancer observed the session by the CSMS's transaction id (1.6: the CSMS assigns it).
    started = env.of(SessionStarted)[0]
    if protocol == "ocpp1.6":
        start_answer = next(json.loads(f) for f in csms.frames(cid, "out")
                            if "transactionId" in json.loads(f)[2] if f.startswith("[3"))
        assert started.transaction_id == str(start_answer[2]["transactionId"]) == sim.transaction_id
    else:
        assert started.transaction_id == sim.transaction_id
    # Its limit goes as the station maximum (connector/EVSE 0), with ids out of the CSMS's way.
    await env.server.apply([schedule(cid, 11.0, failsafe_a=7.0, transaction_id=started.transaction_id)])
    await wait_for(lambda: sim.draw_a == pytest.approx(11.0))
    purpose = "ChargePointMaxProfile" if protocol == "ocpp1.6" else "ChargingStationMaxProfile"
    assert {k[0] for k in sim.store.profiles} == {purpose} and {k[2] for k in sim.store.profiles} == {0}
    ids = {p.get("charging_profile_id", p.get("id")) for p in sim.store.profiles.values()}
    assert ids == {OWN_PROFILE_ID_BASE + 1, OWN_PROFILE_ID_BASE + 2}


async def test_remote_stop_and_start_from_the_csms(env: Env, csms: PlainCsms) -> None:
    sim = _sim(env, "A16", "ocpp1.6", arrive_s=3600)
    await env.online("A16")
    await wait_for(lambda: "A16" in csms.cps)
    cp = csms.cps["A16"]
    started = await cp.call(call16.RemoteStartTransaction(id_tag="TAG-REMOTE"))
    assert started.status == "Accepted"
    await wait_for(lambda: env.of(SessionStarted) and sim.transaction_id is not None)
    tx = int(sim.transaction_id or 0)
    # The CSMS's call reached the charger unchanged, with the CSMS's message id.
    remote = [f for f in csms.frames("A16", "out") if '"RemoteStartTransaction"' in f]
    assert remote and remote[0] in [f for d, f in sim.wire if d == "in"]
    stopped = await cp.call(call16.RemoteStopTransaction(transaction_id=tx))
    assert stopped.status == "Accepted"
    await wait_for(lambda: env.of(SessionStopped))
    assert env.of(SessionStopped)[0].transaction_id == str(tx)
    await wait_for(lambda: any('"StopTransaction"' in f for f in csms.frames("A16", "in")))
    stop = next(json.loads(f) for f in csms.frames("A16", "in") if '"StopTransaction"' in f)
    assert stop[3]["transactionId"] == tx and stop[3]["reason"] == "Remote"


async def test_csms_profiles_combined_with_ours(env: Env, csms: PlainCsms) -> None:
    sim = _sim(env, "A16", "ocpp1.6")
    await wait_for(lambda: env.of(SessionStarted))
    await env.online("A16")
    tx = env.of(SessionStarted)[0].transaction_id
    await env.server.apply([schedule("A16", 16.0, failsafe_a=7.0, transaction_id=tx)])
    await wait_for(lambda: sim.draw_a == pytest.approx(16.0))
    cp = csms.cps["A16"]
    start = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")

    def profile(purpose: str, limit: float, pid: int, **extra: Any) -> dict[str, Any]:
        return {"charging_profile_id": pid, "stack_level": 0, "charging_profile_purpose": purpose,
                "charging_profile_kind": "Absolute", **extra,
                "charging_schedule": {"start_schedule": start, "charging_rate_unit": "A",
                                      "charging_schedule_period": [{"start_period": 0, "limit": limit}]}}

    # The CSMS's own station maximum: combined with ours (lower wins), answered Accepted.
    answer = await cp.call(call16.SetChargingProfile(connector_id=0, cs_charging_profiles=profile(
        "ChargePointMaxProfile", 9.0, 1)))
    assert answer.status == "Accepted"
    await wait_for(lambda: sim.draw_a == pytest.approx(9.0))
    assert all(p["charging_profile_purpose"] == "ChargePointMaxProfile" for p in sim.store.profiles.values())
    # A second, higher one of the CSMS's does not lift the first: the lowest of them all caps ours.
    answer = await cp.call(call16.SetChargingProfile(connector_id=0, cs_charging_profiles={
        **profile("ChargePointMaxProfile", 14.0, 7), "stack_level": 3}))
    assert answer.status == "Accepted"
    await asyncio.sleep(0.5)
    assert sim.draw_a == pytest.approx(9.0)
    # Raising ours leaves the CSMS's cap in force; lowering below it wins.
    await env.server.apply([schedule("A16", 20.0, failsafe_a=7.0, transaction_id=tx)])
    await asyncio.sleep(0.5)
    assert sim.draw_a == pytest.approx(9.0)
    await env.server.apply([schedule("A16", 8.0, failsafe_a=7.0, transaction_id=tx)])
    await wait_for(lambda: sim.draw_a == pytest.approx(8.0))
    # A TxProfile of the CSMS passes through and applies beneath ours; its id 1 does not replace ours.
    answer = await cp.call(call16.SetChargingProfile(connector_id=1, cs_charging_profiles=profile(
        "TxProfile", 6.0, 1, transaction_id=int(tx))))
    assert answer.status == "Accepted"
    await wait_for(lambda: sim.draw_a == pytest.approx(6.0))
    assert len(sim.store.profiles) == 3
    # Its station maximum cleared: ours alone again above the TxProfile.
    cleared = await cp.call(call16.ClearChargingProfile(charging_profile_purpose="ChargePointMaxProfile"))
    assert cleared.status == "Accepted"
    await env.server.apply([schedule("A16", 12.0, failsafe_a=7.0, transaction_id=tx)])
    cleared = await cp.call(call16.ClearChargingProfile(charging_profile_purpose="TxProfile"))
    await wait_for(lambda: sim.draw_a == pytest.approx(12.0))


async def test_csms_down_during_a_transaction_then_back(csms: PlainCsms, tmp_path: Path) -> None:
    env = Env(_config(csms.url, tmp_path))
    await env.start()
    try:
        sim = _sim(env, "A16", "ocpp1.6", arrive_s=3600)
        await env.online("A16")
        await wait_for(lambda: any('"BootNotification"' in f for f in csms.frames("A16", "in")))
        await csms.stop()
        outage_from = len(_charger_calls(sim))
        # The car arrives while the CSMS is away: the balancer answers, controls, queues.
        sim.remote_start()
        await wait_for(lambda: env.of(SessionStarted) and sim.transaction_id is not None)
        local_tx = sim.transaction_id
        await env.server.apply([schedule("A16", 10.0, failsafe_a=7.0, transaction_id=local_tx)])
        await wait_for(lambda: sim.draw_a == pytest.approx(10.0))
        await asyncio.sleep(1.0)  # meter values pile up
        await sim.remote_stop(str(local_tx))
        await wait_for(lambda: env.of(SessionStopped))
        during = _charger_calls(sim)[outage_from:]
        status = env.server.charger_status("A16")
        assert status["upstream_queued"] >= 4 and not status["upstream_connected"]
        await csms.start()  # back, same port
        await wait_for(lambda: env.server.charger_status("A16")["upstream_queued"] == 0, timeout=20)
        replayed = [json.loads(f) for f in csms.frames("A16", "in") if f.startswith("[2")]
        expected = [json.loads(f) for f in during if json.loads(f)[2] not in ("Heartbeat", "Authorize")]
        # Nothing lost, order kept, same message ids.
        assert [f[1] for f in replayed[-len(expected):]] == [f[1] for f in expected]
        start_answer = next(json.loads(f) for f in csms.frames("A16", "out")
                            if f.startswith("[3") and "transactionId" in json.loads(f)[2])
        remote_tx = start_answer[2]["transactionId"]
        assert str(remote_tx) != local_tx
        # Ids mapped in every later message: the CSMS sees only its own transaction id.
        for frame in replayed:
            if frame[2] in ("MeterValues", "StopTransaction") and "transactionId" in frame[3]:
                assert frame[3]["transactionId"] == remote_tx
        assert any(f[2] == "StopTransaction" for f in replayed)
        counters = env.server.counters
        assert counters["upstream_queued"] == counters["upstream_replayed"] >= len(expected)
        assert counters["upstream_local_answers"] >= len(during)
    finally:
        await env.stop()


async def test_slow_csms_answered_locally_late_answer_consumed(env: Env, csms: PlainCsms) -> None:
    csms.answer_delay_s = 1.6  # beyond answer_timeout_s (1 s)
    sim = _sim(env, "A16", "ocpp1.6")
    await wait_for(lambda: env.of(SessionStarted))
    await env.online("A16")
    await asyncio.sleep(2.5)
    # One answer per charger call: the balancer's in time, the CSMS's late one never forwarded.
    sent_ids = [json.loads(f)[1] for f in _charger_calls(sim)]
    answered = [json.loads(f)[1] for d, f in sim.wire if d == "in" and f[1] in "34"]
    for uid in sent_ids:
        assert answered.count(uid) <= 1
    assert sim.transaction_id is not None
    # The CSMS's id for the balancer's transaction is mapped: its meter values carry the CSMS's id,
    # never the balancer's (they wait for the late answer that tells it).
    await wait_for(lambda: any('"MeterValues"' in f and str(5001) in f for f in csms.frames("A16", "in")))
    assert sim.transaction_id != "5001"
    meter_txs = {json.loads(f)[3].get("transactionId") for f in csms.frames("A16", "in") if '"MeterValues"' in f}
    assert meter_txs == {5001}
    starts = [f for f in _charger_calls(sim) if '"StartTransaction"' in f]
    assert len(starts) == 1 and [f for f in csms.frames("A16", "in") if '"StartTransaction"' in f] == starts


async def test_charger_reconnecting(env: Env, csms: PlainCsms) -> None:
    sim = _sim(env, "A16", "ocpp1.6", arrive_s=3600)
    await env.online("A16")
    await wait_for(lambda: csms.connections == 1)
    await sim.stop()
    await wait_for(lambda: not env.server.links["A16"].connected)
    sim2 = _sim(env, "A16", "ocpp1.6", arrive_s=3600)
    await wait_for(lambda: csms.connections == 2)
    await env.online("A16")
    boots = [f for f in csms.frames("A16", "in") if '"BootNotification"' in f]
    assert len(boots) == 2 and boots[-1] in _charger_calls(sim2)


async def test_more_chargers_than_a_connection_pool_each_get_their_csms_link(csms: PlainCsms, tmp_path: Path) -> None:
    n = 120  # aiohttp's default pool holds 100 connections: the 101st would wait forever
    config = parse_config({
        "sites": [{"id": "s", "grid_limit_a": 2000, "fallback_kw": 20,
                   "chargers": [{"id": f"P{i}", "max_current_a": 16} for i in range(n)]}],
        "ocpp": {"host": "127.0.0.1", "port": 0, "upstream": {"url": csms.url, "answer_timeout_s": 5.0}},
        "state_dir": str(tmp_path),
    })
    env = Env(config)
    await env.start()
    import aiohttp
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    sockets = []
    try:
        for i in range(n):
            sockets.append(await session.ws_connect(f"{env.url}/P{i}", protocols=("ocpp1.6",)))
        await wait_for(lambda: csms.connections == n, timeout=30)
        assert all(env.server.charger_status(f"P{i}")["upstream_connected"] for i in range(n))
    finally:
        for ws in sockets:
            await ws.close()
        await session.close()
        await env.stop()


async def test_offline_authorize_reject_while_the_csms_was_never_reachable(tmp_path: Path) -> None:
    down = PlainCsms()
    await down.start()
    url = down.url
    await down.stop()  # a port where nothing listens
    env = Env(_config(url, tmp_path, offline_authorize="reject"))
    await env.start()
    try:
        sim = _sim(env, "A16", "ocpp1.6")
        await env.online("A16")  # controlled all the same: booted on the balancer's answer
        await wait_for(lambda: any('"StartTransaction"' in f for d, f in sim.wire if d == "out"))
        await asyncio.sleep(0.3)
        answers = {json.loads(f)[1]: json.loads(f) for d, f in sim.wire if d == "in" and f.startswith("[3")}
        start = next(json.loads(f) for f in _charger_calls(sim) if '"StartTransaction"' in f)
        assert answers[start[1]][2]["idTagInfo"]["status"] == "Invalid"
        # (The simulator charges on regardless, as with ocpp.authorize: reject_all in standalone mode.)
        queued = env.server.upstream.queue.frames("A16") if env.server.upstream else []
        assert [json.loads(f)[2] for f in queued][:1] == ["BootNotification"]
        assert "Authorize" not in {json.loads(f)[2] for f in queued}
    finally:
        await env.stop()


async def test_a_csms_clear_all_never_takes_our_limits_off_the_charger(env: Env, csms: PlainCsms) -> None:
    sim = _sim(env, "A16", "ocpp1.6")
    await wait_for(lambda: env.of(SessionStarted))
    await env.online("A16")
    tx = env.of(SessionStarted)[0].transaction_id
    await env.server.apply([schedule("A16", 11.0, failsafe_a=7.0, transaction_id=tx)])
    await wait_for(lambda: sim.draw_a == pytest.approx(11.0))
    start = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    cp = csms.cps["A16"]
    await cp.call(call16.SetChargingProfile(connector_id=1, cs_charging_profiles={
        "charging_profile_id": 1, "stack_level": 0, "charging_profile_purpose": "TxProfile",
        "charging_profile_kind": "Absolute", "transaction_id": int(tx),
        "charging_schedule": {"start_schedule": start, "charging_rate_unit": "A",
                              "charging_schedule_period": [{"start_period": 0, "limit": 8.0}]}}))
    await wait_for(lambda: sim.draw_a == pytest.approx(8.0))
    answer = await cp.call(call16.ClearChargingProfile())  # no filter: "every profile"
    assert answer.status == "Accepted"
    # The CSMS's TxProfile is gone, ours were never touched: the charger never stood without a limit.
    await wait_for(lambda: sim.draw_a == pytest.approx(11.0))
    assert {k[0] for k in sim.store.profiles} == {"ChargePointMaxProfile"} and len(sim.store.profiles) == 2
    clears = [json.loads(f)[3] for d, f in sim.wire if d == "in" and '"ClearChargingProfile"' in f]
    assert clears and all(c.get("chargingProfilePurpose") in ("TxProfile", "TxDefaultProfile") for c in clears)



async def test_wss_to_a_csms_with_a_private_ca(tmp_path: Path) -> None:
    import ssl
    import subprocess
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    done = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                           str(cert), "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                          capture_output=True)
    assert done.returncode == 0, done.stderr
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(cert), str(key))
    tls = PlainCsms(ssl_context=context)
    await tls.start()
    untrusted = Env(_config(tls.url, tmp_path / "a"))  # the system's CAs do not know this one
    trusted = Env(_config(tls.url, tmp_path / "b", ca_file=str(cert)))
    await untrusted.start()
    await trusted.start()
    try:
        a = SimulatedCharger("A16", untrusted.url, tick_s=0.05)
        b = SimulatedCharger("A16", trusted.url, tick_s=0.05)
        untrusted.chargers.append(a)
        trusted.chargers.append(b)
        a.start()
        b.start()
        await untrusted.online("A16")
        await trusted.online("A16")
        await wait_for(lambda: tls.connections == 1 and any('"BootNotification"' in f for f in tls.frames("A16", "in")))
        await asyncio.sleep(0.5)
        assert tls.connections == 1  # only the one that trusts the CSMS's certificate got through
        assert untrusted.server.charger_status("A16")["upstream_queued"] >= 1
        assert trusted.server.charger_status("A16")["upstream_connected"]
    finally:
        await untrusted.stop()
        await trusted.stop()
        await tls.stop()


async def test_a_csms_call_reusing_a_pending_balancer_id_is_refused(env: Env, csms: PlainCsms) -> None:
    from adapters.ocpp.simulator import Misbehaviour
    now = datetime.now(UTC)
    sim = SimulatedCharger("A16", env.url, misbehaviour=Misbehaviour(silent=True), tick_s=0.05,
                           car=SimCar(arrival=now + timedelta(hours=1), departure=now + timedelta(hours=2),
                                      energy_wh=1000))
    env.chargers.append(sim)
    sim.start()
    # The balancer's GetConfiguration, never answered by this charger: its id stays pending.
    await wait_for(lambda: any('"GetConfiguration"' in f for d, f in sim.wire if d == "in"))
    pending = next(json.loads(f)[1] for d, f in sim.wire if d == "in" and '"GetConfiguration"' in f)
    await wait_for(lambda: "A16" in csms.cps)
    await csms.cps["A16"]._connection.send(json.dumps([2, pending, "Heartbeat", {}]))  # a CSMS reusing it
    await wait_for(lambda: any(f.startswith("[4") and pending in f for f in csms.frames("A16", "in")))
    refusal = next(json.loads(f) for f in csms.frames("A16", "in") if f.startswith("[4") and pending in f)
    assert refusal[2] == "GenericError"
    assert [f for d, f in sim.wire if d == "in" and pending in f and "Heartbeat" in f] == []


async def test_an_unusable_csms_station_max_is_refused_and_ours_stay(env: Env, csms: PlainCsms) -> None:
    sim = _sim(env, "A16", "ocpp1.6")
    await wait_for(lambda: env.of(SessionStarted))
    await env.online("A16")
    tx = env.of(SessionStarted)[0].transaction_id
    await env.server.apply([schedule("A16", 12.0, failsafe_a=7.0, transaction_id=tx)])
    await wait_for(lambda: sim.draw_a == pytest.approx(12.0))
    bad = {"connectorId": 0, "csChargingProfiles": {
        "chargingProfileId": 5, "stackLevel": 0, "chargingProfilePurpose": "ChargePointMaxProfile",
        "chargingProfileKind": "Absolute", "chargingSchedule": {
            "chargingRateUnit": "W", "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 1000, "numberPhases": 7}]}}}
    await csms.cps["A16"]._connection.send(json.dumps([2, "bad-max", "SetChargingProfile", bad]))
    await wait_for(lambda: any(f.startswith('[3, "bad-max"') for f in csms.frames("A16", "in")))
    answer = next(json.loads(f) for f in csms.frames("A16", "in") if f.startswith('[3, "bad-max"'))
    assert answer[2] == {"status": "Rejected"}
    await env.server.apply([schedule("A16", 14.0, failsafe_a=7.0, transaction_id=tx)])
    await wait_for(lambda: sim.draw_a == pytest.approx(14.0))  # our pushes still go out
