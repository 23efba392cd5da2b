"""A short `balancer demo` writing to a real InfluxDB: every dashboard panel query returns data."""

from __future__ import annotations

import io
from pathlib import Path

from adapters.demo import run_demo_async
from tests.dashboard import run_dashboard_queries
from tests.servers import InfluxServer


async def test_demo_feeds_every_dashboard_panel(tmp_path: Path) -> None:
    server = InfluxServer(tmp_path / "influx").start()
    try:
        server.create_db("balancer")
        out = io.StringIO()
        result = await run_demo_async(n_chargers=8, seconds=12, plot=str(tmp_path / "demo.png"), out=out,
                                      influx={"url": server.url, "api": "v1", "database": "balancer",
                                              "flush_interval_s": 0.2})
        text = out.getvalue()
        assert "limit violations (sum of limits > capacity): 0" in text
        assert result.violations == 0 and result.limit_violations == 0
        assert sum(result.delivered_wh.values()) > 0.8 * sum(result.requested_wh.values())
        assert (tmp_path / "demo.png").read_bytes()[:4] == b"\x89PNG"
        rows = run_dashboard_queries(server, "balancer", "demo-depot")
        empty = [title for title, r in rows.items() if not r]
        assert not empty, empty
    finally:
        server.stop()
