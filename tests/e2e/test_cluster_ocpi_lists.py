"""OCPI Locations and Sessions lists in a cluster (DESIGN 3.12): whichever instance a load balancer
sends the eMSP / SCSP to answers the same complete list, paginated across every site.

Real ``balancer serve`` processes on one PostgreSQL and one NATS, simulated OCPP chargers and a
simulated OCPI party on real HTTP.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp

from adapters.ocpi.messages import VERSION, encode_token
from adapters.ocpi.simulator import OcpiParty
from adapters.ocpp.simulator import SimCar, SimulatedCharger
from tests.cluster_servers import NatsServer
from tests.e2e.cluster import Instance
from tests.e2e.test_cluster_forwarding import ocpi_pair, site_json
from tests.e2e.test_cluster_ownership import TAKEOVER_S, wait_for


async def get_all(party: OcpiParty, instance: Instance, module: str, limit: int) -> tuple[list[dict[str, Any]], int]:
    """Every page of a list on one instance, following ``Link``; (items, X-Total-Count of the first page)."""
    url: str | None = f"{instance.url}/ocpi/{VERSION}/{module}?offset=0&limit={limit}"
    items: list[dict[str, Any]] = []
    total = -1
    async with aiohttp.ClientSession() as http:
        while url is not None:
            async with http.get(url, headers={"Authorization": encode_token(party.token_c or "")}) as response:
                body = await response.json()
                assert response.status == 200 and body["status_code"] == 1000, (response.status, body)
                total = int(response.headers["X-Total-Count"]) if total < 0 else total
                assert len(body["data"]) <= limit, body
                items += body["data"]
                link = response.headers.get("Link")
                url = link[1:link.index(">")] if link else None
                assert url is None or url.startswith(f"{instance.url}/"), url
    return items, total


async def test_every_instance_lists_every_sites_locations_and_sessions_even_while_an_owner_is_gone(
        tmp_path: Path, pg_url: str, nats_server: NatsServer) -> None:
    async with ocpi_pair(tmp_path, pg_url, nats_server) as (owner, other, party, _sim):
        now = datetime.now(UTC)  # s1's car, on its owner (the instance the party registered with), leaves soon
        brief = SimulatedCharger("CP1-0", other.ocpp_url, meter_interval_s=0.5, tick_s=0.05,
                                 car=SimCar(arrival=now, departure=now + timedelta(seconds=6), energy_wh=60000))
        brief.start()
        try:
            tx0 = await asyncio.to_thread(wait_for, lambda: site_json(owner, "s0")["chargers"][0]["transaction_id"],
                                          30, "the session on s0 to start")
            tx1 = await asyncio.to_thread(wait_for, lambda: site_json(other, "s1")["chargers"][0]["transaction_id"],
                                          30, "the session on s1 to start")
            await asyncio.to_thread(wait_for, lambda: site_json(other, "s1")["chargers"][0]["transaction_id"] is None,
                                    30, "the session on s1 to end")
            await asyncio.to_thread(wait_for, lambda: party.token_c and owner.request(
                "GET", f"/ocpi/{VERSION}/locations", headers={"Authorization": encode_token(party.token_c)})[0] == 200,
                10, "the owner of s0 to know the party (registered with the other instance)")
            for instance in (owner, other):
                for limit in (1, 2, 50):
                    locations, total = await get_all(party, instance, "locations", limit)
                    assert total == 2 and [loc["id"] for loc in locations] == ["s0", "s1"], (instance.instance_id,
                                                                                             locations)
                    status = {e["uid"]: e["status"] for loc in locations for e in loc["evses"]}
                    assert status == {"CP0-0": "CHARGING", "CP1-0": "AVAILABLE"}, (instance.instance_id, status)
                    sessions, total = await get_all(party, instance, "sessions", limit)
                    found = {s["id"]: (s["location_id"], s["status"]) for s in sessions}
                    assert total == len(sessions) == len(found), (instance.instance_id, limit, total, sessions)
                    assert found == {f"CP0-0-{tx0}": ("s0", "ACTIVE"), f"CP1-0-{tx1}": ("s1", "COMPLETED")}, \
                        (instance.instance_id, limit, found)

            # The owner of s1 dies: until s0's owner takes s1 over, nobody answers for s1, and its
            # last snapshot in PostgreSQL stands in; after, the new owner's list. Both keep s1's
            # ended session (written by the dead owner) and say nothing of its charger.
            assert other.proc is not None
            other.proc.kill()
            for when in ("before the take-over", "after the take-over"):
                if when.startswith("after"):
                    await asyncio.to_thread(wait_for, lambda: "s1" in (owner.controlled() or set()), TAKEOVER_S + 15,
                                            "s0's owner to take s1 over")
                locations, total = await get_all(party, owner, "locations", 1)
                status = {e["uid"]: e["status"] for loc in locations for e in loc["evses"]}
                assert total == 2 and status == {"CP0-0": "CHARGING", "CP1-0": "UNKNOWN"}, (when, status)
                sessions, total = await get_all(party, owner, "sessions", 1)
                found = {s["id"]: (s["location_id"], s["status"]) for s in sessions}
                assert total == 2 and found == {f"CP0-0-{tx0}": ("s0", "ACTIVE"),
                                                f"CP1-0-{tx1}": ("s1", "COMPLETED")}, (when, found)
        finally:
            await brief.stop()
