"""Chargers of one site on different instances: the owner controls them all through their gateways (NATS).

A grid operator talks to the instance that does *not* own the site; the site's chargers are split
over both instances. The forecast reaches the owner, the owner's limits reach every charger, and
from the chargers' own view the sum never exceeds the capacity in force.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from adapters.ocpp.simulator import SimCar, SimulatedCharger
from adapters.oscp.simulator import GridOperatorSimulator
from tests.cluster_servers import NatsServer
from tests.e2e.cluster import Instance, cluster_config, start_all
from tests.e2e.test_cluster_ownership import wait_for
from tests.e2e.test_service import blocks


async def until(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def test_the_owner_controls_chargers_connected_to_another_instance(
        tmp_path: Path, pg_url: str, nats_server: NatsServer) -> None:
    config = cluster_config(2, chargers_per_site=2)
    a = Instance(tmp_path, "a", config, pg_url, nats_server.url)
    b = Instance(tmp_path, "b", config, pg_url, nats_server.url)
    chargers: list[SimulatedCharger] = []
    grid: GridOperatorSimulator | None = None
    try:
        await asyncio.to_thread(start_all, [a, b])
        await asyncio.to_thread(wait_for, lambda: (a.controlled() == {"s0"} and b.controlled() == {"s1"})
                                or (a.controlled() == {"s1"} and b.controlled() == {"s0"}), 40, "one site each")
        owner, other = (a, b) if "s0" in (a.controlled() or ()) else (b, a)
        now = datetime.now(UTC)
        chargers = [SimulatedCharger(f"CP0-{j}", inst.ocpp_url, car=SimCar(
            arrival=now, departure=now + timedelta(hours=8), energy_wh=60000), meter_interval_s=0.5, tick_s=0.05)
            for j, inst in enumerate((owner, other))]
        for c in chargers:
            c.start()
        grid = GridOperatorSimulator(fp_url=f"{other.url}/oscp/fp/2.0", fp_token="oscp-token")
        await grid.start()
        assert await grid.send_forecast("s0", blocks(13.8)) == 204  # 20 A per phase, sent to the non-owner

        def held() -> list[float]:
            t = datetime.now(UTC)
            return [c.limit_now(t) or 0.0 for c in chargers if c.transaction_id]

        await until(lambda: len(held()) == 2 and min(held()) >= 6 and sum(held()) >= 18, 30,
                    "both chargers charging by the forecast")
        assert sum(held()) <= 20 + 1e-6, held()
        remote = chargers[1]
        assert any(p["result"] == "Accepted" and p["at"] > now for p in remote.profile_log)
        assert await grid.send_forecast("s0", blocks(6.9)) == 204  # 10 A per phase
        changed = time.monotonic()
        await until(lambda: sum(held()) <= 10 + 1e-6, 5, "the lower forecast on both chargers")
        reaction_s = time.monotonic() - changed
        assert reaction_s <= 5, reaction_s
        # From the chargers' own record: once the decrease was in, nothing above the new capacity.
        decreased = datetime.now(UTC)
        await asyncio.sleep(2.0)
        for k in range(200):
            t = decreased + timedelta(seconds=k * 0.01)
            assert sum(c.held_limit_at(t) or 0.0 for c in chargers) <= 10 + 1e-6, t
        stats = other.get("/healthz")["cluster"]
        assert stats["events_out"] > 0 and stats["commands_in"] > 0
        assert owner.get("/healthz")["cluster"]["events_in"] > 0
        # Both instances show the owner's sessions; the owner also knows where each is connected.
        expected = [(c.charger_id, c.transaction_id) for c in chargers]
        for inst in (owner, other):
            await asyncio.to_thread(wait_for, lambda i=inst: [
                (c["id"], c["transaction_id"]) for c in i.get("/api/v1/sites/s0")["chargers"]] == expected,
                10, f"{inst.instance_id}'s view of s0")
            assert inst.get("/api/v1/sites/s0")["owner"] == owner.instance_id
        assert all(c["connected"] for c in owner.get("/api/v1/sites/s0")["chargers"])
    finally:
        for c in chargers:
            await c.stop()
        if grid is not None:
            await grid.stop()
        for inst in (a, b):
            if inst.proc is not None and inst.proc.poll() is None:
                await asyncio.to_thread(inst.stop)
