"""The OSCP endpoint at its edges: no body a peer can send gets a 5xx (issue 11 item 12, issue 19
items 3, 4, 5 and 9), over a real aiohttp server on loopback."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.oscp.client import OscpClient
from adapters.store import StateStore
from tests.adapters.oscp_fixtures import Endpoint, config_for

T0 = datetime(2026, 3, 1, tzinfo=UTC)
PATHS = ["register", "handshake", "handshake_acknowledge", "handshake_acknowledgement", "handshake_acknowledgment",
         "heartbeat", "update_group_capacity_forecast"]


@pytest.fixture
async def endpoint(tmp_path: Path) -> AsyncIterator[Endpoint]:
    ep = Endpoint(config_for(tmp_path), lambda: T0)
    await ep.start()
    yield ep
    await ep.stop()


async def post(url: str, raw: Any, token: str | None = "fp-token", headers: dict[str, str] | None = None
               ) -> tuple[int, dict[str, Any]]:
    sent = {"Content-Type": "application/json", **(headers or {})}
    if token is not None:
        sent["Authorization"] = f"Token {token}"
    async with aiohttp.ClientSession() as s, s.post(url, data=raw, headers=sent) as r:
        text = await r.text()
        return r.status, (json.loads(text) if text.startswith("{") else {"text": text})


def blocks(n: int, step_s: int = 60) -> list[dict[str, Any]]:
    return [{"capacity": 40 + i % 7, "phase": "ALL", "unit": "A",
             "start_time": (T0 + timedelta(seconds=i * step_s)).isoformat().replace("+00:00", "Z"),
             "end_time": (T0 + timedelta(seconds=(i + 1) * step_s)).isoformat().replace("+00:00", "Z")}
            for i in range(n)]


def forecast(n: int = 1, **changes: Any) -> dict[str, Any]:
    return {"group_id": "grp-1", "type": "CONSUMPTION", "forecasted_blocks": blocks(n), **changes}


@pytest.mark.parametrize("path", PATHS)
async def test_json_nested_1000_deep_is_400_on_every_path(endpoint: Endpoint, path: str) -> None:
    for depth in (40, 990, 5000):
        raw = b'{"group_id":' + b"[" * depth + b"]" * depth + b"}"
        status, answer = await post(f"{endpoint.url}/{path}", raw)
        assert status == 400, (depth, answer)
        assert "nested deeper than" in answer["message"]
    assert endpoint.changes == []


@pytest.mark.parametrize(("name", "literal", "field"), [
    ("4301+ digits", "9" * 5000, "forecasted_blocks[0].capacity"),
    ("integer of 10^309", "1" + "0" * 309, "forecasted_blocks[0].capacity"),
    ("float overflow", "1e400", "forecasted_blocks[0].capacity"),
    ("beyond the bound", "1e13", "forecasted_blocks[0].capacity"),
    ("Infinity", "Infinity", None),
    ("NaN", "NaN", None),
])
async def test_huge_and_non_finite_capacities_are_400(endpoint: Endpoint, name: str, literal: str,
                                                      field: str | None) -> None:
    raw = json.dumps(forecast()).replace('"capacity": 40', f'"capacity": {literal}').encode()
    status, answer = await post(f"{endpoint.url}/update_group_capacity_forecast", raw)
    assert status == 400, answer
    assert answer.get("field") == field
    assert endpoint.changes == []


@pytest.mark.parametrize("literal", ["Infinity", "-Infinity", "NaN", "1e308", "86401", "1" + "0" * 5000])
async def test_endless_heartbeat_interval_is_refused(endpoint: Endpoint, literal: str) -> None:
    raw = f'{{"required_behaviour": {{"heartbeat_interval": {literal}}}}}'.encode()
    for path in ("handshake", "handshake_acknowledge"):
        status, answer = await post(f"{endpoint.url}/{path}", raw)
        assert status == 400, answer
    assert endpoint.fp.required_behaviour == {}
    assert endpoint.store.get_json("oscp:required_behaviour") is None


@pytest.mark.parametrize("when", ["9999-12-31T23:59:59-12:00", "0001-01-01T00:00:00+14:00", "2300-01-01T00:00:00Z"])
async def test_times_out_of_range_are_400(endpoint: Endpoint, when: str) -> None:
    status, answer = await post(f"{endpoint.url}/heartbeat", json.dumps({"offline_mode_at": when}))
    assert (status, answer["field"]) == (400, "offline_mode_at")
    body = forecast()
    body["forecasted_blocks"][0]["end_time"] = when
    status, answer = await post(f"{endpoint.url}/update_group_capacity_forecast", json.dumps(body))
    assert (status, answer["field"]) == (400, "forecasted_blocks[0].end_time")


async def test_persisted_endless_heartbeat_interval_reads_as_the_default(tmp_path: Path) -> None:
    """A value saved before the bound (Infinity, 1e308) must neither stop heartbeats nor overflow."""
    config = config_for(tmp_path, capacity_provider={"base_url": "http://127.0.0.1:9/cp", "token": "cp"},
                        heartbeat_interval_s=60)
    store = StateStore(tmp_path / "state.sqlite")
    client = OscpClient(config, store, now=lambda: T0)
    try:
        for bad in (float("inf"), 1e308, float("nan"), -5, "60", True):
            store.put_json("oscp:required_behaviour", {"heartbeat_interval": bad})
            assert client._heartbeat_interval() == 60.0
            client.heartbeat()  # OverflowError before
        store.put_json("oscp:required_behaviour", {"heartbeat_interval": 30})
        assert client._heartbeat_interval() == 30.0
    finally:
        store.close()


@pytest.mark.parametrize("token", ["tök", "トークン", "fp-token\u00e9", "\u00e9"])
async def test_non_ascii_token_is_403(endpoint: Endpoint, token: str) -> None:
    headers = {"Authorization": f"Token {token}".encode().decode("latin-1")}
    for path in ("heartbeat", "update_group_capacity_forecast"):
        status, answer = await post(f"{endpoint.url}/{path}", b"{}", token=None, headers=headers)
        assert (status, answer["field"]) == (403, "Authorization")


@pytest.mark.parametrize("header", ["Token", "Token ", "token fp-token-extra", "Bearer fp-token", "Tokenfp-token",
                                    "Token  fp-token  x"])
async def test_token_cases(endpoint: Endpoint, header: str) -> None:
    status, _ = await post(f"{endpoint.url}/heartbeat", b"{}", token=None, headers={"Authorization": header})
    assert status == 403


async def test_register_without_version_2_is_501_naming_the_field(endpoint: Endpoint) -> None:
    """PROTOCOLS.md A.4: Register answers 501 when the peer offers no common version."""
    body = {"token": "t", "version_url": [{"version": "2.1", "base_url": "http://x"}]}
    status, answer = await post(f"{endpoint.url}/register", json.dumps(body))
    assert (status, answer["field"]) == (501, "version_url")
    assert endpoint.fp.registration == {}


async def test_a_900_kb_forecast_is_read_whole(endpoint: Endpoint) -> None:
    """Bodies were cut at what the first read returned (about 128 kB)."""
    body = forecast(7800)
    raw = json.dumps(body).encode()
    assert 900_000 < len(raw) < endpoint.fp.config.http.max_body_bytes
    status, answer = await post(f"{endpoint.url}/update_group_capacity_forecast", raw)
    assert status == 204, answer
    assert len(endpoint.fp.books["depot-1"].blocks["CONSUMPTION"]) == 7800

    async def chunks() -> AsyncIterator[bytes]:  # the same body, chunked
        for i in range(0, len(raw), 65536):
            yield raw[i:i + 65536]

    status, answer = await post(f"{endpoint.url}/update_group_capacity_forecast", chunks())
    assert status == 204, answer


async def test_oversize_body_is_413_also_chunked(endpoint: Endpoint) -> None:
    limit = endpoint.fp.config.http.max_body_bytes

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(limit // 65536 + 2):
            yield b" " * 65536

    status, _ = await post(f"{endpoint.url}/update_group_capacity_forecast", chunks())
    assert status == 413
    status, _ = await post(f"{endpoint.url}/update_group_capacity_forecast", b" " * (limit + 1))
    assert status == 413
    assert endpoint.changes == []


async def test_the_token_of_a_rejected_register_is_not_logged(endpoint: Endpoint,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    secret = "S3cr3t-register-token-value"
    bad_bodies = [
        {"token": secret, "version_url": [{"version": "2.0", "base_url": "http://x", "extra": 1}]},
        {"token": secret, "version_url": []},
        {"token": secret * 30, "version_url": [{"version": "2.0", "base_url": "http://x"}]},  # too long
    ]
    with caplog.at_level(logging.DEBUG):
        for body in bad_bodies:
            status, answer = await post(f"{endpoint.url}/register", json.dumps(body))
            assert status == 400
            assert secret not in json.dumps(answer)
        status, _ = await post(f"{endpoint.url}/register", b'{"token": "' + secret.encode() + b'", "version_url": [')
        assert status == 400
    assert caplog.records, "rejections are logged"
    assert all(secret not in record.getMessage() for record in caplog.records)


# -------------------------------------------------------------------- fuzz
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20)
field_values = (json_values | st.sampled_from(["2026-03-01T00:00:00Z", "2026-03-01T01:00:00+02:00", "ALL", "A", "KW",
                                                "CONSUMPTION", "grp-1", "2.0", "CONTINUOUS"])
                | st.integers(min_value=-(10 ** 400), max_value=10 ** 400))
keys = st.sampled_from(["group_id", "type", "forecasted_blocks", "capacity", "phase", "unit", "start_time",
                        "end_time", "token", "version_url", "version", "base_url", "required_behaviour",
                        "heartbeat_interval", "measurement_configuration", "offline_mode_at"])
bodies = st.recursive(field_values, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=5),
                      max_leaves=25)
raw_bodies = (bodies.map(lambda b: json.dumps(b).encode())
              | st.tuples(bodies, st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "9" * 4400]))
              .map(lambda t: json.dumps(t[0]).replace("null", t[1], 1).encode())
              | st.integers(1, 3000).map(lambda d: b"[" * d + b"]" * d)
              | st.binary(max_size=60))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(PATHS), raw=raw_bodies)
async def test_fuzzed_bodies_get_only_documented_answers(endpoint: Endpoint, path: str, raw: bytes) -> None:
    status, answer = await post(f"{endpoint.url}/{path}", raw)
    assert status in (204, 400, 404, 501), (status, answer)
    if status == 501:
        assert path == "register" and answer["field"] == "version_url"
    if status in (400, 404):
        assert isinstance(answer["message"], str) and len(answer["message"]) <= 1000
