"""The charger simulator as seen by a CSMS: a recording CSMS on a real websocket asks it what a
CSMS may ask (TriggerMessage, GetCompositeSchedule in W, DataTransfer, GetChargingProfiles,
Get/SetVariables) and checks what it sends by itself (heartbeats, the 2.0.1 transaction flow)."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp import WSMsgType, web

from adapters.ocpp.simulator import SimCar, SimulatedCharger
from tests.adapters.ocpp_env import wait_for


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


ANSWERS: dict[str, Any] = {
    "Heartbeat": lambda: {"currentTime": _now()},
    "Authorize": lambda: {"idTagInfo": {"status": "Accepted"}},
    "StartTransaction": lambda: {"transactionId": 7, "idTagInfo": {"status": "Accepted"}},
    "NotifyEVChargingNeeds": lambda: {"status": "Accepted"},
}


class RecordingCsms:
    """A minimal CSMS: answers every CALL with a schema-valid payload and records it."""

    def __init__(self, heartbeat_s: int = 600) -> None:
        self.heartbeat_s = heartbeat_s
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.ws: web.WebSocketResponse | None = None
        self.pending: dict[str, asyncio.Future[list[Any]]] = {}
        self.ids = itertools.count()
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/ocpp/{cid}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(protocols=("ocpp2.0.1", "ocpp1.6"))
        await ws.prepare(request)
        self.ws = ws
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                break
            frame = json.loads(msg.data)
            if frame[0] == 2:
                _, unique_id, action, payload = frame
                self.calls.append((action, payload))
                if action == "BootNotification":
                    answer = {"status": "Accepted", "currentTime": _now(), "interval": self.heartbeat_s}
                else:
                    answer = ANSWERS.get(action, dict)()
                await ws.send_str(json.dumps([3, unique_id, answer]))
            elif frame[1] in self.pending:
                self.pending.pop(frame[1]).set_result(frame)
        return ws

    async def call(self, action: str, payload: dict[str, Any]) -> list[Any]:
        assert self.ws is not None
        unique_id = f"csms-{next(self.ids)}"
        self.pending[unique_id] = asyncio.get_running_loop().create_future()
        await self.ws.send_str(json.dumps([2, unique_id, action, payload]))
        return await asyncio.wait_for(self.pending[unique_id], 5)

    def actions(self) -> list[str]:
        return [a for a, _ in self.calls]

    async def sent_after(self, mark: int, action: str) -> dict[str, Any]:
        await wait_for(lambda: action in self.actions()[mark:], timeout=5)
        return next(p for a, p in self.calls[mark:] if a == action)


@pytest.fixture
async def csms() -> AsyncIterator[RecordingCsms]:
    server = RecordingCsms()
    await server.start()
    yield server
    await server.stop()


async def charger(csms: RecordingCsms, protocol: str, *, car: bool = True) -> SimulatedCharger:
    now = datetime.now(UTC)
    sim_car = SimCar(arrival=now - timedelta(seconds=1), departure=now + timedelta(hours=5), energy_wh=30000) \
        if car else None
    sim = SimulatedCharger("SIM1", f"ws://127.0.0.1:{csms.port}/ocpp", protocol=protocol, car=sim_car,
                           meter_interval_s=3600, tick_s=0.05)
    sim.start()
    await asyncio.wait_for(sim.connected.wait(), 5)
    if car:
        await wait_for(lambda: sim.transaction_id is not None)
    return sim


def profile16(limit: float) -> dict[str, Any]:
    return {"connectorId": 0, "csChargingProfiles": {
        "chargingProfileId": 5, "stackLevel": 0, "chargingProfilePurpose": "TxDefaultProfile",
        "chargingProfileKind": "Absolute", "chargingSchedule": {
            "startSchedule": "2020-01-01T00:00:00Z", "chargingRateUnit": "A",
            "chargingSchedulePeriod": [{"startPeriod": 0, "limit": limit}]}}}


def profile201(limit: float) -> dict[str, Any]:
    return {"evseId": 0, "chargingProfile": {
        "id": 5, "stackLevel": 0, "chargingProfilePurpose": "TxDefaultProfile", "chargingProfileKind": "Absolute",
        "chargingSchedule": [{"id": 1, "startSchedule": "2020-01-01T00:00:00Z", "chargingRateUnit": "A",
                              "chargingSchedulePeriod": [{"startPeriod": 0, "limit": limit}]}]}}


@pytest.mark.parametrize("protocol", ["ocpp1.6", "ocpp2.0.1"])
async def test_trigger_message_sends_what_was_asked(csms: RecordingCsms, protocol: str) -> None:
    sim = await charger(csms, protocol)
    try:
        messages = ["Heartbeat", "StatusNotification", "MeterValues", "BootNotification", "FirmwareStatusNotification"]
        messages += ["TransactionEvent"] if protocol == "ocpp2.0.1" else ["DiagnosticsStatusNotification"]
        for requested in messages:
            mark = len(csms.calls)
            reply = await csms.call("TriggerMessage", {"requestedMessage": requested})
            assert reply[2] == {"status": "Accepted"}, requested
            payload = await csms.sent_after(mark, requested)
            if requested == "TransactionEvent":
                assert payload["triggerReason"] == "Trigger" and payload["eventType"] == "Updated"
            if requested == "BootNotification" and protocol == "ocpp2.0.1":
                assert payload["reason"] == "Triggered"
        assert sim.triggered == messages
        unsupported = "SignV2GCertificate" if protocol == "ocpp2.0.1" else "GetDiagnostics"
        if protocol == "ocpp2.0.1":
            reply = await csms.call("TriggerMessage", {"requestedMessage": unsupported})
            assert reply[2] == {"status": "NotImplemented"}
    finally:
        await sim.stop()


@pytest.mark.parametrize("protocol", ["ocpp1.6", "ocpp2.0.1"])
async def test_composite_schedule_in_the_unit_asked_and_data_transfer(csms: RecordingCsms, protocol: str) -> None:
    sim = await charger(csms, protocol)
    try:
        v16 = protocol == "ocpp1.6"
        reply = await csms.call("SetChargingProfile", profile16(16.0) if v16 else profile201(16.0))
        assert reply[2]["status"] == "Accepted"
        where = {"connectorId": 1} if v16 else {"evseId": 1}
        reply = await csms.call("GetCompositeSchedule", {**where, "duration": 3600, "chargingRateUnit": "W"})
        schedule = reply[2]["chargingSchedule"] if v16 else reply[2]["schedule"]
        assert schedule["chargingRateUnit"] == "W"
        assert schedule["chargingSchedulePeriod"][0]["limit"] == pytest.approx(16.0 * 230 * 3)
        reply = await csms.call("GetCompositeSchedule", {**where, "duration": 3600})
        schedule = reply[2]["chargingSchedule"] if v16 else reply[2]["schedule"]
        assert schedule["chargingRateUnit"] == "A" and schedule["chargingSchedulePeriod"][0]["limit"] == 16.0
        reply = await csms.call("DataTransfer", {"vendorId": "com.example", "messageId": "x"})
        assert reply[:3] == [3, reply[1], {"status": "UnknownVendorId"}]
    finally:
        await sim.stop()


async def test_get_charging_profiles_reports_what_is_installed(csms: RecordingCsms) -> None:
    sim = await charger(csms, "ocpp2.0.1")
    try:
        reply = await csms.call("GetChargingProfiles", {"requestId": 41, "chargingProfile": {
            "chargingProfilePurpose": "ChargingStationMaxProfile"}})
        assert reply[2] == {"status": "NoProfiles"}
        assert (await csms.call("SetChargingProfile", profile201(12.0)))[2]["status"] == "Accepted"
        mark = len(csms.calls)
        reply = await csms.call("GetChargingProfiles", {"requestId": 42, "chargingProfile": {
            "chargingProfilePurpose": "TxDefaultProfile"}})
        assert reply[2] == {"status": "Accepted"}
        report = await csms.sent_after(mark, "ReportChargingProfiles")
        assert report["requestId"] == 42 and report["evseId"] == 0 and report["chargingLimitSource"] == "CSO"
        assert report["chargingProfile"][0]["id"] == 5
        assert report["chargingProfile"][0]["chargingSchedule"][0]["chargingSchedulePeriod"][0]["limit"] == 12.0
    finally:
        await sim.stop()


async def test_set_and_get_variables_know_their_device_model(csms: RecordingCsms) -> None:
    sim = await charger(csms, "ocpp2.0.1", car=False)
    try:
        def item(component: str, variable: str, value: str | None = None) -> dict[str, Any]:
            out: dict[str, Any] = {"component": {"name": component}, "variable": {"name": variable}}
            if value is not None:
                out["attributeValue"] = value
            return out

        reply = await csms.call("SetVariables", {"setVariableData": [
            item("NoSuchCtrlr", "Foo", "1"), item("SmartChargingCtrlr", "Foo", "1"),
            item("SmartChargingCtrlr", "RateUnit", "W"), item("OCPPCommCtrlr", "HeartbeatInterval", "1")]})
        assert [r["attributeStatus"] for r in reply[2]["setVariableResult"]] == [
            "UnknownComponent", "UnknownVariable", "Rejected", "Accepted"]
        reply = await csms.call("GetVariables", {"getVariableData": [
            item("NoSuchCtrlr", "Foo"), item("SmartChargingCtrlr", "RateUnit"), item("OCPPCommCtrlr",
                                                                                     "HeartbeatInterval")]})
        results = reply[2]["getVariableResult"]
        assert [r["attributeStatus"] for r in results] == ["UnknownComponent", "Accepted", "Accepted"]
        assert results[2]["attributeValue"] == "1"
        mark = len(csms.calls)
        await wait_for(lambda: csms.actions()[mark:].count("Heartbeat") >= 2, timeout=5)  # the new interval holds
    finally:
        await sim.stop()


async def test_heartbeats_at_the_interval_the_boot_answer_gives(csms: RecordingCsms) -> None:
    csms.heartbeat_s = 1
    sim = await charger(csms, "ocpp1.6", car=False)
    try:
        await wait_for(lambda: csms.actions().count("Heartbeat") >= 2, timeout=5)
        assert sim.heartbeat_s == 1
    finally:
        await sim.stop()


async def test_201_transaction_occupied_first_and_seq_no_from_0(csms: RecordingCsms) -> None:
    sim = await charger(csms, "ocpp2.0.1")
    try:
        await csms.call("TriggerMessage", {"requestedMessage": "TransactionEvent"})
        await wait_for(lambda: csms.actions().count("TransactionEvent") >= 2)
        events = [(a, p) for a, p in csms.calls if a in ("StatusNotification", "TransactionEvent")]
        started = next(k for k, (a, p) in enumerate(events) if a == "TransactionEvent")
        assert events[started][1]["eventType"] == "Started" and events[started][1]["seqNo"] == 0
        assert events[started - 1][0] == "StatusNotification"
        assert events[started - 1][1]["connectorStatus"] == "Occupied"
        assert [p["seqNo"] for a, p in events if a == "TransactionEvent"][:2] == [0, 1]
    finally:
        await sim.stop()


@pytest.mark.parametrize("protocol", ["ocpp1.6", "ocpp2.0.1"])
async def test_logs_replay_what_the_charger_held_and_a_dropped_connection_keeps_it(
        csms: RecordingCsms, protocol: str) -> None:
    """The charger-side account of the chaos bench: every accepted profile logged in full with its
    arrival, clears and sessions logged, and the replay equals what the charger held live."""
    sim = await charger(csms, protocol)
    v16 = protocol == "ocpp1.6"
    try:
        started = sim.session_log[-1].started_at
        assert sim.session_log[-1].transaction_id == sim.transaction_id
        assert sim.held_limit_at(started) is None  # nothing held yet: it may draw its maximum
        for limit in (16.0, 10.0):
            reply = await csms.call("SetChargingProfile", profile16(limit) if v16 else profile201(limit))
            assert reply[2]["status"] == "Accepted"
        first, second = sim.accepted_log
        assert first.at < second.at and first.profile["charging_profile_purpose"] == "TxDefaultProfile"
        schedule = second.profile["charging_schedule"]
        schedule = schedule[0] if isinstance(schedule, list) else schedule
        assert schedule["charging_schedule_period"][0]["limit"] == 10.0  # the schedule in full
        assert sim.held_limit_at(first.at) == 16.0
        assert sim.held_limit_at(second.at) == 10.0 == sim.limit_now(datetime.now(UTC))

        # A network blip: the same transaction and profiles after the reconnect.
        tx, boots = sim.transaction_id, sim.boots
        assert await sim.drop_connection()
        await wait_for(lambda: sim.boots > boots and sim.connected.is_set())
        assert sim.drops == 1 and sim.transaction_id == tx
        assert sim.limit_now(datetime.now(UTC)) == 10.0

        reply = await csms.call("ClearChargingProfile", {"id": 5} if v16 else {"chargingProfileId": 5})
        assert reply[2]["status"] == "Accepted"
        cleared_at = sim.clear_log[-1][0]
        assert sim.held_limit_at(cleared_at) is None and sim.held_limit_at(second.at) == 10.0
    finally:
        await sim.stop()
