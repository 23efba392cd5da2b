"""Fail-over of a cluster behind HAProxy, judged from the simulated chargers' own record.

Three ``balancer serve`` instances on one PostgreSQL and one NATS, HAProxy in front of their OCPP
and HTTP ports, a fleet of chargers connecting through HAProxy (so each site's chargers spread over
the instances). The grid operator lowers every site's capacity and the owner of a site is killed
(kill -9) while it pushes the change. From the limits the chargers held (``held_limit_at``, replayed from what each
accepted): no site ever above its old capacity, every site below the new one within 5 s (a killed
owner's sites: within the 15 s take-over plus those 5 s); the sites moved within 15 s; every
charger reconnected through HAProxy; no session lost or started twice; the forecast not lost; no
message to the grid operator lost or sent twice (its endpoint is down from 2.5 s before the kill
until the take-over, so the killed owner's messages wait in the outbox for the next owners), counted
at the grid operator's own server. The measured figures are printed as one JSON line (``pytest -s``).

Scale: 6 sites x 8 chargers by default; ``CLUSTER_FAILOVER_SCALE=full`` runs the issue's 30 sites
x 20 chargers (600) on a machine with the cores for it.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp

from adapters.ocpp.simulator import SimCar, SimulatedCharger
from adapters.oscp.simulator import GridOperatorSimulator
from tests.cluster_servers import HaProxy, NatsServer
from tests.e2e.cluster import Instance, cluster_config, start_all
from tests.e2e.test_cluster_gateways import until
from tests.e2e.test_cluster_ownership import TAKEOVER_S, wait_for
from tests.e2e.test_cluster_speaking import outbox_rows, sent_once_each, unsent_rows
from tests.e2e.test_service import blocks

FULL = os.environ.get("CLUSTER_FAILOVER_SCALE") == "full"
N_SITES, PER_SITE = (30, 20) if FULL else (6, 8)
OLD_A, NEW_A = 7.5 * PER_SITE, 5.0 * PER_SITE  # per phase; the new one pauses some cars (6 A minimum)
REACT_S = 5.0
EPS = 1e-6


def kw(amps: float) -> float:
    return round(amps * 230 * 3 / 1000, 3)


async def send(grid: GridOperatorSimulator, site: str, amps: float) -> datetime:
    """As a grid operator does: again when the request died with the instance behind HAProxy
    (connection closed, 502) or could not be stored (503). When the accepted attempt started."""
    for _ in range(10):
        started = datetime.now(UTC)
        try:
            if await grid.send_forecast(site, blocks(kw(amps))) == 204:
                return started
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.3)
    raise AssertionError(f"forecast for {site} never accepted")


async def test_kill_9_of_an_owner_during_a_capacity_change_behind_haproxy(
        tmp_path: Path, pg_url: str, nats_server: NatsServer) -> None:
    grid = GridOperatorSimulator(fp_url="", fp_token="oscp-token")
    await grid.start()  # first: the instances report to it (heartbeats each second, measurements each 2 s)
    config = cluster_config(N_SITES, PER_SITE)
    config["control"] = {"interval_s": 1.0}
    config["oscp"] = {**config["oscp"], "heartbeat_interval_s": 1, "measurement_interval_s": 2,
                      "capacity_provider": {"base_url": grid.base_url, "token": grid.our_token}}
    sites = [f"s{i}" for i in range(N_SITES)]
    instances = [Instance(tmp_path, name, config, pg_url, nats_server.url) for name in ("a", "b", "c")]
    proxy = HaProxy(tmp_path, [(i.instance_id, i.ocpp_port, i.http_port) for i in instances])
    fleet: dict[str, list[SimulatedCharger]] = {}
    try:
        await asyncio.to_thread(start_all, instances)
        proxy.start()
        share = N_SITES // 3
        await asyncio.to_thread(wait_for, lambda: all(len(i.controlled() or ()) == share for i in instances),
                                60, "an even spread")
        now = datetime.now(UTC)
        url = f"ws://127.0.0.1:{proxy.ocpp_port}/ocpp"
        for i, site in enumerate(sites):
            fleet[site] = [SimulatedCharger(f"CP{i}-{j}", url, car=SimCar(
                arrival=now, departure=now + timedelta(hours=8), energy_wh=80000), meter_interval_s=5.0,
                tick_s=0.5, seed=i * 100 + j, validate=False) for j in range(PER_SITE)]
        chargers = [c for group in fleet.values() for c in group]
        for c in chargers:
            c.start()
        grid.fp_url = f"http://127.0.0.1:{proxy.http_port}/oscp/fp/2.0"
        for site in sites:  # through HAProxy: any instance takes it
            await send(grid, site, OLD_A)

        def held(site: str, t: datetime) -> float:
            return sum(c.held_limit_at(t) or 0.0 for c in fleet[site])

        await until(lambda: all(c.transaction_id for c in chargers), 60, "every car in a session")
        await until(lambda: all(held(s, datetime.now(UTC)) >= OLD_A - PER_SITE * 1.0 for s in sites), 60,
                    "every site using its capacity")
        settled = datetime.now(UTC)
        sessions = {c.charger_id: c.transaction_id for c in chargers}

        victim = next(i for i in instances if i.controlled())
        lost = victim.controlled() or set()
        survivors = [i for i in instances if i is not victim]
        # The victim's sites first; it is killed as soon as the first of them is accepted, while
        # it pushes that change, before the others reach it.
        order = sorted(sites, key=lambda s: s not in lost)
        grid.fail_with = 503  # the grid operator's own endpoint goes down (until the take-over):
        await asyncio.sleep(2.5)  # every owner has messages waiting in the outbox when the victim dies
        posted = {order[0]: await send(grid, order[0], NEW_A)}  # when the accepted POST started
        assert victim.proc is not None
        victim.proc.kill()
        killed = time.monotonic()
        killed_at = datetime.now(UTC)
        await asyncio.sleep(1.0)
        waiting = unsent_rows(pg_url)
        queued_by_victim = {rid for _, author, rid in waiting if author == victim.instance_id}

        def moved() -> bool:
            return lost <= set().union(*(i.controlled() or set() for i in survivors))

        def moved_after_s() -> float:
            wait_for(moved, TAKEOVER_S + 10, "the killed owner's sites to move")
            return time.monotonic() - killed

        watch = asyncio.create_task(asyncio.to_thread(moved_after_s))  # while the other sites' POSTs go on
        for site in order[1:]:
            posted[site] = await send(grid, site, NEW_A)
        took = await watch
        # When each of its sites was controlled again, from the survivors' logs.
        regained = [min(t for i in survivors for t, _ in i.log_events(f"site {site}: controlled by")
                        if t > killed_at) for site in lost]
        took_in_logs = max((t - killed_at).total_seconds() for t in regained)
        print(json.dumps({"ownership_moved_s": round(took, 2), "ownership_moved_s_in_logs": round(took_in_logs, 2)}))
        assert took <= TAKEOVER_S, took
        grid.fail_with = None
        await until(lambda: all(held(s, datetime.now(UTC)) <= NEW_A + EPS for s in sites), TAKEOVER_S + REACT_S,
                    "every site within its new capacity")

        def all_connected() -> bool:
            views = [s for i in survivors for s in i.get("/api/v1/sites") if s["owner"] == i.instance_id]
            return len(views) == N_SITES and all(c["connected"] for s in views for c in s["chargers"])

        await asyncio.to_thread(wait_for, all_connected, 60, "every charger reconnected through HAProxy")
        reconnected_s = time.monotonic() - killed

        def received() -> Counter[str]:
            return Counter(headers["X-Request-ID"] for _, _, headers in grid.received)

        waiting_ids = {rid for _, _, rid in waiting}
        deadline = time.monotonic() + 60  # asserted below, after the figures are out
        while not waiting_ids <= set(received()) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.0)
        end = datetime.now(UTC)
        # A site is hit when its owner died, or when its chargers that were connected through the
        # killed instance alone held more than the new capacity: they keep their last limit until
        # they are back (reserved, DESIGN 4), nobody can lower it meanwhile. Any other site reaches
        # its new capacity within 5 s, the killed gateway notwithstanding.
        hit = lost | {site for site in sites
                      if sum(c.held_limit_at(killed_at) or 0.0 for c in fleet[site] if c.boots > 1) > NEW_A}
        # The chargers' own record, every 50 ms from the moment the sites were settled.
        t = settled
        over_old_a = over_new_a = -float("inf")  # the most any site held above each capacity [A]
        while t <= end:
            for site in sites:
                total = held(site, t)
                over_old_a = max(over_old_a, total - OLD_A)
                assert total <= OLD_A + EPS, (site, t, total)
                deadline = (max(posted[site], killed_at) + timedelta(seconds=TAKEOVER_S + REACT_S)
                            if site in hit else posted[site] + timedelta(seconds=REACT_S))
                if t >= deadline:
                    over_new_a = max(over_new_a, total - NEW_A)
                    assert total <= NEW_A + EPS, (site, t, total, site in lost)
            t += timedelta(milliseconds=50)

        # Sessions: the same transaction on the charger and at the owner, none started twice.
        views = {s["id"]: s for i in survivors for s in i.get("/api/v1/sites") if s["owner"] == i.instance_id}
        for site in sites:
            assert [round(a, 2) for a in views[site]["capacity_a"]] == [NEW_A] * 3, views[site]["capacity_a"]
            for c in views[site]["chargers"]:
                assert c["transaction_id"] == sessions[c["id"]], c
        for c in chargers:
            assert c.transaction_id == sessions[c.charger_id] and len(c.session_log) == 1, c.charger_id
        # The grid operator: every message waiting at the kill arrived (the victim's too), none twice:
        # the victim was killed while the grid operator refused everything, so none it had POSTed
        # was taken, and no survivor may send a message again (``repeats``: the same X-Request-ID,
        # which the simulator drops as any receiver would; ``outbox_rows`` says who sent it).
        counts = received()
        twice = {rid: outbox_rows(pg_url).get(rid) for _, _, headers in grid.repeats
                 for rid in [headers["X-Request-ID"]]}
        print(json.dumps({
            "sites": N_SITES, "chargers": len(chargers), "sites_moved": len(lost),
            "ownership_moved_s": round(took, 2),
            "ownership_moved_s_in_logs": round(took_in_logs, 2),
            "reconnected_s": round(reconnected_s, 2),
            "reconnects": sum(c.boots - 1 for c in chargers),
            "max_above_old_capacity_a": round(over_old_a, 2),
            "max_above_new_capacity_after_its_deadline_a": round(over_new_a, 2),
            "messages_received": sum(counts.values()), "messages_waiting_at_kill": len(waiting_ids),
            "of_them_queued_by_the_killed_owner": len(queued_by_victim),
            "lost": len(waiting_ids - set(counts)), "sent_twice": len(grid.repeats)}))
        assert queued_by_victim and waiting_ids <= set(counts) and not twice, \
            (len(queued_by_victim), len(waiting_ids - set(counts)), twice)
        sent_once_each(grid)
    finally:
        for c in [c for group in fleet.values() for c in group]:
            await c.stop()
        await grid.stop()
        for inst in instances:
            if inst.proc is not None and inst.proc.poll() is None:
                await asyncio.to_thread(inst.stop)
        proxy.stop()
