"""An OCPI callback the owner gives up on is recorded in the cluster's outbox as dropped, not as
delivered (DESIGN 3.12): an operator can list what a party never got.

Real ``balancer serve`` processes on one PostgreSQL and one NATS, a simulated OCPP charger and a
simulated OCPI party on real HTTP.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import psycopg

from tests.cluster_servers import NatsServer
from tests.e2e.test_cluster_forwarding import TOKEN, ocpi_pair, site_json
from tests.e2e.test_cluster_ownership import wait_for


def ocpi_rows(pg_url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(pg_url) as conn:
        return conn.execute("SELECT sent_at IS NOT NULL, dropped_at IS NOT NULL, dropped_by FROM outbox "
                            "WHERE channel = 'ocpi'").fetchall()


async def test_a_result_for_a_party_that_unregistered_is_marked_dropped_not_delivered(
        tmp_path: Path, pg_url: str, nats_server: NatsServer) -> None:
    async with ocpi_pair(tmp_path, pg_url, nats_server) as (owner, _other, party, _sim):
        tx = await asyncio.to_thread(wait_for, lambda: site_json(owner, "s0")["chargers"][0]["transaction_id"], 30,
                                     "the session to start")
        party.callbacks_down = True  # the result waits in the outbox, retried by s0's owner
        status, body, request_id = await party.put_profile(f"CP0-0-{tx}", 10.0)
        assert status == 200 and body["data"]["result"] == "ACCEPTED", (status, body)
        status, body = await party.call("DELETE", party.cpo_endpoints["credentials:RECEIVER"])
        assert status == 200, (status, body)  # the party is gone: its result cannot be sent any more
        rows = await asyncio.to_thread(wait_for, lambda: [r for r in ocpi_rows(pg_url) if r[1]], 20,
                                       "the owner to give the result up")
        assert rows == [(False, True, owner.instance_id)], rows
        assert ocpi_rows(pg_url) == rows  # the only OCPI row, and not counted as sent
        status, text = owner.request("GET", "/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        counters = {line.split()[0]: float(line.split()[-1]) for line in str(text).splitlines()
                    if line.startswith("balancer_ocpi_callbacks_")}
        assert counters["balancer_ocpi_callbacks_dropped_total"] == 1, counters
        assert counters["balancer_ocpi_callbacks_sent_total"] == 0, counters
        assert request_id not in party.results
