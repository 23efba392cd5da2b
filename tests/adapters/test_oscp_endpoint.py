"""The OSCP endpoint over real HTTP: auth, every message, every bad-input class, persistence."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import numpy as np
import pytest

from adapters.oscp.simulator import GridOperatorSimulator, day_profile_blocks
from tests.adapters.oscp_fixtures import Endpoint, config_for

T0 = datetime(2026, 3, 1, 0, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> datetime:
        return self.t


@pytest.fixture
async def endpoint(tmp_path: Path):  # type: ignore[no-untyped-def]
    clock = Clock()
    ep = Endpoint(config_for(tmp_path), clock)
    ep.clock = clock  # type: ignore[attr-defined]
    await ep.start()
    yield ep
    await ep.stop()


GOOD = {"group_id": "grp-1", "type": "CONSUMPTION", "forecasted_blocks": [
    {"capacity": 23, "phase": "ALL", "unit": "KW", "start_time": "2026-03-01T00:00:00Z",
     "end_time": "2026-03-01T02:00:00Z"}]}


async def post(url: str, body: object, token: str | None = "fp-token", raw: bytes | None = None) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Token {token}"
    async with aiohttp.ClientSession() as s, s.post(url, data=raw if raw is not None else json.dumps(body),
                                                     headers=headers) as r:
        text = await r.text()
        return r.status, (json.loads(text) if text else {})


async def test_forecast_accepted_changes_capacity(endpoint: Endpoint) -> None:
    status, _ = await post(f"{endpoint.url}/update_group_capacity_forecast", GOOD)
    assert status == 204
    cap, src = endpoint.fp.capacity_slots("depot-1", T0, 12)
    assert src[:8] == ["forecast"] * 8 and src[8] == "fallback_config"
    np.testing.assert_allclose(cap[0], [23000 / 690] * 3)
    assert endpoint.changes == ["depot-1"]


@pytest.mark.parametrize("path", ["register", "handshake", "handshake_acknowledge", "handshake_acknowledgement",
                                  "handshake_acknowledgment", "heartbeat"])
async def test_every_message_accepted(endpoint: Endpoint, path: str) -> None:
    bodies = {"register": {"token": "t", "version_url": [{"version": "2.0", "base_url": "http://x/oscp/cp/2.0"}]},
              "handshake": {"required_behaviour": {"heartbeat_interval": 30,
                                                   "measurement_configuration": ["CONTINUOUS"]}},
              "heartbeat": {"offline_mode_at": "2026-03-01T00:05:00Z"}}
    status, _ = await post(f"{endpoint.url}/{path}", bodies.get(path, {}))
    assert status == 204


async def test_auth(endpoint: Endpoint) -> None:
    assert (await post(f"{endpoint.url}/update_group_capacity_forecast", GOOD, token=None))[0] == 401
    assert (await post(f"{endpoint.url}/update_group_capacity_forecast", GOOD, token="nope"))[0] == 403
    assert endpoint.changes == []


def mutated(fn) -> dict:  # type: ignore[no-untyped-def]
    body = copy.deepcopy(GOOD)
    fn(body)
    return body


BAD = [
    ("invalid JSON", None, b"{not json", 400, None),
    ("missing field", mutated(lambda b: b.pop("type")), None, 400, "type"),
    ("extra field", mutated(lambda b: b.update(foo=1)), None, 400, "foo"),
    ("wrong type", mutated(lambda b: b["forecasted_blocks"][0].update(capacity="x")), None, 400,
     "forecasted_blocks[0].capacity"),
    ("end <= start", mutated(lambda b: b["forecasted_blocks"][0].update(end_time="2026-03-01T00:00:00Z")), None, 400,
     "forecasted_blocks[0].end_time"),
    ("negative", mutated(lambda b: b["forecasted_blocks"][0].update(capacity=-5)), None, 400,
     "forecasted_blocks[0].capacity"),
    ("bad enum", mutated(lambda b: b["forecasted_blocks"][0].update(unit="MW")), None, 400,
     "forecasted_blocks[0].unit"),
    ("unknown group", mutated(lambda b: b.update(group_id="nope")), None, 404, "group_id"),
    ("oversize", None, b"[" + b"1," * 600_000 + b"1]", 413, None),
    ("not an object", [1, 2], None, 400, None),
]


@pytest.mark.parametrize(("name", "body", "raw", "status", "field"), BAD, ids=[b[0] for b in BAD])
async def test_bad_input_answers_4xx_and_changes_nothing(endpoint: Endpoint, name: str, body: object,
                                                         raw: bytes | None, status: int, field: str | None) -> None:
    before = endpoint.fp.books["depot-1"].to_json()
    got, answer = await post(f"{endpoint.url}/update_group_capacity_forecast", body, raw=raw)
    assert got == status, answer
    if field is not None:
        assert answer["field"] == field
    assert "message" in answer
    assert answer["code"] == {400: "bad_request", 404: "not_found", 413: "payload_too_large"}[status]
    assert endpoint.fp.books["depot-1"].to_json() == before
    assert endpoint.changes == []


async def test_bad_heartbeat_and_handshake(endpoint: Endpoint) -> None:
    status, answer = await post(f"{endpoint.url}/heartbeat", {"offline_mode_at": "soon"})
    assert status == 400 and answer["field"] == "offline_mode_at"
    status, answer = await post(f"{endpoint.url}/handshake", {"required_behaviour": {"heartbeat_interval": 0}})
    assert status == 400 and "heartbeat_interval" in answer["field"]


async def test_simulated_grid_operator_drives_fallback_and_state_survives_restart(tmp_path: Path) -> None:
    clock = Clock()
    config = config_for(tmp_path)
    ep = Endpoint(config, clock)
    await ep.start()
    cp = GridOperatorSimulator(fp_url=ep.url, fp_token="fp-token")
    await cp.start()
    try:
        assert await cp.register() == 204
        assert await cp.handshake(60) == 204
        assert await cp.send_forecast("grp-1", day_profile_blocks(T0, base_kw=60, dip_kw=20)) == 204
        assert await cp.heartbeat(T0 + timedelta(minutes=2)) == 204
        cap, src = ep.fp.capacity_slots("depot-1", T0, 96)
        assert src[0] == "forecast" and cap[17 * 4, 0] == pytest.approx(20000 / 690)
        clock.t = T0 + timedelta(minutes=2)  # heartbeat's offline_mode_at passes
        assert not ep.fp.is_online("depot-1")
        cap, src = ep.fp.capacity_slots("depot-1", clock.t, 4)
        assert src[0] == "fallback_config"
        assert await cp.heartbeat(clock.t + timedelta(minutes=2)) == 204
        assert ep.fp.is_online("depot-1")
    finally:
        await cp.stop()
        await ep.stop()
    again = Endpoint(config, clock)  # a restart on the same state dir
    cap2, src2 = again.fp.capacity_slots("depot-1", clock.t, 96)
    assert again.fp.is_online("depot-1") and src2[0] == "forecast"
    assert cap2[0, 0] == pytest.approx(60000 / 690)
    again.store.close()


async def test_a_repeated_request_id_is_answered_but_not_applied_again_even_after_a_restart(tmp_path: Path) -> None:
    """A sender repeats a message whose answer it lost with the same X-Request-ID (OSCP's key for
    that): the repeat of an old forecast must not overwrite the newer one that came in between."""
    clock = Clock()
    config = config_for(tmp_path)

    async def send(ep: Endpoint, body: object, request_id: str) -> int:
        async with aiohttp.ClientSession() as s, s.post(f"{ep.url}/update_group_capacity_forecast", json=body, headers={
                "Authorization": "Token fp-token", "X-Request-ID": request_id}) as r:
            return r.status

    def capacity(ep: Endpoint) -> float:
        return float(ep.fp.capacity_slots("depot-1", T0, 1)[0][0, 0])

    newer = copy.deepcopy(GOOD)
    newer["forecasted_blocks"][0]["capacity"] = 30
    bad = copy.deepcopy(GOOD)
    bad["forecasted_blocks"][0]["unit"] = "PARSEC"
    ep = Endpoint(config, clock)
    await ep.start()
    try:
        assert [await send(ep, GOOD, "r1"), await send(ep, newer, "r2"), await send(ep, GOOD, "r1")] == [204] * 3
        assert capacity(ep) == pytest.approx(30000 / 690)
        assert await send(ep, bad, "r3") == 400 and await send(ep, newer, "r3") == 204  # a refusal is not remembered
        assert ep.fp.counters["forecasts"] == 3 and ep.fp.counters["repeats"] == 1
    finally:
        await ep.stop()
    again = Endpoint(config, clock)  # a restart on the same state dir still knows r1
    await again.start()
    try:
        assert await send(again, GOOD, "r1") == 204 and again.fp.counters["repeats"] == 1
        assert capacity(again) == pytest.approx(30000 / 690)
    finally:
        await again.stop()
