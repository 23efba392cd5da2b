"""Implausible meter readings over a real websocket: answered, counted, logged sparingly, not believed."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest

from balancer.events import MeterSample
from tests.adapters.ocpp_env import Env, ocpp_config, running_env

CHARGERS = [{"id": "CP1", "max_current_a": 32}, {"id": "CP2", "max_current_a": 32}]


@pytest.fixture
async def env():  # type: ignore[no-untyped-def]
    async with running_env(ocpp_config(CHARGERS, rate_limit_per_s=1000)) as e:
        yield e


def stamp(seconds: float) -> str:
    return (datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


def meter16(k: int, seconds: float, **values: Any) -> str:
    names = {"l1": ("Current.Import", "L1", "A"), "l2": ("Current.Import", "L2", "A"),
             "w": ("Power.Active.Import", None, "W"),
             "wh": ("Energy.Active.Import.Register", None, "Wh"), "soc": ("SoC", None, "Percent")}
    sampled = []
    for key, value in values.items():
        measurand, phase, unit = names[key]
        item = {"value": str(value), "measurand": measurand, "unit": unit}
        if phase:
            item["phase"] = phase
        sampled.append(item)
    return json.dumps([2, f"m{k}", "MeterValues", {"connectorId": 1, "transactionId": 1,
                                                   "meterValue": [{"timestamp": stamp(seconds), "sampledValue": sampled}]}])


async def test_implausible_readings_are_ignored_and_counted(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    async with aiohttp.ClientSession() as session, session.ws_connect(f"{env.url}/CP1", protocols=("ocpp1.6",)) as ws:
        async def send(frame: str) -> MeterSample | None:
            before = len(env.of(MeterSample))
            await ws.send_str(frame)
            reply = json.loads((await ws.receive(timeout=5)).data)
            while reply[0] == 2:  # the server's own calls (it reads the capabilities): left unanswered
                reply = json.loads((await ws.receive(timeout=5)).data)
            assert reply[0] == 3, reply  # a reading is answered either way: refusing is not the charger's business
            samples = env.of(MeterSample)
            return samples[-1] if len(samples) > before else None

        first = await send(meter16(0, 0, l1=16, l2=16, w=11040, wh=50_000, soc=40))
        assert first is not None and first.current_a[:2] == (16.0, 16.0) and first.energy_wh == 50_000
        assert await send(meter16(1, 10, l1=1e11, l2=16)) is None  # no current believed from that sample
        nan = await send(meter16(2, 20, l1="NaN", w=11040))
        assert nan is not None and nan.current_a == (None, None, None) and nan.power_w == 11040
        odd = await send(meter16(3, 30, l1=-40, w=1e9, soc=250, wh=50_010))
        assert odd is not None and odd.current_a == (None, None, None) and odd.power_w is None
        assert odd.soc_pct is None and odd.energy_wh == 50_010
        assert (await send(meter16(4, 40, l1="Infinity", wh=10))) is None  # fell by 50 kWh
        after_reset = await send(meter16(5, 50, l1=10, wh=20))  # a register reset is believed from its second reading
        assert after_reset is not None and after_reset.energy_wh == 20 and after_reset.current_a[0] == 10
        jump = await send(meter16(6, 60, l1=10, wh=5e9))  # 5 GWh in 10 s
        assert jump is not None and jump.energy_wh is None
        for k in range(7, 57):
            await send(meter16(k, 60 + k, l1=1e11))
    assert env.server.counters["implausible_meter_values"] == 5 + 50
    lines = [r for r in caplog.records if "implausible" in r.getMessage()]
    assert 1 <= len(lines) <= 6
    assert max(max(c or 0.0 for c in s.current_a) for s in env.of(MeterSample)) == 16.0
