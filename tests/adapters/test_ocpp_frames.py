"""The frame guard's answers over real websockets: error-code dialects, date-times, oversize and deep
frames answered with their own id, and a bad-frame flood that cannot flood the log."""

from __future__ import annotations

import json
import logging
from typing import Any

import aiohttp
import pytest

from balancer.events import ChargerStatus, MeterSample, SessionStarted
from tests.adapters.ocpp_env import Env, ocpp_config, running_env

CHARGERS = [{"id": "CP1", "max_current_a": 32}]


@pytest.fixture
async def env():  # type: ignore[no-untyped-def]
    async with running_env(ocpp_config(CHARGERS, rate_limit_per_s=1000)) as e:
        yield e


class Raw:
    """A bare websocket to the server: frames in, frames out."""

    def __init__(self, session: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.session = session
        self.ws = ws

    async def ask(self, frame: Any) -> list[Any]:
        """Send a frame and return the server's answer to it. The server's own CALLs (it reads the
        capabilities of a charger it hears from) go unanswered, as a charger busy elsewhere would."""
        await self.ws.send_str(frame if isinstance(frame, str) else json.dumps(frame))
        while True:
            msg = await self.ws.receive(timeout=5)
            assert msg.type == aiohttp.WSMsgType.TEXT, f"connection ended: {msg.type} {self.ws.close_code}"
            reply = json.loads(msg.data)
            assert isinstance(reply, list)
            if reply[0] != 2:
                return reply

    async def close(self) -> None:
        await self.ws.close()
        await self.session.close()


async def raw(env: Env, protocol: str) -> Raw:
    session = aiohttp.ClientSession()
    ws = await session.ws_connect(f"{env.url}/CP1", protocols=(protocol,), max_msg_size=0)
    return Raw(session, ws)


async def test_package_errors_speak_the_16_dialect(env: Env) -> None:
    conn = await raw(env, "ocpp1.6")
    try:
        # An extra property: the ocpp package's own schema check says FormatViolation (a 2.0.1 code).
        reply = await conn.ask([2, "x1", "Heartbeat", {"extra": 1}])
        assert reply[:3] == [4, "x1", "FormationViolation"]
        # A known 1.6 action that a CSMS does not take: "recognized but not supported" is NotSupported.
        reply = await conn.ask([2, "x2", "RemoteStartTransaction", {"idTag": "T"}])
        assert reply[:3] == [4, "x2", "NotSupported"]
        reply = await conn.ask([2, "x3", "Heartbeat", {}])
        assert reply[0] == 3 and reply[1] == "x3"
    finally:
        await conn.close()


async def test_package_errors_on_201(env: Env) -> None:
    conn = await raw(env, "ocpp2.0.1")
    try:
        reply = await conn.ask([2, "y1", "Heartbeat", {"extra": 1}])
        assert reply[:3] == [4, "y1", "FormatViolation"]
        reply = await conn.ask([2, "y2", "SetChargingProfile", {}])  # a CSMS -> station action
        assert reply[:3] == [4, "y2", "NotSupported"]
    finally:
        await conn.close()


async def test_invalid_date_times_are_refused_naming_the_field(env: Env) -> None:
    conn = await raw(env, "ocpp1.6")
    try:
        reply = await conn.ask([2, "d1", "StatusNotification", {"connectorId": 1, "errorCode": "NoError",
                                                                "status": "Charging", "timestamp": "yesterday"}])
        assert reply[:3] == [4, "d1", "FormationViolation"] and "timestamp" in reply[3]
        reply = await conn.ask([2, "d2", "MeterValues", {"connectorId": 1, "meterValue": [
            {"timestamp": "2025-02-30T10:00:00Z", "sampledValue": [{"value": "10", "measurand": "Current.Import"}]}]}])
        assert reply[:3] == [4, "d2", "FormationViolation"] and "meterValue[0].timestamp" in reply[3]
        reply = await conn.ask([2, "d3", "StartTransaction", {"connectorId": 1, "idTag": "T", "meterStart": 0,
                                                              "timestamp": "2025-03-01 10:00"}])
        assert reply[:3] == [4, "d3", "FormationViolation"]
        assert not env.of(ChargerStatus) and not env.of(MeterSample) and not env.of(SessionStarted)
        reply = await conn.ask([2, "d4", "StatusNotification", {"connectorId": 1, "errorCode": "NoError",
                                                                "status": "Charging",
                                                                "timestamp": "2025-03-01T10:00:00.250+01:00"}])
        assert reply[:2] == [3, "d4"]
    finally:
        await conn.close()
    conn = await raw(env, "ocpp2.0.1")
    try:
        reply = await conn.ask([2, "e1", "TransactionEvent", {
            "eventType": "Started", "timestamp": "yesterday", "triggerReason": "CablePluggedIn", "seqNo": 0,
            "transactionInfo": {"transactionId": "t1"}}])
        assert reply[:3] == [4, "e1", "FormatViolation"] and "timestamp" in reply[3]
        reply = await conn.ask([2, "e2", "NotifyEVChargingNeeds", {"evseId": 1, "chargingNeeds": {
            "requestedEnergyTransfer": "AC_three_phase", "departureTime": "tomorrow"}}])
        assert reply[:3] == [4, "e2", "FormatViolation"] and "chargingNeeds.departureTime" in reply[3]
        assert not env.of(SessionStarted)
    finally:
        await conn.close()


@pytest.mark.parametrize("protocol", ["ocpp1.6", "ocpp2.0.1"])
async def test_oversize_and_deep_frames_are_answered_with_their_own_id(env: Env, protocol: str) -> None:
    code = "FormationViolation" if protocol == "ocpp1.6" else "FormatViolation"
    conn = await raw(env, protocol)
    try:
        big = json.dumps([2, "big-1", "DataTransfer", {"vendorId": "v", "data": "x" * 70_000}])
        assert (await conn.ask(big))[:3] == [4, "big-1", code]
        deep = '[2, "deep-1", "DataTransfer", {"vendorId": "v", "data": ' + "[" * 5000 + "]" * 5000 + "}]"
        assert (await conn.ask(deep))[:3] == [4, "deep-1", code]
        fairly_deep = '[2, "deep-2", "DataTransfer", {"vendorId": "v", "data": ' + "[" * 900 + "]" * 900 + "}]"
        assert (await conn.ask(fairly_deep))[:3] == [4, "deep-2", code]
        assert (await conn.ask("[" * 5000))[:3] == [4, "-1", code]  # no id to be read
        reply = await conn.ask([2, "h1", "Heartbeat", {}])
        assert reply[:2] == [3, "h1"]  # the connection stayed
    finally:
        await conn.close()


async def test_a_bad_frame_flood_is_counted_in_full_and_logged_sparingly(
        env: Env, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    conn = await raw(env, "ocpp1.6")
    floods = ["{not json", json.dumps([2, "s", "Heartbeat", {"extra": 1}]), json.dumps([2, "u", "Nope", {}]),
              json.dumps([2, "t", "StatusNotification", {"connectorId": 1, "errorCode": "NoError",
                                                         "status": "Charging", "timestamp": "now"}])]
    rounds = 150
    try:
        for _ in range(rounds):
            for frame in floods:
                reply = await conn.ask(frame)
                assert reply[0] == 4
        assert (await conn.ask([2, "h", "Heartbeat", {}]))[0] == 3
    finally:
        await conn.close()
    assert env.server.counters["bad_frames"] == rounds * len(floods)
    per_charger = [r for r in caplog.records if "CP1" in r.getMessage() or r.name == "ocpp"]
    # A few lines per kind of refusal, not one per frame (600 frames).
    assert 4 <= len(per_charger) <= 5 * len(floods) + 10, len(per_charger)
