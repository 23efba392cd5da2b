"""Every dashboard query (panels and annotations) against a real InfluxDB filled by the sink.

The test data holds two sites and, on the depot, a three-phase charger with a phase rotation and
single-phase chargers on L2 and L3: each shows on the panels of the grid phases it is wired to
and nowhere else; each site is its own series; the plan is per phase over the whole 24 h.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from adapters.influx import InfluxSink
from adapters.meter.hub import meter_point
from adapters.metrics import (
    EVENT_KINDS,
    SOURCE_CODES,
    charger_point,
    event_point,
    obedience_point,
    plan_points,
    service_point,
    site_point,
    wired_phases,
)
from balancer.control import SiteStatus
from balancer.model import Charger, InfluxSettings, Site
from balancer.plan import Plan
from balancer.site_meter import MeterView
from tests.dashboard import (
    DASHBOARD,
    annotation_queries,
    dashboard,
    expand,
    run,
    run_dashboard_queries,
    series_by_panel,
)
from tests.servers import InfluxServer

ROOT = Path(__file__).resolve().parents[2]

DEPOT = Site(id="depot", voltage_v=230, grid_limit_a=100, fallback_kw=40, chargers=(
    Charger(id="TRI", max_current_a=32, phases=3, phase_rotation="STR"),
    Charger(id="ONE-L2", max_current_a=32, phases=1, phase="L2"),
    Charger(id="ONE-L3", max_current_a=32, phases=1, phase="L3"),
))
OFFICE = Site(id="office", voltage_v=230, grid_limit_a=40, fallback_kw=10, chargers=(
    Charger(id="OFF1", max_current_a=16, phases=3),
))
# What each charger draws per grid phase (the controller maps its phases onto the grid's).
MEASURED = {"TRI": [15.0, 15.0, 15.0], "ONE-L2": [0.0, 14.0, 0.0], "ONE-L3": [0.0, 0.0, 13.0],
            "OFF1": [10.0, 10.0, 10.0]}
LIMITS = {"TRI": 16.0, "ONE-L2": 14.5, "ONE-L3": 13.5, "OFF1": 12.0}
CAPACITY = {"depot": 60.0, "office": 32.0}


@pytest.fixture(scope="module")
def influx(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("dash")
    server = InfluxServer(tmp / "influx").start()
    try:
        server.create_db("balancer")
        asyncio.run(_fill(server, tmp))
        yield server
    finally:
        server.stop()


async def _fill(server: InfluxServer, tmp: Path) -> None:
    sink = InfluxSink(InfluxSettings(url=server.url, api="v1", database="balancer", flush_interval_s=0.1),
                      tmp / "spill")
    await sink.start()
    now = datetime.now(UTC)
    for site in (DEPOT, OFFICE):
        wired = wired_phases(site)
        cap = CAPACITY[site.id]
        for k in range(30):
            t = now - timedelta(minutes=30 - k)
            source = "forecast" if k < 20 else "fallback_config"
            sink.write([site_point(site.id, t, capacity_a=[cap] * 3, capacity_source=source,
                                   allocated_a=[cap - 10] * 3, measured_a=[cap - 15] * 3, grid_online=k < 20,
                                   energy_requested_wh=50000, energy_delivered_wh=k * 1000.0,
                                   chargers_connected=len(site.chargers))])
            sink.write([charger_point(site.id, c.id, t, protocol="ocpp1.6", limit_a=LIMITS[c.id],
                                      measured_a=MEASURED[c.id], power_w=10000, energy_wh=k * 500.0, soc_pct=40,
                                      state="charging", connected=True, obeys=k < 25, grid_phases=wired[c.id])
                        for c in site.chargers])
            sink.write([service_point(t, outbox_messages=k // 10)])
            view = MeterView(meter_a=np.array([cap + 10.0] * 3), non_ev_load_a=np.array([25.0] * 3), fresh=True,
                             cut_a=np.array([26.0] * 3))
            status = SiteStatus(site.id, t, (cap, cap, cap), cap * 690, source, (cap - 10,) * 3, (cap - 15,) * 3,
                                "ok", "optimal", (), meter=view)
            metered = meter_point(site.id, t, status)
            assert metered is not None
            sink.write([metered])
        start = now.replace(second=0, microsecond=0) - timedelta(minutes=now.minute % 15)
        ids = tuple(c.id for c in site.chargers)
        limits = np.array([[LIMITS[cid]] * 96 for cid in ids])
        sink.write(plan_points(site.id, Plan(start, 900, ids, limits), np.full((96, 3), cap), wired))
    at = now - timedelta(minutes=5)
    sink.write([event_point("depot", at, kind="profile_push", ok=False, result="Rejected", charger="ONE-L2",
                            limit_a=10),
                event_point("depot", at, kind="profile_push", ok=True, result="Accepted", charger="TRI", limit_a=10),
                event_point("depot", now - timedelta(minutes=10), kind="fallback_on", ok=True,
                            result="fallback_config"),
                event_point("depot", now - timedelta(minutes=2), kind="fallback_off", ok=True, result="forecast"),
                event_point("depot", now - timedelta(minutes=8), kind="compliance_error", ok=False,
                            result="measured draw exceeds capacity by 3.0 A"),
                obedience_point("depot", now - timedelta(minutes=6), charger="TRI", obeys=False, draw_a=25.0,
                                detail="draws 25.0 A over its 16.0 A limit"),
                obedience_point("depot", now - timedelta(minutes=3), charger="TRI", obeys=True, draw_a=15.0,
                                detail="follows its limit again"),
                event_point("depot", now - timedelta(minutes=4), kind="config_reloaded", ok=True, result="site.yaml"),
                event_point("office", now - timedelta(minutes=4), kind="config_reloaded", ok=True,
                            result="site.yaml")])
    await asyncio.sleep(0.5)
    await sink.stop()


def chargers_of(series: list[dict[str, Any]]) -> set[str]:
    return {s["tags"]["charger"] for s in series if s["values"]}


def test_every_panel_query_returns_data(influx: InfluxServer) -> None:
    rows = run_dashboard_queries(influx, "balancer", "depot")
    empty = [title for title, r in rows.items() if not r]
    assert not empty, empty


def test_chargers_show_on_the_grid_phases_they_are_wired_to(influx: InfluxServer) -> None:
    panels = series_by_panel(influx, "balancer", "depot")
    assert chargers_of(panels["Chargers on L1: limit and measured current"]) == {"TRI"}
    assert chargers_of(panels["Chargers on L2: limit and measured current"]) == {"TRI", "ONE-L2"}
    assert chargers_of(panels["Chargers on L3: limit and measured current"]) == {"TRI", "ONE-L3"}
    for phase, cid in (("L2", "ONE-L2"), ("L3", "ONE-L3")):
        (series,) = [s for s in panels[f"Chargers on {phase}: limit and measured current"]
                     if s["tags"]["charger"] == cid]
        assert series["columns"] == ["time", "limit", "measured"]
        k = int(phase[1]) - 1
        assert {tuple(v[1:]) for v in series["values"]} == {(LIMITS[cid], MEASURED[cid][k])}


def test_every_site_is_its_own_series(influx: InfluxServer) -> None:
    """With "All" sites selected each site keeps its own values: nothing is averaged."""
    panels = series_by_panel(influx, "balancer", "depot", "office")
    for phase in ("L1", "L2", "L3"):
        series = panels[f"Site {phase}: capacity vs allocated vs measured"]
        got = {s["tags"]["site"]: {v[1] for v in s["values"]} for s in series}
        assert got == {"depot": {60.0}, "office": {32.0}}
    source = panels["Capacity source"]
    assert {s["tags"]["site"] for s in source} == {"depot", "office"}
    assert chargers_of(panels["Chargers on L1: limit and measured current"]) == {"TRI", "OFF1"}


def test_plan_is_per_phase_over_the_whole_24_h(influx: InfluxServer) -> None:
    panels = series_by_panel(influx, "balancer", "depot")
    planned = {"L1": LIMITS["TRI"], "L2": LIMITS["TRI"] + LIMITS["ONE-L2"], "L3": LIMITS["TRI"] + LIMITS["ONE-L3"]}
    for phase, want in planned.items():
        (series,) = panels[f"Plan {phase}: planned current vs capacity, next 24 h"]
        assert len(series["values"]) == 96  # every 15-min slot of the day ahead
        assert {tuple(v[1:]) for v in series["values"]} == {(60.0, want)}
    panel = next(p for p in dashboard()["panels"] if p["title"].startswith("Plan L1"))
    assert panel["timeFrom"] == "+24h"  # Grafana: from now to now + 24 h


def test_annotations_show_every_event_kind(influx: InfluxServer) -> None:
    queries = annotation_queries()
    assert set(queries) == {"Fallback entered / left", "Compliance errors", "Chargers disobeying / obeying",
                            "Config reloaded / rejected"}
    found: dict[str, list[Any]] = {}
    for name, query in queries.items():
        (series,) = run(influx, "balancer", expand(query, "depot"))
        assert series["columns"][:3] == ["time", "result", "kind"]
        found[name] = sorted(v[2] for v in series["values"])
    assert found == {"Fallback entered / left": ["fallback_off", "fallback_on"],
                     "Compliance errors": ["compliance_error"],
                     "Chargers disobeying / obeying": ["charger_disobeying", "charger_obeying"],
                     "Config reloaded / rejected": ["config_reloaded"]}
    # Filtered by the site variable: the office had only its config reload.
    office = [v[2] for q in queries.values() for s in run(influx, "balancer", expand(q, "office"))
              for v in s["values"]]
    assert office == ["config_reloaded"]
    covered = {kind for kinds in found.values() for kind in kinds} | {"profile_push", "config_rejected"}
    assert covered == set(EVENT_KINDS)


def test_capacity_source_codes_have_value_mappings() -> None:
    panel = next(p for p in dashboard()["panels"] if p["title"] == "Capacity source")
    (mapping,) = panel["fieldConfig"]["defaults"]["mappings"]
    texts = {int(code): option["text"] for code, option in mapping["options"].items()}
    assert texts == {0: "forecast", 1: "fallback forecast", 2: "fallback_kw"}
    assert set(texts) == set(SOURCE_CODES.values())


def test_datasource_is_a_variable_and_an_import_input() -> None:
    """Imported through Grafana's UI, the dashboard asks for the datasource instead of needing a uid."""
    dash = dashboard()
    (inp,) = dash["__inputs"]
    assert inp["type"] == "datasource" and inp["pluginId"] == "influxdb"
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "influxdb"
    assert variables["datasource"]["current"]["value"] == "${" + inp["name"] + "}"
    refs = [p["datasource"] for p in dash["panels"]] + [t["datasource"] for p in dash["panels"] for t in p["targets"]]
    refs += [a["datasource"] for a in dash["annotations"]["list"][1:]] + [variables["site"]["datasource"]]
    assert refs and all(r == {"type": "influxdb", "uid": "${datasource}"} for r in refs)
    assert "balancer-influxdb" not in DASHBOARD.read_text()


def test_committed_dashboard_is_what_the_generator_writes() -> None:
    script = ROOT / "configs" / "grafana" / "generate_dashboard.py"
    done = subprocess.run([sys.executable, "-c", "import runpy,sys; m = runpy.run_path(sys.argv[1]); "
                           "sys.stdout.write(m['render']())", str(script)], capture_output=True, text=True,
                          check=True)
    assert json.loads(done.stdout) == dashboard()


def test_datasource_sends_the_token_header() -> None:
    """Grafana sends httpHeaderValue1 only under the name in jsonData.httpHeaderName1."""
    path = ROOT / "configs" / "grafana" / "datasources" / "influxdb.yaml"
    source = yaml.safe_load(path.read_text())["datasources"][0]
    assert source["jsonData"]["httpHeaderName1"] == "Authorization"
    assert source["secureJsonData"]["httpHeaderValue1"] == "Token ${INFLUX_TOKEN}"
