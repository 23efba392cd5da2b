"""Every dashboard panel query returns data from a real InfluxDB filled by the sink."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import yaml

from adapters.influx import InfluxSink
from adapters.meter.hub import meter_point
from adapters.metrics import charger_point, event_point, plan_points, site_point
from balancer.control import SiteStatus
from balancer.model import InfluxSettings
from balancer.plan import Plan
from balancer.site_meter import MeterView
from tests.dashboard import run_dashboard_queries
from tests.servers import InfluxServer


async def test_every_panel_query_returns_data(tmp_path: Path) -> None:
    server = InfluxServer(tmp_path / "influx").start()
    try:
        server.create_db("balancer")
        sink = InfluxSink(InfluxSettings(url=server.url, api="v1", database="balancer", flush_interval_s=0.1),
                          tmp_path / "spill")
        await sink.start()
        now = datetime.now(UTC)
        for k in range(30):
            t = now - timedelta(minutes=30 - k)
            source = "forecast" if k < 20 else "fallback_config"
            sink.write([site_point("depot", t, capacity_a=[60, 60, 60], capacity_source=source,
                                   allocated_a=[50, 48, 49], measured_a=[45, 44, 46], grid_online=k < 20,
                                   energy_requested_wh=50000,
                                   energy_delivered_wh=k * 1000.0, chargers_connected=2)])
            view = MeterView(meter_a=np.array([70.0, 69.0, 71.0]), non_ev_load_a=np.array([25.0, 25.0, 25.0]),
                             fresh=True, cut_a=np.array([26.0, 26.0, 26.0]))
            status = SiteStatus("depot", t, (60, 60, 60), 41400, source, (50, 48, 49), (45, 44, 46), "ok", "optimal",
                                (), meter=view)
            metered = meter_point("depot", t, status)
            assert metered is not None
            sink.write([metered])
            sink.write([charger_point("depot", f"CP{i}", t, protocol="ocpp1.6", limit_a=16, measured_a=[15, 15, 15],
                                      power_w=10000, energy_wh=k * 500.0, soc_pct=40, state="charging",
                                      connected=True, obeys=True) for i in range(2)])
        sink.write([event_point("depot", now - timedelta(minutes=5), kind="profile_push", ok=False, result="Rejected",
                                charger="CP1", limit_a=10),
                    event_point("depot", now - timedelta(minutes=5), kind="profile_push", ok=True, result="Accepted",
                                charger="CP0", limit_a=10),
                    event_point("depot", now - timedelta(minutes=10), kind="fallback_on", ok=True, result="x")])
        start = now.replace(second=0, microsecond=0)
        sink.write(plan_points("depot", Plan(start, 900, ("CP0",), np.full((1, 96), 16.0)), np.full((96, 3), 60.0)))
        await asyncio.sleep(0.5)
        await sink.stop()
        rows = run_dashboard_queries(server, "balancer", "depot")
        empty = [title for title, r in rows.items() if not r]
        assert not empty, empty
    finally:
        server.stop()


def test_datasource_sends_the_token_header() -> None:
    """Grafana sends httpHeaderValue1 only under the name in jsonData.httpHeaderName1."""
    path = Path(__file__).resolve().parents[2] / "configs" / "grafana" / "datasources" / "influxdb.yaml"
    source = yaml.safe_load(path.read_text())["datasources"][0]
    assert source["jsonData"]["httpHeaderName1"] == "Authorization"
    assert source["secureJsonData"]["httpHeaderValue1"] == "Token ${INFLUX_TOKEN}"
