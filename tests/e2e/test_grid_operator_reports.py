"""Our reports to the grid operator, end to end: registration, handshake ack, heartbeats,
measurements, and an AdjustGroupCapacityForecast when known needs cannot be met."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from adapters.ocpp.simulator import SimCar, SimulatedCharger
from adapters.oscp.simulator import GridOperatorSimulator
from tests.e2e.service import ServiceProcess
from tests.e2e.test_service import blocks, until


async def test_reports_reach_the_capacity_provider(tmp_path: Path) -> None:
    cp = GridOperatorSimulator(fp_url="", fp_token="oscp-token")
    await cp.start()
    service = ServiceProcess(tmp_path, {
        "sites": [{"id": "depot", "oscp_group_id": "grp", "grid_limit_a": 100, "fallback_kw": 10,
                   "chargers": [{"id": "CP0", "max_current_a": 32}, {"id": "CP1", "max_current_a": 32}]}],
        "http": {"admin_token": "adm"},
        "oscp": {"token": "oscp-token", "public_base_url": "http://127.0.0.1/oscp/fp/2.0", "adjust_forecast": True,
                 "measurement_interval_s": 1, "heartbeat_interval_s": 1,
                 "capacity_provider": {"base_url": cp.base_url, "token": cp.our_token}},
        "control": {"interval_s": 0.5}})
    cp.fp_url = f"{service.url}/oscp/fp/2.0"
    service.start()
    now = datetime.now(UTC)
    chargers = [SimulatedCharger(f"CP{i}", service.ocpp_url, car=SimCar(now, now + timedelta(hours=8), 90000),
                                 meter_interval_s=0.5, tick_s=0.05) for i in range(2)]
    try:
        await until(lambda: cp.messages("register"), 10)
        assert cp.messages("register")[0]["version_url"][0]["version"] == "2.0"
        assert await cp.handshake(1) == 204
        await until(lambda: cp.messages("handshake_acknowledge"), 10)
        ack_headers = next(h for p, _, h in cp.received if p == "handshake_acknowledge")
        assert ack_headers.get("X-Correlation-ID")
        await until(lambda: len(cp.messages("heartbeat")) >= 2, 10)
        assert await cp.send_forecast("grp", blocks(6.9)) == 204  # 10 A per phase: far too little
        for c in chargers:
            c.start()
        await until(lambda: all(c.transaction_id for c in chargers), 10)
        auth = {"Authorization": "Bearer adm"}
        for cid in ("CP0", "CP1"):
            departure = (datetime.now(UTC) + timedelta(hours=2)).isoformat()
            status, _ = service.request("POST", f"/api/v1/sessions/{cid}/needs",
                                        {"energy_wh": 40000, "departure": departure}, auth)
            assert status == 202
        await until(lambda: cp.messages("adjust_group_capacity_forecast"), 15)
        adjust = cp.messages("adjust_group_capacity_forecast")[0]
        assert adjust["group_id"] == "grp" and adjust["type"] == "CONSUMPTION"
        assert all(b["capacity"] > 10.0 and b["unit"] == "A" for b in adjust["forecasted_blocks"])
        await until(lambda: any(m["measurements"][0]["value"] > 0 for m in cp.messages("update_group_measurements")), 15)
    finally:
        for c in chargers:
            await c.stop()
        service.stop()
        await cp.stop()
