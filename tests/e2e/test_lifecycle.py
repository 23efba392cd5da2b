"""Charger lifecycle against the service as a process: restarts, reconnects, boots (issue 11)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from adapters.ocpp.simulator import SimCar, SimulatedCharger
from adapters.oscp.simulator import GridOperatorSimulator
from tests.e2e.service import ServiceProcess
from tests.e2e.test_service import blocks, until

TOKEN = "admin-token"


def config(protocol_ids: list[str], **site: Any) -> dict[str, Any]:
    return {
        "sites": [{"id": "depot", "voltage_v": 230, "grid_limit_a": 100, "fallback_kw": 13.8,
                   "chargers": [{"id": cid, "max_current_a": 32} for cid in protocol_ids], **site}],
        "http": {"admin_token": TOKEN},
        "oscp": {"token": "oscp-token"},
        "control": {"interval_s": 0.5},
    }


def charger(cid: str, url: str, protocol: str, *, meter_interval_s: float = 10.0) -> SimulatedCharger:
    """As ``balancer simulate`` builds them: a car that stays for hours, MeterValues every 10 s."""
    now = datetime.now(UTC)
    return SimulatedCharger(cid, url, protocol=protocol, meter_interval_s=meter_interval_s, tick_s=0.05,
                            car=SimCar(arrival=now, departure=now + timedelta(hours=8), energy_wh=60000))


def held_sum(chargers: list[SimulatedCharger]) -> float:
    """What the chargers in a transaction may draw by the profiles they hold [A per phase]: their
    maximum without a profile, 0 A under a 0 A one (``or`` counted a paused charger at 32 A)."""
    limits = [c.limit_now(datetime.now(UTC)) for c in chargers if c.transaction_id]
    return sum(32.0 if limit is None else limit for limit in limits)


@pytest.mark.parametrize("protocol", ["ocpp1.6", "ocpp2.0.1"])
async def test_after_a_restart_running_transactions_get_the_next_decrease(tmp_path: Path, protocol: str) -> None:
    """Issue 11 item 9: after ``serve`` restarts, a decrease reaches chargers whose transaction
    started before the restart within 5 s (1.6 ones never got a limit again)."""
    service = ServiceProcess(tmp_path, config(["CP1", "CP2"])).start()
    grid = GridOperatorSimulator(fp_url=f"{service.url}/oscp/fp/2.0", fp_token="oscp-token")
    await grid.start()
    chargers = [charger(f"CP{i}", service.ocpp_url, protocol) for i in (1, 2)]
    for c in chargers:
        c.start()
    try:
        assert await grid.send_forecast("depot", blocks(41.4)) == 204  # 60 A per phase
        await until(lambda: all(c.transaction_id for c in chargers) and held_sum(chargers) >= 40)
        assert service.stop() == 0
        service.start()
        await until(lambda: all(c["connected"] for c in service.get("/api/v1/sites/depot", TOKEN)["chargers"]))
        await asyncio.sleep(1.0)
        assert await grid.send_forecast("depot", blocks(13.8)) == 204  # 20 A per phase
        await until(lambda: held_sum(chargers) <= 20.0 + 1e-6, timeout=5.0)
        for _ in range(10):  # and it stays there
            assert held_sum(chargers) <= 20.0 + 1e-6
            await asyncio.sleep(0.1)
    finally:
        for c in chargers:
            await c.stop()
        await grid.stop()
        service.stop()


async def test_offline_charger_after_its_session_is_reserved_at_what_it_held(tmp_path: Path) -> None:
    """Issue 11 item 5: a charger that stopped its session and then went offline is reserved
    (and reported in ``allocated_a``) at the idle limit it held, not its old session limit."""
    service = ServiceProcess(tmp_path, config(["CP1", "CP2"])).start()
    grid = GridOperatorSimulator(fp_url=f"{service.url}/oscp/fp/2.0", fp_token="oscp-token")
    await grid.start()
    now = datetime.now(UTC)
    short = SimulatedCharger("CP1", service.ocpp_url, protocol="ocpp1.6", meter_interval_s=0.5, tick_s=0.05,
                             car=SimCar(arrival=now, departure=now + timedelta(seconds=6), energy_wh=60000))
    long = charger("CP2", service.ocpp_url, "ocpp2.0.1", meter_interval_s=0.5)
    for c in (short, long):
        c.start()
    try:
        assert await grid.send_forecast("depot", blocks(20.7)) == 204  # 30 A per phase
        await until(lambda: short.transaction_id is not None and (short.limit_now(datetime.now(UTC)) or 0) >= 10)
        await until(lambda: short.done and short.limit_now(datetime.now(UTC)) == 0.0)  # its idle limit: none left
        await short.stop()
        await until(lambda: not next(c for c in service.get("/api/v1/sites/depot", TOKEN)["chargers"]
                                     if c["id"] == "CP1")["connected"])
        await asyncio.sleep(1.5)
        site = service.get("/api/v1/sites/depot", TOKEN)
        limits = {c["id"]: c["limit_a"] for c in site["chargers"]}
        assert site["allocated_a"][0] == pytest.approx(limits["CP2"], abs=0.01)  # CP1 holds 0 A
        assert site["allocated_a"][0] <= 30.0 + 1e-6
    finally:
        for c in (short, long):
            await c.stop()
        await grid.stop()
        service.stop()
