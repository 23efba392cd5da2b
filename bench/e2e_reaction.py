"""End-to-end reaction: an OSCP forecast POST until the last charger has accepted its new limit.

The real service (`balancer serve`) runs as its own process with N chargers configured;
N simulated chargers (1.6J and 2.0.1 mixed, all in a transaction) connect from this process.
After everything settles, a forecast that halves the capacity is POSTed; the clock stops when
the limits the simulated chargers hold (logged after each profile they accept) sum to no more
than the new capacity. Two runs: chargers that schema-check every message (as in the tests) and
chargers that do not, since here one core validates for the whole fleet; the CPU each process
used during the wait says which side set the figure. Run: .venv/bin/python bench/e2e_reaction.py [N]
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapters.ocpp.simulator import SimCar, SimulatedCharger
from bench.common import machine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def blocks(kw: float) -> list[dict[str, object]]:
    now = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=30)
    return [{"capacity": kw, "phase": "ALL", "unit": "KW", "start_time": now.isoformat().replace("+00:00", "Z"),
             "end_time": (now + timedelta(hours=24)).isoformat().replace("+00:00", "Z")}]


def fit_time(held_log: list[tuple[datetime, int, float]], before: list[float], since: datetime,
             capacity_a: float) -> tuple[float, float]:
    """(seconds after ``since`` when the limits held first summed to at most ``capacity_a``,
    seconds to the first profile accepted after ``since``), from the log of what each charger
    held right after every profile it accepted."""
    changes = sorted(entry for entry in held_log if entry[0] > since)
    held, total = list(before), sum(before)
    for at, k, limit in changes:
        total += limit - held[k]
        held[k] = limit
        if total <= capacity_a:
            return (at - since).total_seconds(), (changes[0][0] - since).total_seconds()
    return float("inf"), float("inf")


def log_held(sims: list[SimulatedCharger], held_log: list[tuple[datetime, int, float]]) -> None:
    """After every profile a charger accepts, note the time and the limit it then holds."""
    for k, sim in enumerate(sims):
        accept = sim.accept_profile

        def logged(evse: int, profile: dict[str, Any], sim: SimulatedCharger = sim, k: int = k,
                   accept: Any = accept) -> str:
            result = accept(evse, profile)
            now = datetime.now(UTC)
            held_log.append((now, k, sim.limit_now(now) or 0.0))
            return result

        sim.accept_profile = logged  # type: ignore[method-assign]


async def run(n: int, validate: bool) -> dict[str, object]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-e2e-"))
    http_port, ocpp_port = free_port(), free_port()
    config = {"sites": [{"id": "s", "voltage_v": 230, "grid_limit_a": 20 * n, "fallback_kw": 10,
                         "chargers": [{"id": f"CP{i + 1:04d}", "max_current_a": 32} for i in range(n)]}],
              "ocpp": {"host": "127.0.0.1", "port": ocpp_port, "response_timeout_s": 30, "rate_limit_per_s": 1000},
              "http": {"host": "127.0.0.1", "port": http_port}, "oscp": {"token": "t"},
              "control": {"interval_s": 5.0}, "state_dir": str(tmp / "state")}
    (tmp / "config.yaml").write_text(yaml.safe_dump(config))
    log = open(tmp / "service.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "adapters.cli", "serve", "--config", str(tmp / "config.yaml")],
                            stdout=log, stderr=log, cwd=Path(__file__).resolve().parents[1])
    url = f"http://127.0.0.1:{http_port}/oscp/fp/2.0/update_group_capacity_forecast"
    headers = {"Authorization": "Token t"}
    async with aiohttp.ClientSession() as session:
        for _ in range(200):
            try:
                async with session.get(f"http://127.0.0.1:{http_port}/healthz") as r:
                    if r.status == 200:
                        break
            except aiohttp.ClientError:
                await asyncio.sleep(0.1)
        high_kw = 16 * n * 3 * 230 / 1000  # 16 A per charger
        async with session.post(url, json={"group_id": "s", "type": "CONSUMPTION", "forecasted_blocks": blocks(high_kw)},
                                headers=headers) as r:
            assert r.status == 204
        now = datetime.now(UTC)
        sims = [SimulatedCharger(f"CP{i + 1:04d}", f"ws://127.0.0.1:{ocpp_port}/ocpp",
                                 protocol="ocpp1.6" if i % 2 else "ocpp2.0.1",
                                 car=SimCar(arrival=now, departure=now + timedelta(hours=2), energy_wh=1e6),
                                 meter_interval_s=10.0, tick_s=1.0, validate=validate) for i in range(n)]
        held_log: list[tuple[datetime, int, float]] = []
        log_held(sims, held_log)
        for k, sim in enumerate(sims):
            sim.start()
            if k % 50 == 49:
                await asyncio.sleep(0.2)

        def held(sim: SimulatedCharger) -> float:
            return sim.limit_now(datetime.now(UTC)) or 0.0

        deadline = time.monotonic() + 60
        while not all(sim.transaction_id and held(sim) > 0 for sim in sims) and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
        settled = sum(1 for sim in sims if held(sim) > 0)
        await asyncio.sleep(3)
        before = [held(sim) for sim in sims]
        server, client = psutil.Process(proc.pid), psutil.Process()
        cpu_before = (sum(server.cpu_times()[:2]), sum(client.cpu_times()[:2]))
        posted_at = datetime.now(UTC)
        started = time.perf_counter()
        async with session.post(url, json={"group_id": "s", "type": "CONSUMPTION", "forecasted_blocks": blocks(high_kw / 2)},
                                headers=headers) as r:
            assert r.status == 204
        answered_s = time.perf_counter() - started
        # Wait (polling rarely: the simulated chargers share this process) until what the chargers
        # hold fits the new capacity, 8 A per charger on every phase; then read the moment it did
        # from the log of what they held after each profile they accepted, so the polling does not
        # shape the figure.
        capacity = 8.0 * n + 1e-6
        while sum(held(sim) for sim in sims) > capacity and time.perf_counter() - started < 60:
            await asyncio.sleep(0.25)
        reaction, first = fit_time(held_log, before, posted_at, capacity)
        # CPU each side used from the POST to the end of the wait (which runs past the reaction):
        # with both near the reaction time, the two cores, not waiting, set the figure.
        cpu_after = (sum(server.cpu_times()[:2]), sum(client.cpu_times()[:2]))
        waited = time.perf_counter() - started
        reached = sum(held(sim) for sim in sims)
    for sim in sims:
        await sim.stop()
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    return {"chargers": n, "chargers_validate_messages": validate, "chargers_holding_a_limit": settled,
            "held_sum_before_a": round(sum(before), 1), "new_capacity_a": 8.0 * n,
            "held_sum_after_a": round(reached, 1), "post_answered_s": round(answered_s, 3),
            "first_charger_accepted_s": round(first, 3), "reaction_s": round(reaction, 3),
            "wait_s": round(waited, 3), "service_cpu_s_in_wait": round(cpu_after[0] - cpu_before[0], 3),
            "chargers_cpu_s_in_wait": round(cpu_after[1] - cpu_before[1], 3)}


def main() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    # Once with simulated chargers that schema-check every message, as the tests run them, and once
    # without: 1,000 of them share one core here, where real chargers each have their own.
    runs = [asyncio.run(run(n, validate)) for validate in (True, False)]
    print(json.dumps({"benchmark": "e2e_reaction", "machine": machine(), "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
