"""Site meter step: a non-EV load step at the Modbus meter until the last charger holds its lower limit.

The real service (`balancer serve`) runs as its own process, with N 3-phase chargers and a site
meter (SunSpec over Modbus TCP, ``poll_s`` 1 s) served by ``adapters.meter.simulator`` from this
process, where N simulated chargers (1.6J and 2.0.1 mixed, all in a transaction) run too. The
meter reports the building's load plus what the simulated cars draw. The connection leaves
16 A per charger over a 10 A building; each step raises the building to 10 + 8 N A, so the
chargers must come down to 8 A each. The clock starts when the simulator's registers change and
stops when the limits the chargers hold (logged after each profile they accept) sum to no more
than 8 A per charger: that includes waiting for the next meter poll (up to ``poll_s``). Then the
building drops back and the chargers rise again (not timed) before the next step.
Run: .venv/bin/python bench/meter_step.py [N ...] (default 20 1000), 20 steps each.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapters.meter.simulator import MeterSimulator
from adapters.ocpp.simulator import SimCar, SimulatedCharger
from bench.common import machine
from bench.e2e_reaction import fit_time, free_port, log_held

STEPS = 20
BASE_A = 10.0
PER_CHARGER_A = 16.0
MARGIN_A = 1.0
POLL_S = 1.0


async def run(n: int, steps: int = STEPS) -> dict[str, object]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-meter-"))
    http_port, ocpp_port = free_port(), free_port()
    sims: list[SimulatedCharger] = []
    meter = MeterSimulator("sunspec", chargers_a=lambda: [sum(s.draw_a for s in sims)] * 3, noise_a=0.05)
    meter.non_ev_a = [BASE_A] * 3
    await meter.start()
    grid_a = PER_CHARGER_A * n + BASE_A + MARGIN_A
    config = {"sites": [{"id": "s", "voltage_v": 230, "grid_limit_a": grid_a,
                         "fallback_kw": round(grid_a * 3 * 230 / 1000, 3),
                         "chargers": [{"id": f"CP{i + 1:04d}", "max_current_a": 32} for i in range(n)],
                         "meter": {"source": "modbus", "host": "127.0.0.1", "port": meter.port, "map": "sunspec",
                                   "poll_s": POLL_S, "stale_after_s": 10, "margin_a": MARGIN_A,
                                   "fallback_base_load_a": [BASE_A] * 3}}],
              "ocpp": {"host": "127.0.0.1", "port": ocpp_port, "response_timeout_s": 30, "rate_limit_per_s": 1000},
              "http": {"host": "127.0.0.1", "port": http_port},
              "control": {"interval_s": 5.0}, "state_dir": str(tmp / "state")}
    (tmp / "config.yaml").write_text(yaml.safe_dump(config))
    log = open(tmp / "service.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "adapters.cli", "serve", "--config", str(tmp / "config.yaml")],
                            stdout=log, stderr=log, cwd=Path(__file__).resolve().parents[1])
    times: list[float] = []
    failed = 0
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(200):
                try:
                    async with session.get(f"http://127.0.0.1:{http_port}/healthz") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.1)
        now = datetime.now(UTC)
        sims.extend(SimulatedCharger(f"CP{i + 1:04d}", f"ws://127.0.0.1:{ocpp_port}/ocpp",
                                     protocol="ocpp1.6" if i % 2 else "ocpp2.0.1",
                                     car=SimCar(arrival=now, departure=now + timedelta(hours=2), energy_wh=1e6),
                                     meter_interval_s=10.0, tick_s=0.2, validate=False) for i in range(n))
        held_log: list[tuple[datetime, int, float]] = []
        log_held(sims, held_log)
        for k, sim in enumerate(sims):
            sim.start()
            if k % 50 == 49:
                await asyncio.sleep(0.2)

        def held_sum() -> float:
            t = datetime.now(UTC)
            return sum(sim.limit_now(t) or 0.0 for sim in sims)

        high, low = PER_CHARGER_A * n, 8.0 * n
        deadline = time.monotonic() + 120
        while held_sum() < high - 0.5 * n and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
        await asyncio.sleep(2 * POLL_S)
        for _ in range(steps):
            before = [sim.limit_now(datetime.now(UTC)) or 0.0 for sim in sims]
            stepped_at = datetime.now(UTC)
            meter.non_ev_a = [BASE_A + low] * 3
            started = time.monotonic()
            while held_sum() > low + 1e-6 and time.monotonic() - started < 30:
                await asyncio.sleep(0.1)
            reaction, _ = fit_time(held_log, before, stepped_at, low + 1e-6)
            if reaction == float("inf"):
                failed += 1
            else:
                times.append(reaction)
            await asyncio.sleep(1.0)
            meter.non_ev_a = [BASE_A] * 3
            started = time.monotonic()
            while held_sum() < high - 0.5 * n and time.monotonic() - started < 30:
                await asyncio.sleep(0.2)
            await asyncio.sleep(2 * POLL_S)
    finally:
        for sim in sims:
            await sim.stop()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:  # shutting down 1,000 connections can take longer
            proc.kill()
            proc.wait()
        await meter.stop()
    return {"chargers": n, "steps": len(times), "steps_not_followed_in_30s": failed, "poll_s": POLL_S,
            "step_a": low, "median_s": round(statistics.median(times), 3) if times else None,
            "worst_s": round(max(times), 3) if times else None, "best_s": round(min(times), 3) if times else None,
            "all_s": [round(t, 3) for t in times]}


def main() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
    sizes = [int(a) for a in sys.argv[1:]] or [20, 1000]
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    runs = []
    for n in sizes:
        runs.append(asyncio.run(run(n)))
        print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
    print(json.dumps({"benchmark": "meter_step", "machine": machine(), "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
