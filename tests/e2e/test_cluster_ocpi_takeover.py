"""A ChargingProfileResult held (until the charger holds the cap) by an owner that stops meanwhile
reaches the party from the next owner (DESIGN 3.12): the hold is the row's ``next_try`` in
PostgreSQL, not the former owner's memory (``CpoBase._held`` only ends a hold early).

Real ``balancer serve`` processes on one PostgreSQL and one NATS, a simulated OCPP charger and a
simulated OCPI party on real HTTP.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import psycopg

from tests.cluster_servers import NatsServer
from tests.e2e.test_cluster_forwarding import held, ocpi_pair, site_json
from tests.e2e.test_cluster_ownership import TAKEOVER_S, wait_for


async def test_a_result_held_by_an_owner_that_stops_is_sent_by_the_next(
        tmp_path: Path, pg_url: str, nats_server: NatsServer) -> None:
    async with ocpi_pair(tmp_path, pg_url, nats_server) as (owner, other, party, sim):
        tx = await asyncio.to_thread(wait_for, lambda: site_json(owner, "s0")["chargers"][0]["transaction_id"], 30,
                                     "the session to start")
        await asyncio.to_thread(wait_for, lambda: held(sim) >= 25, 30, "the car to get most of the 32 A")
        sim.misbehaviour.rejects_profiles = True  # it never takes the cap: the result is held to its end (5 s)
        sent = time.monotonic()
        status, body, request_id = await party.put_profile(f"CP0-0-{tx}", 10.0)
        assert status == 200 and body["data"]["result"] == "ACCEPTED", (status, body)
        await asyncio.to_thread(owner.stop)  # a graceful stop mid-hold: the site moves to the other instance
        await asyncio.to_thread(wait_for, lambda: "s0" in (other.controlled() or set()), TAKEOVER_S + 15,
                                "the other instance to take s0 over")
        assert await party.wait_result(request_id, 20) == {"result": "ACCEPTED"}
        print(f"held result sent by the next owner {time.monotonic() - sent:.1f} s after the cap was set")
        await asyncio.sleep(2.0)  # a second delivery would have come by now
        assert party.result_posts == {request_id: 1}, party.result_posts
        with psycopg.connect(pg_url) as conn:
            sent_by = conn.execute("SELECT sent_by FROM outbox WHERE channel = 'ocpi'").fetchall()
        assert sent_by == [(other.instance_id,)], sent_by
