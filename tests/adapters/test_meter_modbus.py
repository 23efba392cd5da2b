"""The Modbus TCP meter client against a real pymodbus server on loopback (both register maps)."""

from __future__ import annotations

import asyncio

import pytest

from adapters.meter.maps import decode_sdm630, decode_sunspec_meter, encode_sdm630, encode_sunspec
from adapters.meter.modbus import MeterReadError, ModbusMeter
from adapters.meter.simulator import MeterSimulator
from balancer.events import SiteMeterReading
from balancer.model import MeterSettings
from tests.adapters.ocpp_env import wait_for


def settings(port: int, meter_map: str, **kw: object) -> MeterSettings:
    return MeterSettings(source="modbus", host="127.0.0.1", port=port, map=meter_map,
                         **{"poll_s": 0.1, "timeout_s": 0.5, **kw})  # type: ignore[arg-type]


def test_maps_round_trip_signed_currents() -> None:
    body = encode_sunspec([12.34, -5.0, 0.0])[2 + 2 + 66 + 2:]
    assert decode_sunspec_meter(203, body) == pytest.approx((12.34, -5.0, 0.0))
    single = encode_sunspec([7.5, 3.0, 3.0], model_id=201)[2 + 2 + 66 + 2:]
    assert decode_sunspec_meter(201, single) == (pytest.approx(7.5), None, None)
    assert decode_sdm630(encode_sdm630([1.5, -2.25, 40.0])) == pytest.approx((1.5, -2.25, 40.0))


@pytest.mark.parametrize("meter_map", ["sunspec", "sdm630"])
async def test_reads_both_maps_over_tcp(meter_map: str) -> None:
    sim = MeterSimulator(meter_map)
    sim.non_ev_a = [21.5, -3.25, 0.5]
    await sim.start()
    meter = ModbusMeter("s", settings(sim.port, meter_map), on_reading=lambda e: None)
    try:
        assert await meter.read_once() == pytest.approx((21.5, -3.25, 0.5), abs=0.01)
        sim.non_ev_a = [40.0, 40.0, 40.0]
        assert await meter.read_once() == pytest.approx((40.0, 40.0, 40.0), abs=0.01)
    finally:
        await meter.stop()
        await sim.stop()


async def test_sunspec_scan_finds_model_201_at_40000() -> None:
    sim = MeterSimulator("sunspec", model_id=201)
    sim.non_ev_a = [9.0, 9.0, 9.0]
    await sim.start()
    meter = ModbusMeter("s", settings(sim.port, "sunspec"), on_reading=lambda e: None)
    try:
        assert await meter.read_once() == (pytest.approx(9.0), None, None)
    finally:
        await meter.stop()
        await sim.stop()


@pytest.mark.parametrize(("mode", "kind"), [("exception", "exception_reply"), ("silent", "timeout")])
async def test_fault_replies_are_errors_of_their_kind(mode: str, kind: str) -> None:
    sim = MeterSimulator("sdm630")
    await sim.start()
    meter = ModbusMeter("s", settings(sim.port, "sdm630", timeout_s=0.3), on_reading=lambda e: None)
    try:
        await meter.read_once()
        sim.mode = mode
        with pytest.raises(MeterReadError) as info:
            await meter.read_once()
        assert info.value.kind == kind
    finally:
        await meter.stop()
        await sim.stop()


async def test_poll_loop_survives_refused_connection_and_reconnects() -> None:
    sim = MeterSimulator("sunspec")
    sim.non_ev_a = [5.0, 5.0, 5.0]
    await sim.start()
    port = sim.port
    readings: list[SiteMeterReading] = []
    errors: list[str] = []
    meter = ModbusMeter("s", settings(port, "sunspec"), on_reading=readings.append,
                        on_error=lambda kind, message: errors.append(kind))
    await meter.start()
    try:
        await wait_for(lambda: len(readings) >= 2)
        await sim.stop()
        await wait_for(lambda: "connect" in errors, timeout=10)
        assert meter.backoff_s > 0.1  # backing off while refused
        n = len(readings)
        restarted = MeterSimulator("sunspec", port=port)
        restarted.non_ev_a = [11.0, 12.0, 13.0]
        await restarted.start()
        try:
            await wait_for(lambda: len(readings) > n, timeout=15)
            assert readings[-1].current_a == pytest.approx((11.0, 12.0, 13.0))
            assert meter.backoff_s == pytest.approx(0.1)
        finally:
            await restarted.stop()
    finally:
        await meter.stop()
    assert meter._task is None
    await asyncio.sleep(0)


def test_sunspec_scale_factors_grow_for_large_currents() -> None:
    body = encode_sunspec([1234.5, -800.0, 0.0])[2 + 2 + 66 + 2:]
    assert decode_sunspec_meter(203, body) == pytest.approx((1234.5, -800.0, 0.0), abs=0.1)
