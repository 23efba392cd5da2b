"""A car that falls asleep, end to end: the simulator's sleepy car against the service over OCPP.

Two cars share 7.2 A (one minimum at a time) and take turns. The sleepy car falls asleep at its first
pause; when its turn comes back it does not draw. The service finds it asleep, reports
``car_asleep`` with a count, and the other car gets the whole 7.2 A until the sleepy one draws again.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from adapters.app import Service
from adapters.ocpp.simulator import SimCar, SimulatedCharger
from balancer.config import parse_config
from tests.adapters.ocpp_env import wait_for

TOKEN = "adm-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def config(tmp: Path) -> Any:
    return parse_config({
        "sites": [{"id": "s", "grid_limit_a": 8, "fallback_kw": 5, "rotation_period_s": 6,
                   "chargers": [{"id": f"CP{i}", "max_current_a": 8} for i in range(2)]}],
        "ocpp": {"host": "127.0.0.1", "port": 0},
        "http": {"host": "127.0.0.1", "port": 0, "admin_token": TOKEN},
        "control": {"interval_s": 0.5, "min_charge_s": 0, "car_asleep_after_s": 2, "car_wake_retry_s": 600},
        "state_dir": str(tmp / "state"),
    })


@pytest.mark.parametrize("protocol", ["ocpp1.6", "ocpp2.0.1"])
async def test_a_sleepy_car_is_found_asleep_and_the_other_gets_its_capacity(tmp_path: Path, protocol: str) -> None:
    service = Service(config(tmp_path))
    await service.start()
    now = datetime.now(UTC)
    url = f"ws://127.0.0.1:{service.ocpp.port}/ocpp"
    sims = [SimulatedCharger(f"CP{i}", url, protocol=protocol, meter_interval_s=0.2, tick_s=0.05,
                             car=SimCar(arrival=now - timedelta(seconds=1), departure=now + timedelta(hours=5),
                                        energy_wh=60000, sleeps_after_pause_s=0.0 if i == 0 else None))
            for i in range(2)]
    for sim in sims:
        sim.start()
    http = aiohttp.ClientSession(headers=AUTH)
    site: dict[str, Any] = {}

    async def reason() -> str:
        nonlocal site
        async with http.get(f"http://127.0.0.1:{service.http_port}/api/v1/sites/s") as resp:
            site = await resp.json()
        return str(site["chargers"][0]["limit_reason"]["code"])

    try:
        await wait_for(lambda: sims[0].asleep, timeout=30)
        deadline = asyncio.get_running_loop().time() + 30
        while await reason() != "car_asleep":
            assert asyncio.get_running_loop().time() < deadline, site["chargers"]
            await asyncio.sleep(0.3)
        first = site["chargers"][0]
        assert first["car_asleep"] is True and first["asleep_count"] == 1 and first["limit_a"] == 0.0
        # The awake car gets the whole 7.2 A (fallback_kw 5) and keeps it: no more turns with a car that does not draw.
        await wait_for(lambda: sims[1].limit_now(datetime.now(UTC)) == 7.2, timeout=10)
        for _ in range(10):
            await asyncio.sleep(0.3)
            assert sims[1].limit_now(datetime.now(UTC)) == 7.2
            assert (sims[0].limit_now(datetime.now(UTC)) or 0.0) == 0.0
        assert sims[1].draw_a == 7.2 and sims[0].draw_a == 0.0
        async with http.get(f"http://127.0.0.1:{service.http_port}/metrics") as resp:
            assert 'balancer_cars_asleep_total{site="s"} 1' in await resp.text()
    finally:
        await http.close()
        for sim in sims:
            await sim.stop()
        await service.stop()

