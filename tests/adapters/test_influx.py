"""The InfluxDB sink against real servers: v1 /write (influxd 1.x), v2 API (VictoriaMetrics), outages."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from adapters.influx import InfluxSink
from adapters.metrics import charger_point, site_point
from balancer.model import InfluxSettings
from tests.servers import InfluxServer, VictoriaMetrics

T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=30)


def points(n: int, offset: int = 0) -> list:  # type: ignore[type-arg]
    return [site_point("depot", T0 + timedelta(seconds=i + offset), capacity_a=[50, 50, 50], capacity_source="forecast",
                       allocated_a=[40, 40, 40], measured_a=[39, 38, 39], grid_online=True, energy_requested_wh=100,
                       energy_delivered_wh=float(i), chargers_connected=3) for i in range(n)]


async def wait_for(predicate, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "timed out"
        await asyncio.sleep(0.1)


def count(server: InfluxServer) -> int:
    result = server.query('SELECT count("energy_delivered_wh") FROM "site"', "balancer")
    series = result["results"][0].get("series")
    return int(series[0]["values"][0][1]) if series else 0


@contextlib.asynccontextmanager
async def v1_sink(tmp_path: Path, **settings: Any) -> AsyncIterator[tuple[InfluxServer, InfluxSink]]:
    """A started sink writing to a fresh influxd 1.x (database "balancer"), stopped with it."""
    server = InfluxServer(tmp_path / "influx").start()
    try:
        server.create_db("balancer")
        sink = InfluxSink(InfluxSettings(url=server.url, api="v1", database="balancer", **settings),
                          tmp_path / "spill")
        await sink.start()
        yield server, sink
    finally:
        server.stop()


async def test_v1_write_and_outage_loses_nothing(tmp_path: Path) -> None:
    server = InfluxServer(tmp_path / "influx").start()
    try:
        server.create_db("balancer")
        settings = InfluxSettings(url=server.url, api="v1", database="balancer", flush_interval_s=0.1,
                                  buffer_points=50)
        sink = InfluxSink(settings, tmp_path / "spill")
        await sink.start()
        started = time.perf_counter()
        sink.write(points(20))
        assert time.perf_counter() - started < 0.05  # write() only queues
        await wait_for(lambda: count(server) == 20)
        port = server.port
        server.stop()  # outage
        sink.write(points(200, offset=100))  # more than the buffer: the rest is spilled to disk
        await asyncio.sleep(0.5)
        assert sink.stats()["failed_writes"] >= 1 and sink.stats()["spilled_points"] > 0
        server = InfluxServer(tmp_path / "influx", port=port).start()
        await wait_for(lambda: count(server) == 220)
        assert sink.stats()["dropped_points"] == 0 and sink.stats()["buffered"] == 0
        await sink.stop()
    finally:
        server.stop()


async def test_v2_write_to_a_v2_protocol_server(tmp_path: Path) -> None:
    vm = VictoriaMetrics(tmp_path / "vm").start()
    try:
        settings = InfluxSettings(url=vm.url, api="v2", bucket="balancer", org="org", token="t", flush_interval_s=0.1)
        sink = InfluxSink(settings, tmp_path / "spill")
        await sink.start()
        sink.write(points(10))
        sink.write([charger_point("depot", "CP1", T0, protocol="ocpp1.6", limit_a=16, measured_a=[15.9, 15.8, 16],
                                  power_w=11000, energy_wh=1234, soc_pct=50, state="charging", connected=True,
                                  obeys=True)])
        await wait_for(lambda: sink.stats()["written_points"] == 11)
        await sink.stop()
        series = vm.export('{__name__="site_energy_delivered_wh"}')
        assert series and len(series[0]["values"]) == 10
        assert vm.export('{__name__="charger_limit_a", charger="CP1"}')[0]["values"] == [16]
    finally:
        vm.stop()


async def test_limit_reason_is_a_tag_panels_can_group_by(tmp_path: Path) -> None:
    async with v1_sink(tmp_path, flush_interval_s=0.1) as (server, sink):
        for k, (cid, reason, limit) in enumerate([("CP1", "capacity", 10.0), ("CP2", "car_max", 13.0),
                                                  ("CP3", "", 0.0)]):
            sink.write([charger_point("depot", cid, T0 + timedelta(seconds=k), protocol="ocpp1.6", limit_a=limit,
                                      measured_a=[0, 0, 0], power_w=None, energy_wh=None, soc_pct=None,
                                      state="charging", connected=True, obeys=True, limit_reason=reason)])
        await wait_for(lambda: sink.stats()["written_points"] == 3)
        await sink.stop()
        result = server.query('SHOW TAG VALUES FROM "charger" WITH KEY = "limit_reason"', "balancer")
        assert sorted(v[1] for v in result["results"][0]["series"][0]["values"]) == ["capacity", "car_max"]
        result = server.query('SELECT sum("limit_a") FROM "charger" GROUP BY "limit_reason"', "balancer")
        sums = {s["tags"]["limit_reason"]: s["values"][0][1] for s in result["results"][0]["series"]}
        assert sums == {"capacity": 10.0, "car_max": 13.0, "": 0.0}


async def test_two_flushes_at_once_write_every_point_once(tmp_path: Path) -> None:
    """A flush called while the background one waits for the server (the service's own ``flush()``
    at a reload or a stop) sent the same batch again and then took it off the queue twice: the
    points queued behind it were dropped unsent, or the second ``popleft`` raised on an empty
    queue (the clean-clone CI's dashboard service test)."""
    async with v1_sink(tmp_path, flush_interval_s=3600) as (server, sink):
        sink.write(points(30))
        results = await asyncio.gather(sink.flush(), sink.flush(), sink.flush())
        assert all(results)
        assert sink.stats()["buffered"] == 0 and sink.stats()["written_points"] == 30
        await wait_for(lambda: count(server) == 30)
        await sink.stop()


async def test_points_spilled_while_a_batch_is_on_its_way_are_neither_lost_nor_doubled(tmp_path: Path) -> None:
    """A write() that overflows the buffer while a batch is being sent spills the oldest queued
    points; when those were the batch itself, the flush then took as many *other* points off the
    queue: the batch written twice (again from the spill file), the points behind it never."""
    async with v1_sink(tmp_path, flush_interval_s=3600, buffer_points=40) as (server, sink):
        sink.write(points(30))
        flushing = asyncio.create_task(sink.flush())
        await asyncio.sleep(0)  # the flush has taken its batch and waits for the server
        sink.write(points(30, offset=100))  # 60 > 40 queued before the fix: the oldest 40 spilled
        assert await flushing
        assert await sink.flush()
        await wait_for(lambda: count(server) == 60)
        result = server.query('SELECT "energy_delivered_wh" FROM "site"', "balancer")
        assert len(result["results"][0]["series"][0]["values"]) == 60  # each point once
        await sink.stop()
