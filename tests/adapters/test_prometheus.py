"""``/metrics`` is valid Prometheus text for any id (issue 11 item 13): parsed back strictly."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters.app import Service
from adapters.prometheus import Family, render
from balancer.config import parse_config

ODD_IDS = ['dep"ot', "a,b", "back\\slash", "trailing\\", "new\nline", "with space", 'all "\\,\n= {}', "é✓"]

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL = r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"'
_SAMPLE = re.compile(rf"^({_NAME})(?:\{{((?:{_LABEL})(?:,{_LABEL})*)?\}})? (\S+)$")
_VALUE = re.compile(r"^(NaN|[+-]Inf|[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?)$")


def parse(text: str) -> list[tuple[str, dict[str, str], float]]:
    """A strict reader of the text format: every line a comment, a TYPE/HELP line or one sample."""
    assert text.endswith("\n")
    samples = []
    for line in text[:-1].split("\n"):
        if line.startswith("# TYPE "):
            assert re.match(rf"^# TYPE {_NAME} (counter|gauge|histogram|summary|untyped)$", line), line
            continue
        if line.startswith("# HELP "):
            assert re.match(rf"^# HELP {_NAME} ((?:[^\\\n]|\\[\\n])*)$", line), line
            continue
        match = _SAMPLE.match(line)
        assert match, f"invalid sample line: {line!r}"
        name, label_text, value = match.group(1), match.group(2) or "", match.group(7)
        assert _VALUE.match(value), line
        labels = {}
        for key, raw in re.findall(_LABEL, label_text):
            assert key not in labels
            labels[key] = re.sub(r"\\(.)", lambda m: {"n": "\n"}.get(m.group(1), m.group(1)), raw)
        samples.append((name, labels, float(value)))
    return samples


@pytest.mark.parametrize("odd", ODD_IDS)
def test_odd_label_values_round_trip(odd: str) -> None:
    text = render([Family("m", "gauge", "help with \\ and\nnewline", [({"site": odd, "charger": odd}, 1.5)])])
    assert parse(text) == [("m", {"site": odd, "charger": odd}, 1.5)]


@given(st.lists(st.text(max_size=12), min_size=1, max_size=5), st.floats())
def test_any_label_value_and_number_round_trips(values: list[str], number: float) -> None:
    text = render([Family("m", "gauge", samples=[({"id": v}, number) for v in values])])
    parsed = parse(text)
    assert [labels["id"] for _, labels, _ in parsed] == values
    assert all(v == number or (v != v and number != number) for _, _, v in parsed)


def test_service_metrics_with_odd_site_and_charger_ids(tmp_path: Path) -> None:
    site_id, charger_ids = 'dep"ot, o\\ne', ['CP "1"', "CP,2", "CP\\3", "CP 4"]
    config = parse_config({"sites": [{"id": site_id, "grid_limit_a": 100, "fallback_kw": 10,
                                      "chargers": [{"id": c, "max_current_a": 32} for c in charger_ids]}],
                           "state_dir": str(tmp_path)})
    service = Service(config)
    service.counters["odd-name.total"] = 3
    try:
        samples = parse(service.metrics_text())
    finally:
        service.store.close()
        service._executor.shutdown()
    limits = {labels["charger"]: labels["site"] for name, labels, _ in samples
              if name == "balancer_charger_limit_amperes"}
    assert limits == dict.fromkeys(charger_ids, site_id)
    assert {labels["site"] for name, labels, _ in samples if name == "balancer_capacity_amperes"} == {site_id}
    assert ("balancer_odd_name_total_total", {}, 3.0) in samples


async def test_adapter_counters_are_exported_with_help(tmp_path: Path) -> None:
    """OCPP bad frames / refused / connections, OSCP rejected, outbox and InfluxDB writer on /metrics."""
    import aiohttp

    from tests.servers import free_port

    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens: deliveries and writes fail
    config = parse_config({
        "sites": [{"id": "s1", "grid_limit_a": 100, "fallback_kw": 10, "chargers": [{"id": "CP1", "max_current_a": 32}]}],
        "ocpp": {"host": "127.0.0.1", "port": 0}, "http": {"host": "127.0.0.1", "port": 0},
        "oscp": {"token": "oscp-token", "capacity_provider": {"base_url": dead, "token": "cp-token"}},
        "influxdb": {"url": dead, "token": "t", "org": "o", "flush_interval_s": 0.05},
        "state_dir": str(tmp_path)})
    service = Service(config, control_interval_s=0.1)
    await service.start()
    try:
        async with aiohttp.ClientSession() as http:
            ws_url = f"ws://127.0.0.1:{service.ocpp.port}/ocpp"
            async with http.get(f"{ws_url}/nobody", headers={"Upgrade": "websocket"}) as response:
                assert response.status == 404
            async with http.ws_connect(f"{ws_url}/CP1", protocols=("ocpp1.6",)) as ws:
                await ws.send_str("not json")
                await ws.receive(timeout=5)
            base = f"http://127.0.0.1:{service.http_port}/oscp/fp/2.0"
            async with http.post(f"{base}/heartbeat", data=b"{", headers={"Authorization": "Token oscp-token"}) as r:
                assert r.status == 400

        def value(name: str) -> float:
            return next(v for n, labels, v in parse(service.metrics_text()) if n == name)

        async def until(predicate) -> None:  # type: ignore[no-untyped-def]
            for _ in range(200):
                if predicate():
                    return
                await asyncio.sleep(0.05)
            raise AssertionError(service.metrics_text())

        await until(lambda: value("balancer_oscp_delivery_failures_total") >= 1
                    and value("balancer_influx_failed_writes") >= 1)
        assert value("balancer_ocpp_bad_frames_total") == 1
        assert value("balancer_ocpp_refused_total") == 1
        assert value("balancer_ocpp_connections_total") == 1
        assert value("balancer_oscp_rejected_total") == 1
        assert value("balancer_oscp_outbox_messages") >= 1  # the heartbeat that could not be delivered
        text = service.metrics_text()
        typed = re.findall(r"^# TYPE (\S+) ", text, re.M)
        helped = set(re.findall(r"^# HELP (\S+) ", text, re.M))
        assert typed and set(typed) <= helped, set(typed) - helped
        assert "# TYPE balancer_influx_failed_writes counter" in text
    finally:
        await service.stop()
