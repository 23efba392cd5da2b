"""Alert rules: Prometheus rules checked and unit-tested by promtool, Grafana rules run on a real InfluxDB.

Both files hold the same conditions under the same names. The Prometheus rules use metrics that
a real service's ``/metrics`` page has; the Grafana rules' InfluxQL queries run against a real
InfluxDB filled by the sink, once with a healthy site (nothing fires) and once with a site in
every kind of trouble (every rule fires, for the right site or charger).
"""

from __future__ import annotations

import asyncio
import re
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from adapters.app import Service
from adapters.influx import InfluxSink
from adapters.metrics import charger_point, event_point, service_point, site_point
from balancer.config import parse_config
from balancer.model import InfluxSettings
from tests.servers import InfluxServer, require_binary

ROOT = Path(__file__).resolve().parents[2]
PROM_RULES = ROOT / "configs" / "prometheus" / "rules.yaml"
PROM_TESTS = ROOT / "configs" / "prometheus" / "rules.test.yaml"
GRAFANA_RULES = ROOT / "configs" / "grafana" / "alerting" / "rules.yaml"


def grafana_interpolate(text: str) -> str:
    """What Grafana's provisioning makes of a string: ``$VAR``/``${VAR}`` from the environment
    (none set here: empty), ``$$`` a literal ``$``."""
    return "$".join(re.sub(r"\$(\{[A-Za-z_][A-Za-z0-9_]*\}|[A-Za-z_][A-Za-z0-9_]*)", "", part)
                    for part in text.split("$$"))


def prometheus_alerts() -> dict[str, dict[str, Any]]:
    rules = yaml.safe_load(PROM_RULES.read_text())["groups"][0]["rules"]
    return {r["alert"]: r for r in rules}


def grafana_rules() -> dict[str, dict[str, Any]]:
    doc = yaml.safe_load(GRAFANA_RULES.read_text())
    assert doc["apiVersion"] == 1
    return {r["title"]: r for group in doc["groups"] for r in group["rules"]}


def test_promtool_checks_the_rules() -> None:
    promtool = require_binary("promtool")
    done = subprocess.run([promtool, "check", "rules", str(PROM_RULES)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(prometheus_alerts())} rules found" in done.stdout


def test_promtool_unit_tests_fire_each_alert_when_it_should() -> None:
    promtool = require_binary("promtool")
    done = subprocess.run([promtool, "test", "rules", str(PROM_TESTS)], capture_output=True, text=True,
                          timeout=60, cwd=PROM_TESTS.parent)
    assert done.returncode == 0, done.stdout + done.stderr
    tested = {t["alertname"] for case in yaml.safe_load(PROM_TESTS.read_text())["tests"]
              for t in case["alert_rule_test"] if t["exp_alerts"]}
    assert tested == set(prometheus_alerts())


def test_prometheus_rules_use_metrics_the_service_exports(tmp_path: Path) -> None:
    config = parse_config({
        "sites": [{"id": "s1", "grid_limit_a": 100, "fallback_kw": 10, "chargers": [{"id": "CP1", "max_current_a": 32}]}],
        "oscp": {"token": "oscp-token", "capacity_provider": {"base_url": "http://127.0.0.1:9", "token": "cp"}},
        "state_dir": str(tmp_path)})
    service = Service(config)
    try:
        text = service.metrics_text()
    finally:
        service.store.close()
        service._executor.shutdown()
    exported = set(re.findall(r"^# TYPE (\S+) ", text, re.M))
    used = {name for rule in prometheus_alerts().values()
            for name in re.findall(r"\b(balancer_[a-z_]+)\b", rule["expr"])}
    assert used and used <= exported, used - exported


def test_grafana_and_prometheus_hold_the_same_alerts() -> None:
    assert set(grafana_rules()) == set(prometheus_alerts()) == {
        "BalancerGridOperatorSilent", "BalancerFallbackInForce", "BalancerChargerNotObeying",
        "BalancerComplianceErrors", "BalancerProfilePushesFailing", "BalancerOscpOutboxBacklog"}
    for title, rule in grafana_rules().items():
        assert rule["labels"]["severity"] == prometheus_alerts()[title]["labels"]["severity"], title
        # Provisioning leaves templates intact: {{ $labels.x }} survives env var expansion.
        for text in rule["annotations"].values():
            assert grafana_interpolate(text).count("$labels.") == text.count("$$labels."), title


# ----------------------------------------------------------------- Grafana rules on a real InfluxDB
def evaluate(server: InfluxServer, rule: dict[str, Any]) -> dict[tuple[tuple[str, str], ...], bool]:
    """The rule as Grafana evaluates it: query A over its window, B = last value, C = threshold."""
    data = {d["refId"]: d for d in rule["data"]}
    assert rule["condition"] == "C"
    query_a, reduce_b, threshold_c = data["A"], data["B"]["model"], data["C"]["model"]
    assert query_a["datasourceUid"] == "balancer-influxdb"  # the provisioned datasource
    assert reduce_b == {"refId": "B", "type": "reduce", "expression": "A", "reducer": "last",
                        "settings": {"mode": "dropNN"}}
    assert threshold_c["type"] == "threshold" and threshold_c["expression"] == "B"
    (condition,) = threshold_c["conditions"]
    op, (limit,) = condition["evaluator"]["type"], condition["evaluator"]["params"]
    query = grafana_interpolate(query_a["model"]["query"])
    assert "$timeFilter" in query
    window = query_a["relativeTimeRange"]["from"]
    query = query.replace("$timeFilter", f"time > now() - {window}s")
    result = server.query(query, "balancer")["results"][0]
    assert "error" not in result, (rule["title"], result)
    out = {}
    for series in result.get("series", []):
        values = [v[1] for v in series["values"] if v[1] is not None]
        if not values:
            continue
        last = values[-1]
        firing = last > limit if op == "gt" else last < limit
        out[tuple(sorted(series.get("tags", {}).items()))] = firing
    return out


async def _fill(server: InfluxServer, tmp: Path, *, trouble: bool) -> None:
    sink = InfluxSink(InfluxSettings(url=server.url, api="v1", database="balancer", flush_interval_s=0.1),
                      tmp / "spill")
    await sink.start()
    now = datetime.now(UTC)
    for k in range(20):  # the last 20 minutes
        t = now - timedelta(minutes=20 - k) + timedelta(seconds=30)
        bad = trouble and k >= 8  # trouble for the last 12 minutes on the depot; the office stays fine
        for site, troubled in (("depot", bad), ("office", False)):
            sink.write([site_point(site, t, capacity_a=[60] * 3,
                                   capacity_source="fallback_config" if troubled else "forecast",
                                   allocated_a=[50] * 3, measured_a=[45] * 3, grid_online=not troubled,
                                   energy_requested_wh=1000, energy_delivered_wh=500, chargers_connected=2)])
        sink.write([charger_point("depot", cid, t, protocol="ocpp1.6", limit_a=16, measured_a=[16.0] * 3,
                                  power_w=None, energy_wh=None, soc_pct=None, state="charging",
                                  connected=cid != "CP3", obeys=not (trouble and k >= 8 and cid != "CP2"))
                    for cid in ("CP1", "CP2", "CP3")])
        sink.write([service_point(t, outbox_messages=3 if trouble else (1 if k == 10 else 0))])
    if trouble:
        sink.write([event_point("depot", now - timedelta(minutes=4), kind="compliance_error", ok=False,
                                result="measured draw exceeds capacity by 3.0 A")])
        sink.write([event_point("depot", now - timedelta(minutes=m), kind="profile_push", ok=False,
                                result="Rejected", charger="CP1") for m in (2, 5, 9)])
    else:
        sink.write([event_point("depot", now - timedelta(minutes=m), kind="profile_push", ok=m != 5,
                                result="Rejected" if m == 5 else "Accepted", charger="CP1") for m in (2, 5, 9)])
    await asyncio.sleep(0.4)
    await sink.stop()


@pytest.fixture(params=[False, True], ids=["healthy", "trouble"])
def influx(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    server = InfluxServer(tmp_path / "influx").start()
    try:
        server.create_db("balancer")
        asyncio.run(_fill(server, tmp_path, trouble=request.param))
        yield server, request.param
    finally:
        server.stop()


def test_grafana_rules_fire_exactly_on_trouble(influx: tuple[InfluxServer, bool]) -> None:
    server, trouble = influx
    rules = grafana_rules()
    got = {title: evaluate(server, rule) for title, rule in rules.items()}
    firing = {title: {key for key, fire in series.items() if fire} for title, series in got.items()}
    if not trouble:
        assert all(not keys for keys in firing.values()), firing
        # The healthy site still returns data, so these rules are OK rather than "no data".
        for title in ("BalancerGridOperatorSilent", "BalancerFallbackInForce", "BalancerChargerNotObeying",
                      "BalancerOscpOutboxBacklog"):
            assert got[title], title
        return
    depot = (("site", "depot"),)
    assert firing == {
        "BalancerGridOperatorSilent": {depot},
        "BalancerFallbackInForce": {depot},
        # CP3 is disconnected and CP2 obeys: only CP1.
        "BalancerChargerNotObeying": {(("charger", "CP1"), ("site", "depot"))},
        "BalancerComplianceErrors": {depot},
        "BalancerProfilePushesFailing": {depot},
        "BalancerOscpOutboxBacklog": {()},
    }
