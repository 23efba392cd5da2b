"""Run every query of the Grafana dashboard (panels and annotations) against a real InfluxDB.

Grafana itself is not installable here: the queries are expanded as Grafana expands them and sent
to ``influxd``; a query InfluxDB refuses fails the test.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.servers import InfluxServer

DASHBOARD = Path(__file__).resolve().parent.parent / "configs" / "grafana" / "dashboards" / "balancer.json"


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())  # type: ignore[no-any-return]


def panel_queries() -> list[tuple[str, str]]:
    return [(p["title"], t["query"]) for p in dashboard()["panels"] for t in p["targets"]]


def annotation_queries() -> dict[str, str]:
    return {a["name"]: a["query"] for a in dashboard()["annotations"]["list"] if "query" in a}


def expand(query: str, *sites: str) -> str:
    """Grafana's macros as Grafana expands them: the last two days (and the plan's next day); ``$site``
    as the regex of the selected sites (several for "All", which Grafana writes ``(a|b)``)."""
    chosen = sites[0] if len(sites) == 1 else "(" + "|".join(sites) + ")"
    return (query.replace("$timeFilter", "time > now() - 2d AND time < now() + 2d")
            .replace("$__interval", "1m").replace("/^$site$/", f"/^{chosen}$/"))


def run(server: InfluxServer, database: str, query: str) -> list[dict[str, Any]]:
    """The series of one query: ``{"tags", "columns", "values"}``, values without all-null rows."""
    result = server.query(query, database)["results"][0]
    assert "error" not in result, (query, result)
    out = []
    for s in result.get("series", []):
        values = [v for v in s["values"] if any(x is not None for x in v[1:])]
        out.append({"tags": s.get("tags", {}), "columns": s["columns"], "values": values})
    return out


def run_dashboard_queries(server: InfluxServer, database: str, site: str) -> dict[str, list[Any]]:
    """Rows returned per panel query (title + query index)."""
    out: dict[str, list[Any]] = {}
    for i, (title, query) in enumerate(panel_queries()):
        out[f"{title} #{i}"] = [v for s in run(server, database, expand(query, site)) for v in s["values"]]
    return out


def series_by_panel(server: InfluxServer, database: str, *sites: str) -> dict[str, list[dict[str, Any]]]:
    """Every series per panel title (all its queries together)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for title, query in panel_queries():
        out.setdefault(title, []).extend(run(server, database, expand(query, *sites)))
    return out
