"""The service as a process: a charger reporting 1e11 A is not the site's measured current, and the
refusal is counted in /metrics."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from tests.e2e.service import ServiceProcess

TOKEN = "admin-token"
CONFIG: dict[str, Any] = {
    "sites": [{"id": "depot", "voltage_v": 230, "grid_limit_a": 100, "fallback_kw": 13.8,
               "chargers": [{"id": "CP0", "max_current_a": 32}]}],
    "http": {"admin_token": TOKEN},
    "control": {"interval_s": 0.5},
}


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


async def call(ws: aiohttp.ClientWebSocketResponse, unique_id: str, action: str, payload: dict[str, Any]) -> Any:
    await ws.send_str(json.dumps([2, unique_id, action, payload]))
    while True:
        frame = json.loads((await ws.receive(timeout=10)).data)
        if frame[0] != 2 and frame[1] == unique_id:  # the CSMS's own calls (profiles) go unanswered here
            assert frame[0] == 3, frame
            return frame[2]


def meter(amps: float) -> dict[str, Any]:
    return {"connectorId": 1, "transactionId": 1, "meterValue": [{"timestamp": now_iso(), "sampledValue": [
        {"value": str(amps), "measurand": "Current.Import", "phase": p, "unit": "A"} for p in ("L1", "L2", "L3")]}]}


async def test_an_absurd_current_is_not_measured_and_is_counted(tmp_path: Path) -> None:
    service = ServiceProcess(tmp_path, CONFIG).start()
    try:
        async with aiohttp.ClientSession() as session, \
                session.ws_connect(f"{service.ocpp_url}/CP0", protocols=("ocpp1.6",)) as ws:
            await call(ws, "b", "BootNotification", {"chargePointVendor": "v", "chargePointModel": "m"})
            tx = await call(ws, "s", "StartTransaction", {"connectorId": 1, "idTag": "T", "meterStart": 0,
                                                          "timestamp": now_iso()})
            assert tx["idTagInfo"]["status"] == "Accepted"
            await call(ws, "m1", "MeterValues", meter(10.0))
            for _ in range(100):
                if service.get("/api/v1/sites/depot", TOKEN)["measured_a"][0] == 10.0:
                    break
                await asyncio.sleep(0.05)
            await call(ws, "m2", "MeterValues", meter(1e11))
            await asyncio.sleep(0.5)
            site = service.get("/api/v1/sites/depot", TOKEN)
            assert site["measured_a"] == [10.0, 10.0, 10.0]
            assert "balancer_ocpp_implausible_meter_values_total 1" in service.get("/metrics", TOKEN)
    finally:
        service.stop()
