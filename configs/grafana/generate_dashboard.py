"""Write ``dashboards/balancer.json``. Run: python configs/grafana/generate_dashboard.py

The dashboard is generated so that the three phases, the series per site and the annotations
stay alike; a test checks that the committed JSON is what this script writes. Queries are
InfluxQL (InfluxDB 1.x, 2.x through a DBRP mapping, 3.x) over the measurements of
``adapters/metrics.py``; every one is run against a real InfluxDB by ``tests/adapters/test_dashboard.py``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
OUT = HERE / "dashboards" / "balancer.json"

DS = {"type": "influxdb", "uid": "${datasource}"}
SITE = '"site" =~ /^$site$/'
PHASES = ("L1", "L2", "L3")

# Value mappings of the capacity-source code written as ``site.source_code`` (adapters/metrics.SOURCE_CODES).
SOURCE_MAPPINGS = [{"type": "value", "options": {
    "0": {"text": "forecast", "color": "green", "index": 0},
    "1": {"text": "fallback forecast", "color": "orange", "index": 1},
    "2": {"text": "fallback_kw", "color": "red", "index": 2},
}}]
ONLINE_MAPPINGS = [{"type": "value", "options": {
    "0": {"text": "silent", "color": "red", "index": 0},
    "1": {"text": "online", "color": "green", "index": 1},
}}]
OBEYS_MAPPINGS = [{"type": "value", "options": {
    "0": {"text": "does not obey", "color": "red", "index": 0},
    "1": {"text": "obeys", "color": "green", "index": 1},
}}]

# Annotations: one per family of ``event`` kinds (adapters/metrics.EVENT_KINDS).
ANNOTATIONS = [
    ("Fallback entered / left", "orange", "^fallback_(on|off)$"),
    ("Compliance errors", "red", "^compliance_error$"),
    ("Chargers disobeying / obeying", "purple", "^charger_(dis)?obeying$"),
    ("Config reloaded / rejected", "blue", "^config_(reloaded|rejected)$"),
]


def target(ref: str, query: str, alias: str) -> dict[str, Any]:
    return {"refId": ref, "datasource": DS, "rawQuery": True, "resultFormat": "time_series", "query": query,
            "alias": alias}


def timeseries(title: str, targets: list[dict[str, Any]], *, unit: str = "amp", description: str = "",
               overrides: list[dict[str, Any]] | None = None, step: bool = False, **extra: Any) -> dict[str, Any]:
    """A time series panel; ``step``: values hold until the next point (15-min plan slots)."""
    custom = {"lineWidth": 1, "fillOpacity": 0, "spanNulls": False,
              "lineInterpolation": "stepAfter" if step else "linear"}
    return {"type": "timeseries", "title": title, "description": description, "datasource": DS, "targets": targets,
            "fieldConfig": {"defaults": {"unit": unit, "custom": custom},
                            "overrides": overrides or []},
            "options": {"legend": {"displayMode": "table", "placement": "right", "showLegend": True},
                        "tooltip": {"mode": "multi", "sort": "desc"}},
            **extra}


def state_timeline(title: str, targets: list[dict[str, Any]], mappings: list[dict[str, Any]],
                   description: str) -> dict[str, Any]:
    return {"type": "state-timeline", "title": title, "description": description, "datasource": DS,
            "targets": targets,
            "fieldConfig": {"defaults": {"mappings": mappings, "color": {"mode": "thresholds"},
                                         "thresholds": {"mode": "absolute",
                                                        "steps": [{"color": "green", "value": None}]}},
                            "overrides": []},
            "options": {"showValue": "auto", "mergeValues": True, "rowHeight": 0.8,
                        "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True}}}


def dashed(regex: str) -> dict[str, Any]:
    return {"matcher": {"id": "byRegexp", "options": regex},
            "properties": [{"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}}]}


def site_phase_panel(k: int) -> dict[str, Any]:
    n = k + 1
    query = (f'SELECT mean("capacity_a_l{n}") AS "capacity", mean("allocated_a_l{n}") AS "allocated", '
             f'mean("measured_a_l{n}") AS "measured" FROM "site" WHERE {SITE} AND $timeFilter '
             f'GROUP BY time($__interval), "site" fill(null)')
    return timeseries(f"Site {PHASES[k]}: capacity vs allocated vs measured", [target("A", query, "$tag_site $col")],
                      description=f"Per site (one series each, never averaged), grid phase {PHASES[k]}: the capacity "
                                  "in force (dashed) is the ceiling; allocated (sum of the limits on this phase) "
                                  "stays under it; measured is what the cars draw.",
                      overrides=[dashed(".* capacity$")])


def charger_phase_panel(k: int) -> dict[str, Any]:
    n = k + 1
    query = (f'SELECT mean("limit_a_l{n}") AS "limit", mean("measured_a_l{n}") AS "measured" FROM "charger" '
             f'WHERE {SITE} AND $timeFilter GROUP BY time($__interval), "site", "charger" fill(null)')
    return timeseries(f"Chargers on {PHASES[k]}: limit and measured current", [target("A", query, "$tag_charger $col")],
                      description=f"Every charger wired to grid phase {PHASES[k]} (through its phase / phase_rotation; "
                                  "a single-phase charger shows on its own phase only): its limit (dashed) and "
                                  "what it draws on that phase.",
                      overrides=[dashed(".* limit$")])


def plan_phase_panel(k: int) -> dict[str, Any]:
    n = k + 1
    query = (f'SELECT last("capacity_a_l{n}") AS "capacity", last("planned_a_l{n}") AS "planned" FROM "plan" '
             f'WHERE {SITE} AND time >= now() - 15m AND time < now() + 24h GROUP BY time(15m), "site" fill(null)')
    return timeseries(f"Plan {PHASES[k]}: planned current vs capacity, next 24 h",
                      [target("A", query, "$tag_site $col")],
                      description=f"The latest 24 h plan per site on grid phase {PHASES[k]}: the capacity per 15-min "
                                  "slot (dashed) and the sum of the planned limits of the chargers on this phase.",
                      overrides=[dashed(".* capacity$")], timeFrom="+24h", interval="15m", step=True)


def meter_phase_panel(k: int) -> dict[str, Any]:
    n = k + 1
    query = (f'SELECT mean("net_import_a_l{n}") AS "net import", mean("non_ev_load_a_l{n}") AS "non-EV load", '
             f'mean("measured_a_l{n}") AS "chargers", mean("capacity_a_l{n}") AS "capacity" FROM "site" '
             f'WHERE {SITE} AND $timeFilter GROUP BY time($__interval), "site" fill(null)')
    return timeseries(f"Site meter {PHASES[k]}: net import, non-EV load, chargers",
                      [target("A", query, "$tag_site $col")],
                      description=f"Sites with a meter (DESIGN 3.8), grid phase {PHASES[k]}: the net current at the "
                                  "connection (import positive, export negative), the load that is not the "
                                  "chargers' (building, PV), what the chargers draw, and the capacity (dashed).",
                      overrides=[dashed(".* capacity$")])


def annotation(name: str, color: str, kinds: str) -> dict[str, Any]:
    query = (f'SELECT "result", "kind", "charger" FROM "event" WHERE "kind" =~ /{kinds}/ AND {SITE} '
             'AND $timeFilter')
    return {"name": name, "datasource": DS, "enable": True, "hide": False, "iconColor": color,
            "query": query, "textColumn": "result", "tagsColumn": "kind,charger", "titleColumn": "kind",
            "target": {"refId": "Anno", "query": query, "rawQuery": True, "resultFormat": "table",
                       "textColumn": "result", "tagsColumn": "kind,charger", "titleColumn": "kind"}}


def panels() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for k in range(3):
        out.append(site_phase_panel(k))
    for k in range(3):
        out.append(meter_phase_panel(k))
    out.append(state_timeline(
        "Capacity source", [target("A", f'SELECT max("source_code") AS "source" FROM "site" WHERE {SITE} '
                                        'AND $timeFilter GROUP BY time($__interval), "site" fill(previous)',
                                   "$tag_site")],
        SOURCE_MAPPINGS, "What the capacity in force comes from, per site: the grid operator's forecast, a "
                         "fallback forecast, or the configured fallback_kw."))
    out.append(state_timeline(
        "Grid operator online", [target("A", f'SELECT min("grid_online") AS "online" FROM "site" WHERE {SITE} '
                                             'AND $timeFilter GROUP BY time($__interval), "site" fill(previous)',
                                        "$tag_site")],
        ONLINE_MAPPINGS, "Whether the grid operator is heard from (heartbeats), per site."))
    for k in range(3):
        out.append(charger_phase_panel(k))
    out.append(state_timeline(
        "Chargers obeying their limit", [target("A", f'SELECT min("obeys") AS "obeys" FROM "charger" WHERE {SITE} '
                                                     'AND $timeFilter GROUP BY time($__interval), "site", '
                                                     '"charger" fill(previous)', "$tag_charger")],
        OBEYS_MAPPINGS, "A charger that draws more than its limit is 'does not obey': its real draw is reserved."))
    out.append(timeseries("Energy delivered vs requested", [target(
        "A", f'SELECT last("energy_requested_wh") AS "requested", last("energy_delivered_wh") AS "delivered" '
             f'FROM "site" WHERE {SITE} AND $timeFilter GROUP BY time($__interval), "site" fill(previous)',
        "$tag_site $col")], unit="watth", description="Per site: energy the running sessions asked for and got."))
    for k in range(3):
        out.append(plan_phase_panel(k))
    out.append(timeseries("Profile pushes failed / total", [
        target("A", f'SELECT sum("count") AS "failed" FROM "event" WHERE {SITE} AND "kind" = \'profile_push\' '
                    'AND "ok" = 0 AND $timeFilter GROUP BY time($__interval), "site" fill(0)', "$tag_site $col"),
        target("B", f'SELECT sum("count") AS "pushes" FROM "event" WHERE {SITE} AND "kind" = \'profile_push\' '
                    'AND $timeFilter GROUP BY time($__interval), "site" fill(0)', "$tag_site $col"),
    ], unit="short", description="Per site: a rising failed line means a charger refuses profiles."))
    out.append(timeseries("OSCP outbox (messages waiting)", [target(
        "A", 'SELECT last("outbox_messages") AS "outbox" FROM "service" WHERE $timeFilter '
             'GROUP BY time($__interval) fill(previous)', "$col")], unit="short",
        description="Messages for the grid operator not delivered yet (whole service): a backlog means it is "
                    "unreachable or refuses them."))
    # Layout: two panels per row of height 8, the per-phase triples as thirds.
    y = 0
    row: list[dict[str, Any]] = []
    for panel in out:
        row.append(panel)
        thirds = panel["title"].startswith(("Site L", "Site meter L", "Chargers on L", "Plan L"))
        width = 3 if thirds else 2
        if len(row) == width or panel is out[-1]:
            for i, p in enumerate(row):
                w = 24 // len(row)
                p["gridPos"] = {"x": i * w, "y": y, "w": w, "h": 8}
            y += 8
            row = []
    for i, panel in enumerate(out, start=1):
        panel["id"] = i
    return out


def dashboard() -> dict[str, Any]:
    return {
        "__inputs": [{"name": "DS_INFLUXDB", "label": "InfluxDB", "description": "the InfluxDB the balancer writes to "
                      "(InfluxQL: 1.x, 2.x with a DBRP mapping, 3.x)", "type": "datasource", "pluginId": "influxdb",
                      "pluginName": "InfluxDB"}],
        "__requires": [{"type": "grafana", "id": "grafana", "name": "Grafana", "version": "10.0.0"},
                       {"type": "datasource", "id": "influxdb", "name": "InfluxDB", "version": "1.0.0"},
                       {"type": "panel", "id": "timeseries", "name": "Time series", "version": ""},
                       {"type": "panel", "id": "state-timeline", "name": "State timeline", "version": ""}],
        "uid": "ev-balancer",
        "title": "EV balancer",
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 2,
        "refresh": "10s",
        "time": {"from": "now-24h", "to": "now"},
        "annotations": {"list": [
            {"builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True, "hide": True,
             "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts", "type": "dashboard"},
            *(annotation(name, color, kinds) for name, color, kinds in ANNOTATIONS)]},
        "templating": {"list": [
            {"name": "datasource", "label": "InfluxDB", "type": "datasource", "query": "influxdb", "regex": "",
             "current": {"text": "${DS_INFLUXDB}", "value": "${DS_INFLUXDB}"}, "hide": 0},
            {"name": "site", "label": "Site", "type": "query", "datasource": DS,
             "query": 'SHOW TAG VALUES FROM "site" WITH KEY = "site"', "definition":
             'SHOW TAG VALUES FROM "site" WITH KEY = "site"', "refresh": 2, "includeAll": True, "multi": True,
             "current": {"text": "All", "value": "$__all"}},
        ]},
        "panels": panels(),
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


if __name__ == "__main__":
    OUT.write_text(render())
