"""The event loop's worst stall while large valid forecasts arrive (issue 19 item 2).

Runs ``balancer serve`` as a process (one site, the real OSCP endpoint and admin API), posts
``N_FORECASTS`` forecasts of ``N_BLOCKS`` blocks each concurrently, and meanwhile asks
``/healthz`` every 5 ms: ``/healthz`` does no work, so its latency is the time the service's event
loop was busy elsewhere. Prints JSON: the POSTs' latencies and the worst /healthz latency, also
measured idle for comparison. Run: .venv/bin/python bench/oscp_large_forecasts.py
"""

from __future__ import annotations

import asyncio
import json
import os
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
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

N_FORECASTS = 20
N_BLOCKS = 800
ROUNDS = 3
PROBE_EVERY_S = 0.005


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def forecast_body(k: int, start: datetime) -> dict[str, Any]:
    """``N_BLOCKS`` consecutive blocks over the next 24 h (108 s each), capacities varying per post."""
    step = timedelta(seconds=24 * 3600 // N_BLOCKS)
    blocks = [{"capacity": 150 + (7 * i + 13 * k) % 90, "phase": "ALL", "unit": "A",
               "start_time": (start + i * step).isoformat().replace("+00:00", "Z"),
               "end_time": (start + (i + 1) * step).isoformat().replace("+00:00", "Z")}
              for i in range(N_BLOCKS)]
    return {"group_id": "s", "type": "CONSUMPTION", "forecasted_blocks": blocks}


async def probe(session: aiohttp.ClientSession, url: str, stop: asyncio.Event, out: list[float]) -> None:
    while not stop.is_set():
        started = time.perf_counter()
        async with session.get(url) as response:
            await response.read()
        out.append(time.perf_counter() - started)
        await asyncio.sleep(PROBE_EVERY_S)


async def run(base: str) -> dict[str, Any]:
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    payloads = [json.dumps(forecast_body(k, start)) for k in range(N_FORECASTS)]
    headers = {"Authorization": "Token t", "Content-Type": "application/json"}
    url = f"{base}/oscp/fp/2.0/update_group_capacity_forecast"
    async with aiohttp.ClientSession() as session:
        idle: list[float] = []
        stop = asyncio.Event()
        task = asyncio.create_task(probe(session, f"{base}/healthz", stop, idle))
        await asyncio.sleep(1.0)
        stop.set()
        await task
        rounds = []
        for _ in range(ROUNDS):
            lags: list[float] = []
            stop = asyncio.Event()
            task = asyncio.create_task(probe(session, f"{base}/healthz", stop, lags))
            await asyncio.sleep(0.2)

            async def post(payload: str) -> tuple[int, float]:
                started = time.perf_counter()
                async with session.post(url, data=payload, headers=headers) as response:
                    await response.read()
                    return response.status, time.perf_counter() - started

            started = time.perf_counter()
            results = await asyncio.gather(*(post(p) for p in payloads))
            wall = time.perf_counter() - started
            await asyncio.sleep(0.3)
            stop.set()
            await task
            rounds.append({"statuses": sorted({s for s, _ in results}), "wall_s": round(wall, 3),
                           "post_max_s": round(max(t for _, t in results), 3),
                           "healthz_max_s": round(max(lags), 4), "healthz_probes": len(lags)})
    return {"healthz_idle_max_s": round(max(idle), 4), "rounds": rounds,
            "worst_healthz_s": max(r["healthz_max_s"] for r in rounds),
            "worst_post_s": max(r["post_max_s"] for r in rounds)}


def main() -> None:
    from bench.common import machine

    with tempfile.TemporaryDirectory() as tmp:
        port = _free_port()
        config = {"sites": [{"id": "s", "grid_limit_a": 400, "fallback_kw": 50,
                             "chargers": [{"id": f"CP{i}", "max_current_a": 32} for i in range(10)]}],
                  "oscp": {"token": "t"}, "state_dir": str(Path(tmp) / "state"),
                  "ocpp": {"host": "127.0.0.1", "port": _free_port()},
                  "http": {"host": "127.0.0.1", "port": port, "max_body_bytes": 4_194_304}}
        path = Path(tmp) / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        log = open(Path(tmp) / "service.log", "wb")  # noqa: SIM115 - closed below
        proc = subprocess.Popen([sys.executable, "-m", "adapters.cli", "serve", "--config", str(path)],
                                stdout=log, stderr=log, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        base = f"http://127.0.0.1:{port}"
        try:
            end = time.monotonic() + 30
            while True:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                        break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > end:
                        raise RuntimeError((Path(tmp) / "service.log").read_text()) from None
                    time.sleep(0.1)
            result = asyncio.run(run(base))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
            log.close()
    print(json.dumps({"benchmark": "oscp_large_forecasts", "forecasts": N_FORECASTS, "blocks_per_forecast": N_BLOCKS,
                      "body_bytes": len(json.dumps(forecast_body(0, datetime(2026, 3, 1, tzinfo=UTC)))),
                      "machine": machine(), **result}, indent=1))


if __name__ == "__main__":
    main()
