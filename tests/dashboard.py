"""Run every panel query of the Grafana dashboard against a real InfluxDB (Grafana is not installable here)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.servers import InfluxServer

DASHBOARD = Path(__file__).resolve().parent.parent / "configs" / "grafana" / "dashboards" / "balancer.json"


def panel_queries() -> list[tuple[str, str]]:
    dash = json.loads(DASHBOARD.read_text())
    return [(p["title"], t["query"]) for p in dash["panels"] for t in p["targets"]]


def expand(query: str, site: str) -> str:
    """Grafana's macros as Grafana would expand them for the last 24 h (and the plan's next day)."""
    return (query.replace("$timeFilter", "time > now() - 2d AND time < now() + 2d")
            .replace("$__interval", "1m").replace("/^$site$/", f"/^{site}$/"))


def run_dashboard_queries(server: InfluxServer, database: str, site: str) -> dict[str, list[Any]]:
    """Rows returned per panel query (title + query index)."""
    out: dict[str, list[Any]] = {}
    for i, (title, query) in enumerate(panel_queries()):
        result = server.query(expand(query, site), database)["results"][0]
        assert "error" not in result, (title, result)
        rows = [v for s in result.get("series", []) for v in s["values"] if any(x is not None for x in v[1:])]
        out[f"{title} #{i}"] = rows
    return out
