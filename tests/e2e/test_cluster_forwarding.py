"""Calls on an instance that does not control the site reach its owner (DESIGN 3.12): a site meter
pushing over HTTP, and OCPI caps and charging preferences, whose callbacks come from the owner once.

Real ``balancer serve`` processes on one PostgreSQL and one NATS, simulated OCPP chargers and a
simulated OCPI party on real HTTP.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

from adapters.ocpi.simulator import OcpiParty
from adapters.ocpp.simulator import SimCar, SimulatedCharger
from tests.cluster_servers import NatsServer
from tests.e2e.cluster import Instance, cluster_config
from tests.e2e.test_cluster_ownership import TAKEOVER_S, wait_for
from tests.e2e.test_cluster_speaking import start_balanced, stop_all

TOKEN = "admin-token"
TOKEN_A = "token-a-for-the-scsp"


def full_config() -> dict[str, Any]:
    """Two sites of one 32 A charger each, whose capacity without a forecast is the full 32 A."""
    config = cluster_config(2)
    config["http"] = {"admin_token": TOKEN}
    for site in config["sites"]:
        site["fallback_kw"] = 32 * 230 * 3 / 1000
    return config


def charger(instance: Instance, cid: str) -> SimulatedCharger:
    now = datetime.now(UTC)
    return SimulatedCharger(cid, instance.ocpp_url, car=SimCar(arrival=now, departure=now + timedelta(hours=8),
                                                              energy_wh=60000), meter_interval_s=0.5, tick_s=0.05)


def site_json(instance: Instance, site: str) -> dict[str, Any]:
    return dict(instance.get(f"/api/v1/sites/{site}", TOKEN))


def held(sim: SimulatedCharger) -> float:
    return sim.limit_now(datetime.now(UTC)) or 0.0


def push(instance: Instance, site: str, current_a: list[float], age_s: float = 0.0) -> tuple[int, Any]:
    at = datetime.now(UTC) - timedelta(seconds=age_s)
    return instance.request("POST", f"/api/v1/sites/{site}/meter", {"current_a": current_a, "timestamp": at.isoformat()},
                            headers={"Authorization": f"Bearer {TOKEN}"})


async def test_a_meter_reading_pushed_to_another_instance_reaches_the_owner(
        tmp_path: Path, pg_url: str, nats_server: NatsServer) -> None:
    config = full_config()
    for site in config["sites"]:
        site["meter"] = {"source": "http", "stale_after_s": 10, "fallback_base_load_a": 0, "margin_a": 1}
    a, b = (Instance(tmp_path, name, config, pg_url, nats_server.url) for name in ("a", "b"))
    sim: SimulatedCharger | None = None
    try:
        owners = await start_balanced([a, b], 2)
        owner, other = (a, b) if owners["s0"] == "a" else (b, a)
        sim = charger(owner, "CP0-0")
        sim.start()
        other_load, pushed = [0.0], [[0.0]]

        async def meter() -> None:
            """The site meter, pushing to the instance that does not control the site every 0.5 s."""
            assert sim is not None
            while True:
                pushed[0] = [round(other_load[0] + sim.draw_a, 2)] * 3
                status, body = await asyncio.to_thread(push, other, "s0", pushed[0])
                assert status == 202 and body["accepted"] is True, (status, body)
                await asyncio.sleep(0.5)

        pushing = asyncio.create_task(meter())
        await asyncio.to_thread(wait_for, lambda: held(sim) >= 25 or pushing.done(), 30,
                                "the car to get most of the 32 A")
        other_load[0] = 20.0  # 20 A of other load at the grid connection
        await asyncio.to_thread(wait_for, lambda: held(sim) <= 12 or pushing.done(), 10,
                                "the owner to lower the car for the other load")
        assert not pushing.done(), pushing
        pushing.cancel()
        view = await asyncio.to_thread(site_json, owner, "s0")
        assert view["owner"] == owner.instance_id and view["meter_fresh"] is True, view
        assert view["meter_a"] == pushed[0], (view, pushed)  # the last reading pushed to the other instance
        assert held(sim) <= 32 - 20 - 1 + 0.5, held(sim)  # the owner's allocation leaves room for the 20 A
        took: dict[str, list[float]] = {"owner": [], "other": []}
        for _ in range(10):  # what the trip to the owner adds (printed: timings are not asserted)
            for name, instance in (("owner", owner), ("other", other)):
                begin = time.perf_counter()
                assert (await asyncio.to_thread(push, instance, "s0", pushed[0]))[0] == 202
                took[name].append(time.perf_counter() - begin)
            await asyncio.sleep(0.2)
        print("meter push, median ms: " + ", ".join(f"{k} {1000 * sorted(v)[len(v) // 2]:.1f}" for k, v in took.items()))
        # A refusal is the owner's: a reading older than the last one it took (only the owner knows).
        status, body = await asyncio.to_thread(push, other, "s0", [5.0, 5.0, 5.0], 5.0)
        assert status == 400 and body["field"] == "timestamp", (status, body)

        # The owner dies: until the other instance controls the site, a push is refused with 503 and why.
        assert owner.proc is not None
        owner.proc.kill()
        await asyncio.sleep(0.3)
        status, body = await asyncio.to_thread(push, other, "s0", [12.0, 12.0, 12.0])
        assert status == 503 and "push the reading again" in body["message"], (status, body)
        await asyncio.to_thread(wait_for, lambda: "s0" in (other.controlled() or set()), TAKEOVER_S + 15,
                                "the other instance to take s0 over")
        status, body = await asyncio.to_thread(push, other, "s0", [12.0, 12.0, 12.0])
        assert status == 202, (status, body)
        assert (await asyncio.to_thread(site_json, other, "s0"))["meter_a"] == [12.0, 12.0, 12.0]
    finally:
        if sim is not None:
            await sim.stop()
        await stop_all([a, b])


def ocpi_callbacks_sent(instance: Instance) -> float:
    status, text = instance.request("GET", "/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert status == 200
    line = next(x for x in str(text).splitlines() if x.startswith("balancer_ocpi_callbacks_sent_total"))
    return float(line.split()[-1])


@asynccontextmanager
async def ocpi_pair(tmp_path: Path, pg_url: str,
                    nats_server: NatsServer) -> AsyncIterator[tuple[Instance, Instance, OcpiParty, SimulatedCharger]]:
    """Two instances with OCPI, CP0-0 connected to the owner of s0, and a party registered with the
    other instance only (it calls that one): (owner, other, party, charger)."""
    config = full_config()
    config["ocpi"] = {"country_code": "NL", "party_id": "EVB", "token_a": [TOKEN_A]}
    a, b = (Instance(tmp_path, name, config, pg_url, nats_server.url) for name in ("a", "b"))
    party = await OcpiParty().start()
    sim: SimulatedCharger | None = None
    try:
        owners = await start_balanced([a, b], 2)
        owner, other = (a, b) if owners["s0"] == "a" else (b, a)
        sim = charger(owner, "CP0-0")
        sim.start()
        status, _ = await party.register(f"{other.url}/ocpi/versions", TOKEN_A)
        assert status == 200 and party.token_c
        yield owner, other, party, sim
    finally:
        if sim is not None:
            await sim.stop()
        await party.stop()
        await stop_all([a, b])


async def test_an_ocpi_cap_and_preferences_set_on_another_instance_are_applied_by_the_owner(
        tmp_path: Path, pg_url: str, nats_server: NatsServer) -> None:
    async with ocpi_pair(tmp_path, pg_url, nats_server) as (owner, other, party, sim):
        await asyncio.to_thread(wait_for, lambda: held(sim) >= 25, 30, "the car to get most of the 32 A")
        tx = await asyncio.to_thread(wait_for, lambda: site_json(owner, "s0")["chargers"][0]["transaction_id"], 10,
                                     "the session to start")
        session = f"CP0-0-{tx}"

        sent = time.monotonic()
        status, body, request_id = await party.put_profile(session, 10.0)
        assert status == 200 and body["data"] == {"result": "ACCEPTED", "timeout": 30}, (status, body)
        assert await party.wait_result(request_id) == {"result": "ACCEPTED"}
        await asyncio.to_thread(wait_for, lambda: held(sim) <= 10.0, 5, "the charger to hold the cap")
        print(f"cap set on the other instance, held by the charger after {time.monotonic() - sent:.2f} s")
        (state,) = (await asyncio.to_thread(site_json, owner, "s0"))["chargers"]
        assert state["external_cap_a"] == 10.0 and state["limit_a"] <= 10.0, state
        status, body, read = await party.get_profile(session, 900)  # the owner's schedule, under the cap
        assert body["data"]["result"] == "ACCEPTED", (status, body)
        periods = (await party.wait_result(read))["profile"]["charging_profile"]["charging_profile_period"]
        assert periods[0]["start_period"] == 0 and periods[0]["limit"] <= 10.0, periods

        departure = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=4)
        status, body = await party.put_preferences(session, departure=departure, energy_kwh=20)
        assert status == 200 and body["data"] == "ACCEPTED", (status, body)
        (state,) = (await asyncio.to_thread(site_json, owner, "s0"))["chargers"]
        assert datetime.fromisoformat(state["departure"]) == departure and 15_000 < state["remaining_wh"] <= 20_000

        status, body, cleared = await party.delete_profile(session)
        assert body["data"]["result"] == "ACCEPTED", (status, body)
        assert await party.wait_result(cleared) == {"result": "ACCEPTED"}
        await asyncio.to_thread(wait_for, lambda: held(sim) >= 25, 10, "the cap to be lifted")

        await asyncio.sleep(2.0)  # a second delivery of any result would have come by now
        assert party.result_posts == {request_id: 1, read: 1, cleared: 1}, party.result_posts
        assert ocpi_callbacks_sent(owner) >= 3 and ocpi_callbacks_sent(other) == 0
        status, body, _ = await party.put_profile("CP0-0-nope", 10.0)  # the owner does not know it either
        assert status == 200 and body["data"]["result"] == "UNKNOWN_SESSION", (status, body)

        assert owner.proc is not None
        owner.proc.kill()  # no owner until the other instance takes s0 over: refused, saying why
        await asyncio.sleep(0.3)
        status, body, _ = await party.put_profile(session, 8.0)
        assert status == 503 and body["status_code"] == 3000 and "try again" in body["status_message"], body


async def test_an_ocpi_result_queued_by_an_owner_that_is_killed_is_sent_once_by_the_next(
        tmp_path: Path, pg_url: str, nats_server: NatsServer) -> None:
    """OCPI callbacks are rows of the cluster's outbox, like OSCP messages: they outlive their owner."""
    async with ocpi_pair(tmp_path, pg_url, nats_server) as (owner, other, party, _sim):
        tx = await asyncio.to_thread(wait_for, lambda: site_json(owner, "s0")["chargers"][0]["transaction_id"], 30,
                                     "the session to start")
        party.callbacks_down = True  # the party cannot take the result: it waits in the outbox
        status, body, request_id = await party.put_profile(f"CP0-0-{tx}", 10.0)
        assert status == 200 and body["data"]["result"] == "ACCEPTED", (status, body)
        with psycopg.connect(pg_url) as conn:
            rows = conn.execute("SELECT instance_id FROM outbox WHERE channel = 'ocpi' AND sent_at IS NULL").fetchall()
        assert rows == [(owner.instance_id,)], rows
        assert owner.proc is not None
        owner.proc.kill()
        party.callbacks_down = False
        assert await party.wait_result(request_id, TAKEOVER_S + 20) == {"result": "ACCEPTED"}
        await asyncio.sleep(2.0)  # a second delivery would have come by now
        assert party.result_posts == {request_id: 1}, party.result_posts
        with psycopg.connect(pg_url) as conn:
            sent_by = conn.execute("SELECT sent_by FROM outbox WHERE channel = 'ocpi'").fetchall()
        assert sent_by == [(other.instance_id,)], sent_by
