"""The service as a process against a full state disk, and a kill -9 beside a charger that never answers."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from adapters.ocpp.simulator import Misbehaviour, SimCar, SimulatedCharger
from adapters.oscp.simulator import GridOperatorSimulator
from tests.disk import fill, small_tmpfs
from tests.e2e.service import ServiceProcess
from tests.e2e.test_service import CONFIG, TOKEN, blocks, fleet, limit_sum, until


def kill_9(service: ServiceProcess) -> None:
    assert service.proc is not None
    service.proc.kill()
    service.proc.wait(timeout=10)


def health(service: ServiceProcess) -> dict[str, Any]:
    status, body = service.request("GET", "/healthz")
    assert status == 200, (status, body)  # degraded is still 200: control runs on (README)
    return dict(body)


async def test_a_full_state_disk_never_stops_control(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "state", "4m") as state:
        service = ServiceProcess(tmp_path, CONFIG).start()
        cp = GridOperatorSimulator(fp_url=f"{service.url}/oscp/fp/2.0", fp_token="oscp-token")
        await cp.start()
        chargers = fleet(service.ocpp_url)
        for c in chargers:
            c.start()
        try:
            assert await cp.send_forecast("depot", blocks(41.4)) == 204  # 60 A per phase
            await until(lambda: all(c.transaction_id for c in chargers) and limit_sum(chargers) >= 50)
            assert health(service)["status"] == "ok"
            filler = fill(state / "filler")

            # A decrease while nothing can be written: accepted, in force, and on the chargers.
            assert await cp.send_forecast("depot", blocks(13.8)) == 204  # 20 A per phase
            await until(lambda: limit_sum(chargers) <= 20.0 + 1e-6, timeout=5.0)
            body = health(service)
            assert body["status"] == "degraded" and body["reasons"], body
            assert body["state_pending_writes"] > 0 and body["state_write_failures"] > 0
            await until(lambda: counter(service, "state_save_failures") >= 1, timeout=15)
            steps = counter(service, "control_steps")
            await until(lambda: counter(service, "control_steps") > steps + 2)  # the control loop steps on

            # Space is back: the state is written (the 20 A forecast with it) and health is ok.
            filler.unlink()
            await until(lambda: health(service)["status"] == "ok", timeout=15)
            assert health(service)["state_pending_writes"] == 0
            assert _saved_forecast_kw(state / "state.sqlite") == [13.8]
            assert await cp.send_forecast("depot", blocks(8.28)) == 204  # 12 A per phase
            await until(lambda: limit_sum(chargers) <= 12.0 + 1e-6, timeout=5.0)
        finally:
            for c in chargers:
                await c.stop()
            await cp.stop()
            service.stop()


def counter(service: ServiceProcess, name: str) -> float:
    for line in service.get("/metrics", TOKEN).splitlines():
        if line.startswith(f"balancer_{name}_total "):
            return float(line.split()[1])
    raise AssertionError(f"balancer_{name}_total not in /metrics")


def _saved_forecast_kw(db: Path) -> list[float]:
    """The capacities of the forecast blocks covering now, as read from the state file."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        row = conn.execute("SELECT value FROM kv WHERE key = 'forecast:depot'").fetchone()
    now = datetime.now(UTC)
    return [b["capacity"] for b in json.loads(row[0])["blocks"]["CONSUMPTION"]
            if datetime.fromisoformat(b["start_time"]) <= now < datetime.fromisoformat(b["end_time"])]


SILENT_CONFIG: dict[str, Any] = {**CONFIG, "sites": [{**CONFIG["sites"][0], "chargers": [
    {"id": "CP0", "max_current_a": 32}, {"id": "CP1", "max_current_a": 32}]}]}


async def test_a_silent_charger_does_not_hold_back_the_state_at_a_crash(tmp_path: Path) -> None:
    service = ServiceProcess(tmp_path, SILENT_CONFIG).start()
    cp = GridOperatorSimulator(fp_url=f"{service.url}/oscp/fp/2.0", fp_token="oscp-token")
    await cp.start()
    now = datetime.now(UTC)
    silent = SimulatedCharger("CP0", service.ocpp_url, protocol="ocpp2.0.1", misbehaviour=Misbehaviour(silent=True),
                              tick_s=0.05)
    car = SimulatedCharger("CP1", service.ocpp_url, protocol="ocpp1.6", meter_interval_s=0.5, tick_s=0.05,
                           car=SimCar(arrival=now + timedelta(seconds=4), departure=now + timedelta(hours=8),
                                      energy_wh=60000))
    try:
        silent.start()
        await until(lambda: _charger(service, "CP0")["connected"])
        # A capacity change while the silent charger holds its push open (30 s timeout, retried).
        assert await cp.send_forecast("depot", blocks(27.6)) == 204
        car.start()
        await until(lambda: _charger(service, "CP1")["transaction_id"] is not None)
        seen = time.time()
        # The snapshot must follow the session start, whatever the silent charger does.
        with contextlib.suppress(AssertionError):
            await until(lambda: _saved_at(service) >= seen, timeout=10)
        kill_9(service)
        service.start()
        assert _charger(service, "CP1")["transaction_id"] == car.transaction_id
    finally:
        await car.stop()
        await silent.stop()
        await cp.stop()
        service.stop()


def _charger(service: ServiceProcess, charger_id: str) -> dict[str, Any]:
    site = service.get("/api/v1/sites/depot", TOKEN)
    return dict(next(c for c in site["chargers"] if c["id"] == charger_id))


def _saved_at(service: ServiceProcess) -> float:
    saved = health(service).get("state_saved_at")
    return datetime.fromisoformat(saved).timestamp() if saved else 0.0
