"""How long a cluster instance takes to exit on SIGTERM while a state write of its hangs.

One instance reaches PostgreSQL through a TCP proxy; the proxy is cut (the connection stays open
and silent: every byte acknowledged, none passed on), the grid operator sends a forecast (its
write goes into the proxy), the instance gives up its site (lease), then gets SIGTERM. Measured
per run: from SIGTERM to exit (capped at ``--cap`` s, then kill -9) and the exit code. Prints
JSON. ``python bench/cluster_stop.py [--runs 5]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapters.oscp.simulator import GridOperatorSimulator
from bench.common import machine
from tests.cluster_servers import NatsServer, PostgresServer
from tests.e2e.cluster import Instance, cluster_config
from tests.e2e.test_service import blocks
from tests.tcp_proxy import TcpProxy


async def once(tmp: Path, pg_url: str, nats_url: str, cap_s: float) -> dict[str, Any]:
    url = urlsplit(pg_url)
    proxy = TcpProxy("127.0.0.1", int(url.port or 5432))
    a = Instance(tmp, "a", cluster_config(1), f"postgresql://postgres@127.0.0.1:{proxy.port}{url.path}", nats_url)
    try:
        a.start()
        end = time.monotonic() + 30
        while a.controlled() != {"s0"}:
            assert time.monotonic() < end, "a never controlled its site"
            await asyncio.sleep(0.2)
        proxy.cut()
        grid = GridOperatorSimulator(fp_url=f"{a.url}/oscp/fp/2.0", fp_token="oscp-token")
        await grid.start()
        forecast_status = await grid.send_forecast("s0", blocks(3.0))
        await grid.stop()
        end = time.monotonic() + 10
        while a.controlled():
            assert time.monotonic() < end, "a kept its site"
            await asyncio.sleep(0.1)
        assert a.proc is not None
        sent = time.monotonic()
        a.proc.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.to_thread(a.proc.wait, cap_s)
        except subprocess.TimeoutExpired:
            a.proc.kill()
            code = await asyncio.to_thread(a.proc.wait)
        return {"forecast_status": forecast_status, "sigterm_to_exit_s": round(time.monotonic() - sent, 2),
                "exit_code": code}
    finally:
        if a.proc is not None and a.proc.poll() is None:
            a.proc.kill()
        proxy.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--cap", type=float, default=15.0, help="kill -9 after this many seconds (as the tests do)")
    args = parser.parse_args()
    pg, nats = PostgresServer().start(), NatsServer().start()
    runs = []
    try:
        for i in range(args.runs):
            with tempfile.TemporaryDirectory(prefix=f"bench-cluster-stop-{i}-") as tmp:
                runs.append(await once(Path(tmp), pg.database(), nats.url, args.cap))
    finally:
        nats.stop()
        pg.stop()
    times = sorted(r["sigterm_to_exit_s"] for r in runs)
    print(json.dumps({"machine": machine(), "runs": runs, "sigterm_to_exit_s_median": times[len(times) // 2],
                      "sigterm_to_exit_s_max": times[-1],
                      "clean_exits": sum(1 for r in runs if r["exit_code"] == 0)}, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
