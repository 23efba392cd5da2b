"""The service with a site meter: a Modbus TCP meter simulator and simulated OCPP chargers on
loopback; the HTTP push endpoint validated like every other body."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from adapters.app import Service
from adapters.meter.simulator import MeterSimulator
from adapters.ocpp.simulator import SimCar, SimulatedCharger
from balancer.config import parse_config
from tests.adapters.ocpp_env import wait_for

TOKEN = "adm-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def meter_config(tmp: Path, meter: dict[str, Any], n_chargers: int = 4) -> Any:
    return parse_config({
        "sites": [{"id": "office", "grid_limit_a": 100, "fallback_kw": 69,
                   "chargers": [{"id": f"CP{i}", "max_current_a": 32} for i in range(n_chargers)],
                   "meter": meter}],
        "ocpp": {"host": "127.0.0.1", "port": 0},
        "http": {"host": "127.0.0.1", "port": 0, "admin_token": TOKEN},
        "control": {"interval_s": 1.0},
        "state_dir": str(tmp / "state"),
    })


def fleet(url: str, n: int) -> list[SimulatedCharger]:
    now = datetime.now(UTC)
    return [SimulatedCharger(f"CP{i}", url, car=SimCar(arrival=now - timedelta(seconds=1),
                                                       departure=now + timedelta(hours=5), energy_wh=60000),
                             meter_interval_s=0.3, tick_s=0.05) for i in range(n)]


def held_per_phase(sims: list[SimulatedCharger]) -> float:
    now = datetime.now(UTC)
    return sum(s.limit_now(now) or 0.0 for s in sims)


async def modbus_site(tmp: Path, sims: list[SimulatedCharger], stale_after_s: float) -> tuple[MeterSimulator, Service]:
    """A SunSpec meter simulator (10 A of building plus what ``sims`` draw) polled every 0.2 s by a
    started service; the caller starts the chargers and stops all three."""
    meter = MeterSimulator("sunspec", chargers_a=lambda: [sum(s.draw_a for s in sims)] * 3)
    meter.non_ev_a = [10.0, 10.0, 10.0]
    await meter.start()
    config = meter_config(tmp, {"source": "modbus", "host": "127.0.0.1", "port": meter.port, "map": "sunspec",
                                "poll_s": 0.2, "stale_after_s": stale_after_s, "fallback_base_load_a": [30, 30, 30],
                                "margin_a": 1})
    service = Service(config)
    await service.start()
    return meter, service


async def test_non_ev_step_at_modbus_meter_lowers_chargers_and_stale_falls_back(tmp_path: Path) -> None:
    sims: list[SimulatedCharger] = []
    meter, service = await modbus_site(tmp_path, sims, stale_after_s=2)
    sims.extend(fleet(f"ws://127.0.0.1:{service.ocpp.port}/ocpp", 4))
    for sim in sims:
        sim.start()
    http = aiohttp.ClientSession(headers=AUTH)
    base = f"http://127.0.0.1:{service.http_port}/api/v1/sites/office"
    try:
        # 100 A connection - 10 A building - 1 A margin: the cars share 89 A (not 4 x 32 A).
        await wait_for(lambda: 85.0 <= held_per_phase(sims) <= 89.0 + 1e-6, timeout=20)
        await wait_for(lambda: sum(s.draw_a for s in sims) >= 85.0, timeout=10)
        # The meter sees a car ramp before the car's own reading does, so just after a change the
        # building is overestimated (safe) and the cars give way for a moment (the swing in the
        # note of issue 17). Never underestimated; with the cars drawing, it is the building's.
        seen: list[float] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10.0
        while True:
            await asyncio.sleep(0.2)
            async with http.get(base) as resp:
                site = await resp.json()
            assert site["meter_fresh"] is True
            seen.append(min(site["non_ev_load_a"]))
            settled = np.allclose(site["non_ev_load_a"], [10.0] * 3, atol=1.5) and site["meter_a"][0] > 80.0
            if settled or loop.time() > deadline:
                break
        assert min(seen) >= 10.0 - 1.5, seen
        np.testing.assert_allclose(site["non_ev_load_a"], [10.0] * 3, atol=1.5)
        assert site["meter_a"][0] > 80.0  # the meter sees the cars too
        # A building step of 40 A: followed within 5 s, every charger holding its lower limit.
        meter.non_ev_a = [50.0, 50.0, 50.0]
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await wait_for(lambda: held_per_phase(sims) <= 49.0 + 1e-6, timeout=5)
        assert loop.time() - t0 < 5.0
        await asyncio.sleep(1.0)
        assert sum(s.draw_a for s in sims) <= 49.0 + 1e-6
        # The meter goes away: stale after 2 s, the fallback 30 A is assumed.
        await meter.stop()
        await wait_for(lambda: not service.controllers["office"].status(service.now()).meter.fresh, timeout=5)
        await wait_for(lambda: 60.0 <= held_per_phase(sims) <= 69.0 + 1e-6, timeout=10)
        async with http.get(base) as resp:
            site = await resp.json()
        assert site["meter_fresh"] is False
        assert site["non_ev_load_a"] == [30.0, 30.0, 30.0]
        # The read that found the meter gone may count as a timeout; the reconnect after its back-off
        # (poll_s, doubling) counts as "connect": wait for it (the clean-clone CI read too early once).
        text = ""
        deadline = loop.time() + 10.0
        while 'balancer_meter_errors_total{site="office",kind="connect"}' not in text and loop.time() < deadline:
            await asyncio.sleep(0.2)
            async with http.get(f"http://127.0.0.1:{service.http_port}/metrics") as resp:
                text = await resp.text()
        assert 'balancer_meter_errors_total{site="office",kind="connect"}' in text
        assert 'balancer_meter_fresh{site="office"} 0.0' in text
    finally:
        await http.close()
        for sim in sims:
            await sim.stop()
        await service.stop()
        await meter.stop()


async def test_http_push_validated_and_used(tmp_path: Path) -> None:
    config = meter_config(tmp_path, {"source": "http", "stale_after_s": 10, "fallback_base_load_a": 30,
                                     "margin_a": 1}, n_chargers=0)
    service = Service(config)
    await service.start()
    url = f"http://127.0.0.1:{service.http_port}/api/v1/sites/office/meter"
    now = datetime.now(UTC)
    good = {"current_a": [12.5, 13, -4], "timestamp": now.isoformat().replace("+00:00", "Z")}
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(url, json=good) as resp:
                assert resp.status == 401
            cases: list[tuple[Any, int, str | None]] = [
                ({**good, "currents_a": [1, 2, 3]}, 400, "currents_a"),
                ({"timestamp": good["timestamp"]}, 400, "current_a"),
                ({**good, "current_a": [1, 2]}, 400, "current_a"),
                ({**good, "current_a": [1, "2", 3]}, 400, "current_a[1]"),
                ({**good, "current_a": [1, True, 3]}, 400, "current_a[1]"),
                ({**good, "timestamp": (now - timedelta(seconds=30)).isoformat()}, 400, "timestamp"),
                ({**good, "timestamp": (now + timedelta(seconds=120)).isoformat()}, 400, "timestamp"),
                ({**good, "timestamp": "2026-13-01T00:00:00Z"}, 400, "timestamp"),
                ({**good, "timestamp": now.replace(tzinfo=None).isoformat()}, 400, "timestamp"),
                ({**good, "current_a": [-150, 0, 0]}, 400, "current_a"),  # negative beyond the 100 A limit
                ([1, 2, 3], 400, None),
            ]
            for body, status, field in cases:
                async with http.post(url, json=body, headers=AUTH) as resp:
                    answer = await resp.json()
                    assert resp.status == status, (body, answer)
                    assert answer.get("field") == field, (body, answer)
                    assert answer["code"] == "bad_request"
            async with http.post(url, data=b'{"current_a": [NaN, 1, 1], "timestamp": "x"}', headers=AUTH) as resp:
                assert resp.status == 400
            assert service.controllers["office"].meter.last_a is None  # nothing refused was taken
            async with http.post(url.replace("office", "nope"), json=good, headers=AUTH) as resp:
                assert resp.status == 404 and (await resp.json())["field"] == "site_id"
            async with http.post(url, json=good, headers=AUTH) as resp:
                assert resp.status == 202, await resp.text()
            async with http.get(url.rsplit("/", 1)[0], headers=AUTH) as resp:
                site = await resp.json()
            assert site["meter_fresh"] is True
            assert site["meter_a"] == [12.5, 13.0, -4.0]
            assert site["non_ev_load_a"] == [13.0, 13.0, -4.0]  # no charger draws; rounded up to 1 A
            async with http.get(f"http://127.0.0.1:{service.http_port}/metrics", headers=AUTH) as resp:
                text = await resp.text()
            assert 'balancer_meter_implausible_total{site="office",reason="negative_beyond_limit"} 1.0' in text
    finally:
        await service.stop()


async def test_meter_fields_reach_influxdb(tmp_path: Path) -> None:
    from tests.servers import InfluxServer

    server = InfluxServer(tmp_path / "influx").start()
    try:
        server.create_db("balancer")
        raw = {"sites": [{"id": "office", "grid_limit_a": 100, "fallback_kw": 69,
                          "meter": {"source": "http", "fallback_base_load_a": 30}}],
               "ocpp": {"host": "127.0.0.1", "port": 0},
               "http": {"host": "127.0.0.1", "port": 0, "admin_token": TOKEN},
               "influxdb": {"url": server.url, "api": "v1", "database": "balancer", "flush_interval_s": 0.2},
               "control": {"interval_s": 0.5}, "state_dir": str(tmp_path / "state")}
        service = Service(parse_config(raw))
        await service.start()
        try:
            url = f"http://127.0.0.1:{service.http_port}/api/v1/sites/office/meter"
            async with aiohttp.ClientSession(headers=AUTH) as http:
                for _ in range(6):
                    body = {"current_a": [21, 22, -3], "timestamp": datetime.now(UTC).isoformat()}
                    async with http.post(url, json=body) as resp:
                        assert resp.status == 202
                    await asyncio.sleep(0.3)

            def rows() -> list[list[Any]]:
                result = server.query("SELECT net_import_a_l1, non_ev_load_a_l3, meter_fresh, capacity_a_l1 "
                                      "FROM site WHERE meter_fresh = 1", "balancer")
                series = result["results"][0].get("series") or []
                return series[0]["values"] if series else []

            await wait_for(lambda: len(rows()) > 0, timeout=10)
            _, net_l1, non_ev_l3, fresh, capacity = rows()[-1]
            assert (net_l1, non_ev_l3, fresh) == (21.0, -3.0, 1)
            assert capacity is not None  # merged into the same site point
        finally:
            await service.stop()
    finally:
        server.stop()


async def test_cars_ramping_are_not_taken_for_building_load(tmp_path: Path) -> None:
    """Chargers that report every 10 s (real ones: 10 s to 15 min) under a meter read every 0.2 s.
    The meter sees each car ramp before its charger's reading does; taken for building load, the
    ramp lowered the cars, the readings then agreed and the cars rose again, over and over (the
    demo's fleet-wide on/off). With fresh readings asked for after each change (TriggerMessage)
    and the ramp held back until they come, the building's 10 A is seen within 1.5 A throughout a
    steady state, and no car is lowered."""
    sims: list[SimulatedCharger] = []
    meter, service = await modbus_site(tmp_path, sims, stale_after_s=10)
    now = datetime.now(UTC)
    sims.extend(SimulatedCharger(f"CP{i}", f"ws://127.0.0.1:{service.ocpp.port}/ocpp",
                                 protocol="ocpp1.6" if i % 2 else "ocpp2.0.1",
                                 car=SimCar(arrival=now, departure=now + timedelta(hours=5), energy_wh=60000),
                                 meter_interval_s=10.0, tick_s=0.05) for i in range(4))
    for sim in sims:
        sim.start()
    controller = service.controllers["office"]
    try:
        await wait_for(lambda: sum(s.draw_a for s in sims) >= 85.0, timeout=30)
        await asyncio.sleep(2.0)  # the cars' last ramp: the triggered readings come 5 s after a change
        non_ev: list[float] = []
        lowered: list[tuple[str, float, float]] = []
        held = {s.charger_id: s.limit_now(datetime.now(UTC)) or 0.0 for s in sims}
        pushes = service.counters["pushes"]
        loop = asyncio.get_running_loop()
        end = loop.time() + 12.0
        while loop.time() < end:
            await asyncio.sleep(0.1)
            view = controller.meter_view
            assert view is not None and view.fresh
            non_ev.append(float(max(view.non_ev_load_a)))
            for sim in sims:
                limit = sim.limit_now(datetime.now(UTC)) or 0.0
                if limit < held[sim.charger_id] - 0.5:
                    lowered.append((sim.charger_id, held[sim.charger_id], limit))
                held[sim.charger_id] = limit
        pushes = service.counters["pushes"] - pushes
        assert max(abs(x - 10.0) for x in non_ev) <= 1.5, (pushes, non_ev)  # main: 10 and 42 A in turn
        assert not lowered, (pushes, lowered)  # main: 236 pushes in these 12 s
        assert sum(s.draw_a for s in sims) >= 85.0
        assert sum(len(s.triggered) for s in sims) > 0  # the readings came because they were asked for
    finally:
        for sim in sims:
            await sim.stop()
        await service.stop()
        await meter.stop()
