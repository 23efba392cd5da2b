"""Local controller mode against a CSMS nobody here wrote: ocpp-rpc's RPCServer in strictMode (npm).

strictMode validates every call and response against the official OCPP schemas in both directions,
so any frame the balancer forwards, rewrites (transaction ids) or answers in the CSMS's stead
that is not valid OCPP shows up as an ``invalid`` event. The package is installed from npm into
``tests/e2e/ocpp_rpc_csms/node_modules`` (``make test`` does it; so does this module when missing).
Under ``CI=true`` a missing node or npm is a failure, never a skip.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from adapters.ocpp.simulator import SimCar, SimulatedCharger
from balancer.config import parse_config
from balancer.events import SessionStarted, SessionStopped
from tests.adapters.ocpp_env import Env, schedule, wait_for

HERE = Path(__file__).parent / "ocpp_rpc_csms"


def _ensure_ocpp_rpc() -> None:
    if (HERE / "node_modules" / "ocpp-rpc" / "package.json").exists() and shutil.which("node"):
        return
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("node and npm are needed for the third-party CSMS test (make setup installs them)")
        pytest.skip("node/npm not installed")
    subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=HERE, check=True, timeout=300,
                   stdout=subprocess.DEVNULL)


class RpcCsms:
    """The node process; ``events`` are its JSON lines, in order."""

    def __init__(self, password: str | None = None) -> None:
        self.port = 0
        self.password = password
        self.events: list[dict[str, Any]] = []
        self.proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._refs = itertools.count(1)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ocpp"

    async def start(self) -> None:
        args = [str(HERE / "csms.js"), str(self.port)] + ([self.password] if self.password else [])
        self.proc = await asyncio.create_subprocess_exec("node", *args, stdin=asyncio.subprocess.PIPE,
                                                         stdout=asyncio.subprocess.PIPE)
        self._reader = asyncio.get_running_loop().create_task(self._read())
        await wait_for(lambda: any(e["event"] == "listening" for e in self.events[self._mark:]), timeout=20)
        self.port = next(e["port"] for e in reversed(self.events) if e["event"] == "listening")

    _mark = 0

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            self.events.append(json.loads(line))

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.proc.wait(), 10)
        if self._reader is not None:
            with contextlib.suppress(Exception):
                await self._reader
        self._mark = len(self.events)

    async def call(self, client: str, method: str, params: dict[str, Any]) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdin is not None
        ref = next(self._refs)
        self.proc.stdin.write((json.dumps({"ref": ref, "client": client, "method": method, "params": params})
                               + "\n").encode())
        await self.proc.stdin.drain()
        await wait_for(lambda: any(e["event"] == "reply" and e["ref"] == ref for e in self.events))
        reply = next(e for e in self.events if e["event"] == "reply" and e["ref"] == ref)
        assert "error" not in reply, reply
        result: dict[str, Any] = reply["result"]
        return result

    def frames(self, client: str, *, outbound: bool) -> list[str]:
        return [e["frame"] for e in self.events
                if e["event"] == "frame" and e["client"] == client and e["outbound"] == outbound]

    def calls_in(self, client: str) -> list[list[Any]]:
        return [f for f in map(json.loads, self.frames(client, outbound=False)) if f[0] == 2]

    def problems(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] in ("invalid", "bad", "refused")]


@pytest.fixture
async def csms() -> AsyncIterator[RpcCsms]:
    _ensure_ocpp_rpc()
    server = RpcCsms(password="s3cret-at-csms")
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def env(csms: RpcCsms, tmp_path: Path) -> AsyncIterator[Env]:
    config = parse_config({
        "sites": [{"id": "s", "grid_limit_a": 200, "fallback_kw": 20, "chargers": [
            {"id": "A16", "max_current_a": 32, "password": "s3cret-at-csms"},
            {"id": "B201", "max_current_a": 32, "password": "s3cret-at-csms"}]}],
        "ocpp": {"host": "127.0.0.1", "port": 0, "response_timeout_s": 2.0,
                 "upstream": {"url": csms.url, "auth": "passthrough", "answer_timeout_s": 2.0,
                              "reconnect_max_s": 0.5}},
        "state_dir": str(tmp_path),
    })
    e = Env(config)
    await e.start()
    yield e
    await e.stop()


def _sim(env: Env, cid: str, protocol: str, *, arrive_s: float) -> SimulatedCharger:
    now = datetime.now(UTC)
    car = SimCar(arrival=now + timedelta(seconds=arrive_s), departure=now + timedelta(hours=1), energy_wh=30000,
                 iso15118=protocol == "ocpp2.0.1")
    sim = SimulatedCharger(cid, env.url, protocol=protocol, car=car, meter_interval_s=0.3, tick_s=0.05,
                           password="s3cret-at-csms")
    env.chargers.append(sim)
    sim.start()
    return sim


def _sent_calls(sim: SimulatedCharger) -> list[str]:
    return [f for d, f in sim.wire if d == "out" and f.startswith("[2")]


@pytest.mark.parametrize("protocol", ["ocpp1.6", "ocpp2.0.1"])
async def test_transparent_through_a_strict_third_party_csms(env: Env, csms: RpcCsms, protocol: str) -> None:
    cid = "A16" if protocol == "ocpp1.6" else "B201"
    sim = _sim(env, cid, protocol, arrive_s=-1)
    await wait_for(lambda: env.of(SessionStarted), timeout=20)
    await env.online(cid)
    tx = env.of(SessionStarted)[0].transaction_id
    await env.server.apply([schedule(cid, 13.0, failsafe_a=7.0, transaction_id=tx)])
    await wait_for(lambda: sim.draw_a == pytest.approx(13.0))
    await wait_for(lambda: len(csms.calls_in(cid)) >= 6)
    got = [f for f in csms.frames(cid, outbound=False) if f.startswith("[2")]
    assert got == _sent_calls(sim)[:len(got)]  # byte for byte, in order
    assert tx == sim.transaction_id
    if protocol == "ocpp1.6":
        assert int(tx) >= 7001  # the CSMS's transaction id, which the balancer knows the session by
    # The charger's answers to its calls are the CSMS's (its CALLRESULT frames, same ids).
    csms_out = set(csms.frames(cid, outbound=True))
    sent_ids = {json.loads(f)[1] for f in _sent_calls(sim)}
    to_charger = [f for d, f in sim.wire if d == "in" and f[1] in "34" and json.loads(f)[1] in sent_ids]
    assert to_charger and all(f in csms_out for f in to_charger)
    assert not csms.problems()


async def test_remote_stop_and_csms_profiles_strict(env: Env, csms: RpcCsms) -> None:
    sim = _sim(env, "A16", "ocpp1.6", arrive_s=3600)
    await env.online("A16")
    await wait_for(lambda: any(e["event"] == "connected" for e in csms.events))
    assert (await csms.call("A16", "RemoteStartTransaction", {"idTag": "REMOTE-1"}))["status"] == "Accepted"
    await wait_for(lambda: env.of(SessionStarted) and sim.transaction_id is not None)
    tx = int(sim.transaction_id or 0)
    await env.server.apply([schedule("A16", 16.0, failsafe_a=7.0, transaction_id=str(tx))])
    await wait_for(lambda: sim.draw_a == pytest.approx(16.0))
    start = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")

    def profile(purpose: str, limit: float, **extra: Any) -> dict[str, Any]:
        return {"chargingProfileId": 1, "stackLevel": 0, "chargingProfilePurpose": purpose,
                "chargingProfileKind": "Absolute", **extra,
                "chargingSchedule": {"startSchedule": start, "chargingRateUnit": "A",
                                     "chargingSchedulePeriod": [{"startPeriod": 0, "limit": limit}]}}

    answer = await csms.call("A16", "SetChargingProfile", {"connectorId": 0,
                                                           "csChargingProfiles": profile("ChargePointMaxProfile", 10)})
    assert answer["status"] == "Accepted"
    await wait_for(lambda: sim.draw_a == pytest.approx(10.0))
    answer = await csms.call("A16", "SetChargingProfile", {"connectorId": 1, "csChargingProfiles": profile(
        "TxProfile", 8, transactionId=tx)})
    assert answer["status"] == "Accepted"
    await wait_for(lambda: sim.draw_a == pytest.approx(8.0))
    composite = await csms.call("A16", "GetCompositeSchedule", {"connectorId": 1, "duration": 600})
    assert composite["status"] == "Accepted"
    assert composite["chargingSchedule"]["chargingSchedulePeriod"][0]["limit"] == pytest.approx(8.0)
    assert (await csms.call("A16", "RemoteStopTransaction", {"transactionId": tx}))["status"] == "Accepted"
    await wait_for(lambda: env.of(SessionStopped))
    await wait_for(lambda: any(f[2] == "StopTransaction" for f in csms.calls_in("A16")))
    stop = next(f for f in csms.calls_in("A16") if f[2] == "StopTransaction")
    assert stop[3]["transactionId"] == tx
    assert not csms.problems()


async def test_csms_down_during_a_transaction_then_back_strict(env: Env, csms: RpcCsms) -> None:
    sim = _sim(env, "A16", "ocpp1.6", arrive_s=3600)
    await env.online("A16")
    await wait_for(lambda: any(f[2] == "BootNotification" for f in csms.calls_in("A16")))
    await csms.stop()
    await wait_for(lambda: not env.server.charger_status("A16")["upstream_connected"])
    mark = len(_sent_calls(sim))
    sim.remote_start()  # the car arrives during the outage
    await wait_for(lambda: env.of(SessionStarted) and sim.transaction_id is not None)
    local_tx = sim.transaction_id
    # Still controlled while the CSMS is away.
    await env.server.apply([schedule("A16", 9.0, failsafe_a=7.0, transaction_id=local_tx)])
    await wait_for(lambda: sim.draw_a == pytest.approx(9.0))
    await asyncio.sleep(1.0)
    await sim.remote_stop(str(local_tx))
    await wait_for(lambda: env.of(SessionStopped))
    during = [json.loads(f) for f in _sent_calls(sim)[mark:]]
    queued = env.server.charger_status("A16")["upstream_queued"]
    assert queued == len([f for f in during if f[2] not in ("Heartbeat", "Authorize")])
    await csms.start()  # back on the same port
    await wait_for(lambda: env.server.charger_status("A16")["upstream_queued"] == 0, timeout=30)
    replayed = csms.calls_in("A16")
    expected = [f for f in during if f[2] not in ("Heartbeat", "Authorize")]
    assert [f[1] for f in replayed[-len(expected):]] == [f[1] for f in expected]  # nothing lost, in order
    start_answer = next(json.loads(f) for f in csms.frames("A16", outbound=True)
                        if f.startswith("[3") and "transactionId" in json.loads(f)[2])
    remote_tx = start_answer[2]["transactionId"]
    assert str(remote_tx) != local_tx
    for frame in replayed[-len(expected):]:
        if frame[2] in ("MeterValues", "StopTransaction") and "transactionId" in frame[3]:
            assert frame[3]["transactionId"] == remote_tx
    assert not csms.problems()


async def test_201_station_max_combined_and_request_stop_strict(env: Env, csms: RpcCsms) -> None:
    sim = _sim(env, "B201", "ocpp2.0.1", arrive_s=-1)
    await wait_for(lambda: env.of(SessionStarted), timeout=20)
    await env.online("B201")
    tx = env.of(SessionStarted)[0].transaction_id
    await env.server.apply([schedule("B201", 15.0, failsafe_a=7.0, transaction_id=tx)])
    await wait_for(lambda: sim.draw_a == pytest.approx(15.0))
    start = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    profile = {"id": 1, "stackLevel": 0, "chargingProfilePurpose": "ChargingStationMaxProfile",
               "chargingProfileKind": "Absolute",
               "chargingSchedule": [{"id": 1, "startSchedule": start, "chargingRateUnit": "W",
                                     "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 6900.0,
                                                                 "numberPhases": 3}]}]}
    answer = await csms.call("B201", "SetChargingProfile", {"evseId": 0, "chargingProfile": profile})
    assert answer["status"] == "Accepted"
    await wait_for(lambda: sim.draw_a == pytest.approx(10.0))  # 6900 W / (230 V x 3) = 10 A: lower wins
    assert all(key[0] == "ChargingStationMaxProfile" for key in sim.store.profiles)
    answer = await csms.call("B201", "RequestStopTransaction", {"transactionId": tx})
    assert answer["status"] == "Accepted"
    await wait_for(lambda: env.of(SessionStopped))
    await wait_for(lambda: any(f[2] == "TransactionEvent" and f[3]["eventType"] == "Ended"
                               for f in csms.calls_in("B201")))
    assert not csms.problems()


async def test_config_credentials_and_upstream_id(csms: RpcCsms, tmp_path: Path) -> None:
    config = parse_config({
        "sites": [{"id": "s", "grid_limit_a": 200, "fallback_kw": 20, "chargers": [
            {"id": "A16", "max_current_a": 32, "upstream_id": "OPERATOR-0001", "upstream_password": "s3cret-at-csms"},
            {"id": "C16", "max_current_a": 32, "upstream_id": "OPERATOR-0002"}]}],
        "ocpp": {"host": "127.0.0.1", "port": 0, "response_timeout_s": 2.0,
                 "upstream": {"url": csms.url, "auth": "config", "password": "not-the-password",
                              "answer_timeout_s": 2.0, "reconnect_max_s": 0.5}},
        "state_dir": str(tmp_path),
    })
    env = Env(config)
    await env.start()
    try:
        good = SimulatedCharger("A16", env.url, meter_interval_s=0.3, tick_s=0.05)  # no password towards us
        bad = SimulatedCharger("C16", env.url, meter_interval_s=0.3, tick_s=0.05)
        env.chargers += [good, bad]
        good.start()
        bad.start()
        await env.online("A16", "C16")  # both controlled, whatever the CSMS thinks of C16's credentials
        await wait_for(lambda: any(f[2] == "BootNotification" for f in csms.calls_in("OPERATOR-0001")))
        assert [f for f in csms.frames("OPERATOR-0001", outbound=False) if f.startswith("[2")] \
            == _sent_calls(good)[:len(csms.calls_in("OPERATOR-0001"))]
        await wait_for(lambda: any(e["event"] == "refused" and e["client"] == "OPERATOR-0002" for e in csms.events))
        assert not csms.calls_in("OPERATOR-0002")
        assert env.server.charger_status("C16")["upstream_queued"] >= 1  # kept for when it is let in
        assert not [e for e in csms.problems() if e["event"] != "refused"]
    finally:
        await env.stop()
