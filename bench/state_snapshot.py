"""What one state snapshot costs on the event loop: the controller's snapshot, its JSON and the
SQLite write (``Service._persist``), for a site of N chargers each in a session.

Run: .venv/bin/python bench/state_snapshot.py [N ...]   (prints JSON; default 200 1000)
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapters.app import PERSIST_EVERY_S, Service
from adapters.config_file import load_config
from balancer.events import ChargerOnline, MeterSample, SessionStarted
from bench.common import machine


async def measure(n: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(yaml.safe_dump({
            "state_dir": str(Path(tmp) / "state"), "http": {"port": 0}, "ocpp": {"port": 0},
            "sites": [{"id": "depot", "voltage_v": 230, "grid_limit_a": 10 * n, "fallback_kw": 7 * n,
                       "chargers": [{"id": f"CP{i}", "max_current_a": 32} for i in range(n)]}]}))
        service = Service(load_config(path))
        now = datetime.now(UTC)
        for i in range(n):
            service._on_event(ChargerOnline(charger_id=f"CP{i}", at=now, protocol="ocpp2.0.1"))
            service._on_event(SessionStarted(charger_id=f"CP{i}", at=now, transaction_id=f"tx{i}"))
        times = []
        for k in range(20):
            for i in range(n):  # every charger's energy moves between two snapshots
                service._on_event(MeterSample(charger_id=f"CP{i}", at=now, current_a=(16.0, 16.0, 16.0),
                                              energy_wh=1000.0 * k + i))
            started = time.perf_counter()
            service._persist()
            times.append(time.perf_counter() - started)
        size = len(json.dumps(service.controllers["depot"].snapshot(), separators=(",", ":")))
        service.store.close()
        service._executor.shutdown()
    times.sort()
    return {"chargers": n, "snapshot_ms_median": round(1000 * times[len(times) // 2], 2),
            "snapshot_ms_max": round(1000 * times[-1], 2), "snapshot_bytes": size, "every_s": PERSIST_EVERY_S}


async def main(sizes: list[int]) -> None:
    results = [await measure(n) for n in sizes]
    print(json.dumps({"machine": machine(), "results": results}, indent=2))


if __name__ == "__main__":
    asyncio.run(main([int(a) for a in sys.argv[1:]] or [200, 1000]))
