"""OSCP forecasts accepted per second end to end: HTTP in, validated, stored in SQLite, capacity updated.

96-block forecasts POSTed over keep-alive connections to the real endpoint (one server process
core). Run: .venv/bin/python bench/oscp_forecasts.py   (prints JSON)
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

N_REQUESTS = 3000
CONCURRENCY = 8


def serve(port_queue: multiprocessing.Queue, state_dir: str) -> None:  # type: ignore[type-arg]
    from aiohttp import web

    from adapters.oscp.endpoint import add_oscp_routes
    from adapters.oscp.provider import FlexibilityProvider
    from adapters.store import StateStore
    from balancer.config import parse_config

    config = parse_config({"sites": [{"id": "s", "grid_limit_a": 400, "fallback_kw": 50,
                                      "chargers": [{"id": "A", "max_current_a": 32}]}],
                           "oscp": {"token": "t"}, "state_dir": state_dir})
    store = StateStore(Path(state_dir) / "state.sqlite")
    updated = []

    fp: FlexibilityProvider

    def on_change(site_id: str) -> None:
        # What the service does on a change: read the capacity array in force.
        updated.append(fp.capacity_slots(site_id, datetime(2026, 3, 1, tzinfo=UTC), 96)[0])

    fp = FlexibilityProvider(config, store, on_capacity_changed=on_change)

    async def main() -> None:
        app = web.Application()
        add_oscp_routes(app, fp)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port_queue.put(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
        await asyncio.Event().wait()

    asyncio.run(main())


async def client(port: int) -> dict[str, float]:
    import aiohttp

    from adapters.oscp.simulator import day_profile_blocks

    body = {"group_id": "s", "type": "CONSUMPTION",
            "forecasted_blocks": day_profile_blocks(datetime(2026, 3, 1, tzinfo=UTC), base_kw=100, dip_kw=40)}
    url = f"http://127.0.0.1:{port}/oscp/fp/2.0/update_group_capacity_forecast"
    headers = {"Authorization": "Token t", "Content-Type": "application/json"}
    payload = json.dumps(body)
    statuses: list[int] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CONCURRENCY)) as session:
        async def worker(count: int) -> None:
            for _ in range(count):
                async with session.post(url, data=payload, headers=headers) as response:
                    await response.read()
                    statuses.append(response.status)

        await asyncio.gather(*(worker(50) for _ in range(CONCURRENCY)))  # warm-up
        statuses.clear()
        started = time.perf_counter()
        await asyncio.gather(*(worker(N_REQUESTS // CONCURRENCY) for _ in range(CONCURRENCY)))
        seconds = time.perf_counter() - started
    return {"requests": len(statuses), "all_204": all(s == 204 for s in statuses), "seconds": round(seconds, 3),
            "forecasts_per_s": round(len(statuses) / seconds, 1)}


def main() -> None:
    from bench.common import machine

    queue: multiprocessing.Queue = multiprocessing.Queue()  # type: ignore[type-arg]
    with tempfile.TemporaryDirectory() as state_dir:
        proc = multiprocessing.Process(target=serve, args=(queue, state_dir), daemon=True)
        proc.start()
        port = queue.get(timeout=30)
        result = asyncio.run(client(port))
        proc.terminate()
    print(json.dumps({"benchmark": "oscp_forecasts", "blocks_per_forecast": 96, "concurrency": CONCURRENCY,
                      "machine": machine(), **result}, indent=1))


if __name__ == "__main__":
    main()
