"""Odd ids into a real InfluxDB 1.6.7 and back (issue 19 item 11): the stored tags are the ids."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from adapters.influx import InfluxSink
from adapters.metrics import charger_point, event_point
from balancer.model import InfluxSettings
from tests.servers import InfluxServer

T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)
# Every id check-config lets through must come back as it was.
ODD = ["CP 1", "CP,2", "CP=3", 'CP"4"', "C\\P5", "C\\\\P6", "CP\\.7", "é✓8", "#CP9", "CP'10"]


def stored_chargers(server: InfluxServer) -> set[str]:
    result = server.query('SHOW TAG VALUES FROM "charger" WITH KEY = "charger"', "balancer")
    series = result["results"][0].get("series") or []
    return {value for _, value in series[0]["values"]} if series else set()


async def write_all(server: InfluxServer, tmp_path: Path, points: list) -> InfluxSink:  # type: ignore[type-arg]
    sink = InfluxSink(InfluxSettings(url=server.url, api="v1", database="balancer", flush_interval_s=0.1),
                      tmp_path / "spill")
    await sink.start()
    sink.write(points)
    end = time.monotonic() + 20
    while sink.stats()["buffered"] and time.monotonic() < end:
        await asyncio.sleep(0.1)
    await sink.stop()
    return sink


def charger(site: str, charger_id: str, k: int, state: str = "charging") -> object:
    return charger_point(site, charger_id, T0 + timedelta(seconds=k), protocol="ocpp1.6", limit_a=16.0,
                         measured_a=[1.0, 2.0, 3.0], power_w=None, energy_wh=None, soc_pct=None, state=state,
                         connected=True, obeys=True)


async def test_odd_ids_are_stored_as_they_are(tmp_path: Path) -> None:
    server = InfluxServer(tmp_path / "influx").start()
    try:
        server.create_db("balancer")
        tabbed = ["CP\t11", "CP\r12"]  # check-config refuses these; the writer still carries them
        sink = await write_all(server, tmp_path, [charger("site, one", c, k) for k, c in enumerate(ODD + tabbed)])
        assert sink.stats()["failed_writes"] == 0
        assert stored_chargers(server) == set(ODD + tabbed)
        sites = server.query('SHOW TAG VALUES FROM "charger" WITH KEY = "site"', "balancer")
        assert sites["results"][0]["series"][0]["values"] == [["site", "site, one"]]
    finally:
        server.stop()


async def test_what_line_protocol_cannot_carry_never_breaks_a_batch(tmp_path: Path) -> None:
    """A line feed or a trailing backslash in a tag, a line feed in a text field: the line stays valid."""
    server = InfluxServer(tmp_path / "influx").start()
    try:
        server.create_db("balancer")
        points = [charger("s", "CP\\", 0), charger("s", "CP\n2", 1), charger("s", "CP3", 2, state="a\nb\\"),
                  charger("s", "CP\\ 4", 3), charger("s", "CP\\,5", 4),
                  event_point("s", T0, kind="profile_push", ok=False, result='Rejected:\n"bad"\\', charger="CP3")]
        sink = await write_all(server, tmp_path, points)
        assert sink.stats()["failed_writes"] == 0
        assert stored_chargers(server) == {"CP\ufffd", "CP\ufffd2", "CP3", "CP\ufffd 4", "CP\ufffd,5"}
        rows = server.query('SELECT "state" FROM "charger" WHERE "charger" = \'CP3\'', "balancer")
        assert rows["results"][0]["series"][0]["values"][0][1] == "a b\\"
        rows = server.query('SELECT "result" FROM "event"', "balancer")
        assert rows["results"][0]["series"][0]["values"][0][1] == 'Rejected: "bad"\\'
    finally:
        server.stop()


async def test_spilled_points_with_a_cr_in_a_tag_are_replayed_whole(tmp_path: Path) -> None:
    """Spill files are read back line by line on LF only: a CR in an id is part of the id."""
    server = InfluxServer(tmp_path / "influx")
    sink = InfluxSink(InfluxSettings(url=server.url, api="v1", database="balancer", flush_interval_s=0.1,
                                     buffer_points=4), tmp_path / "spill")
    await sink.start()
    try:
        sink.write([charger("s", f"CP\r{k}", k) for k in range(12)])  # server down: most spill to disk
        assert sink.stats()["spilled_points"] > 0
        server.start()
        server.create_db("balancer")
        end = time.monotonic() + 20
        while len(stored_chargers(server)) < 12 and time.monotonic() < end:
            await asyncio.sleep(0.1)
        assert stored_chargers(server) == {f"CP\r{k}" for k in range(12)}
    finally:
        await sink.stop()
        server.stop()
