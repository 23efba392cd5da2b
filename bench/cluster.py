"""Cluster mode on this machine: what a charger costs an instance, PostgreSQL and NATS, and how fast
a forecast reaches the last charger, with 1 and with 3 instances (same run, same fleet).

For each instance count: PostgreSQL (initdb in a temp dir), nats-server, the instances and
HAProxy in front; a fleet of simulated chargers (every car charging, meter values every
``--meter-s``) connects through HAProxy. After a settling time, a window of ``--window`` seconds
measures the CPU of the instances (the cost per charger is what they use above their own
cost with no charger, measured first), of PostgreSQL and of nats-server (psutil), PostgreSQL commits
and row writes (``pg_stat_database``) and NATS messages (``/varz``). Then the grid operator lowers
every site's forecast (through HAProxy, so mostly at instances that do not own the site; one POST
after the other) and, from the chargers' side, the time from each site's POST until its chargers
hold no more than the new capacity (median, max) and from the first POST until the last site. Prints JSON. ``python bench/cluster.py [--sites 20] [--per-site 20]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapters.ocpp.simulator import SimCar, SimulatedCharger
from adapters.oscp.simulator import GridOperatorSimulator
from bench.common import machine
from tests.cluster_servers import HaProxy, NatsServer, PostgresServer
from tests.e2e.cluster import Instance, cluster_config
from tests.e2e.test_service import blocks

OLD_A_PER_CHARGER, NEW_A_PER_CHARGER = 10.0, 7.0


def kw(amps: float) -> float:
    return round(amps * 230 * 3 / 1000, 3)


async def send(grid: GridOperatorSimulator, site: str, amps: float) -> None:
    """As a grid operator does: again after a 503 (the instance could not store it, or HAProxy had
    no instance that answered its check in time)."""
    for _ in range(10):
        status = await grid.send_forecast(site, blocks(kw(amps)))
        if status == 204:
            return
        RETRIES[status] = RETRIES.get(status, 0) + 1
        await asyncio.sleep(0.5)
    raise RuntimeError(f"forecast for {site} refused: {status}")


RETRIES: dict[int, int] = {}


def cpu_s(procs: list[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def pg_procs(server: PostgresServer) -> list[psutil.Process]:
    pid = int((server.data / "postmaster.pid").read_text().split()[0])
    main = psutil.Process(pid)
    return [main, *main.children(recursive=True)]


def pg_counts(url: str) -> tuple[int, int]:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT xact_commit, tup_inserted + tup_updated + tup_deleted FROM pg_stat_database "
                           "WHERE datname = current_database()").fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def nats_msgs(server: NatsServer) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.monitor_port}/varz", timeout=5) as r:
        varz = json.loads(r.read())
    return int(varz["in_msgs"])


async def run(n_instances: int, n_sites: int, per_site: int, meter_s: float, window_s: float,
              tmp: Path) -> dict[str, Any]:
    pg = PostgresServer().start()
    nats = NatsServer().start()
    url = pg.database()
    config = cluster_config(n_sites, per_site)
    config["control"] = {"interval_s": 5.0}
    names = ["a", "b", "c"][:n_instances]
    instances = [Instance(tmp, name, config, url, nats.url) for name in names]
    proxy = HaProxy(tmp, [(i.instance_id, i.ocpp_port, i.http_port) for i in instances])
    chargers: list[SimulatedCharger] = []
    grid = None
    try:
        for inst in instances:
            inst.start()
        proxy.start()
        end = time.monotonic() + 60
        while sum(len(i.controlled() or ()) for i in instances) < n_sites:
            assert time.monotonic() < end, "sites not owned"
            await asyncio.sleep(0.5)
        inst_procs = [psutil.Process(i.proc.pid) for i in instances if i.proc is not None]
        idle0 = cpu_s(inst_procs)
        t_idle = time.monotonic()
        await asyncio.sleep(min(window_s, 20.0))  # the instances' own cost with no charger
        idle = (cpu_s(inst_procs) - idle0) / (time.monotonic() - t_idle)
        now = datetime.now(UTC)
        ws = f"ws://127.0.0.1:{proxy.ocpp_port}/ocpp"
        fleet = {f"s{i}": [SimulatedCharger(f"CP{i}-{j}", ws, car=SimCar(
            arrival=now, departure=now + timedelta(hours=8), energy_wh=200000), meter_interval_s=meter_s,
            tick_s=1.0, seed=i * 1000 + j, validate=False) for j in range(per_site)] for i in range(n_sites)}
        chargers = [c for group in fleet.values() for c in group]
        for c in chargers:
            c.start()
        grid = GridOperatorSimulator(fp_url=f"http://127.0.0.1:{proxy.http_port}/oscp/fp/2.0", fp_token="oscp-token")
        await grid.start()
        for site in fleet:
            await send(grid, site, OLD_A_PER_CHARGER * per_site)
        end = time.monotonic() + 180
        old_a = OLD_A_PER_CHARGER * per_site

        def charging() -> bool:
            t = datetime.now(UTC)
            return all(c.transaction_id for c in chargers) and all(
                sum(c.limit_now(t) or 0.0 for c in group) >= 0.8 * old_a for group in fleet.values())

        while not charging():
            if time.monotonic() > end:
                t = datetime.now(UTC)
                raise RuntimeError(f"fleet not charging: {sum(bool(c.transaction_id) for c in chargers)} sessions, "
                                   f"{[round(sum(c.limit_now(t) or 0.0 for c in g)) for g in fleet.values()]} A")
            await asyncio.sleep(0.5)
        await asyncio.sleep(10)  # settle: replans, snapshots

        pgp, natsp = pg_procs(pg), [psutil.Process(nats.proc.pid)] if nats.proc else []
        c0 = [cpu_s([p]) for p in inst_procs]
        pg0, n0, (x0, w0), m0 = cpu_s(pgp), cpu_s(natsp), pg_counts(url), nats_msgs(nats)
        t0 = time.monotonic()
        await asyncio.sleep(window_s)
        dt = time.monotonic() - t0
        c1 = [cpu_s([p]) for p in inst_procs]
        pg1, n1, (x1, w1), m1 = cpu_s(pgp), cpu_s(natsp), pg_counts(url), nats_msgs(nats)

        new_a = NEW_A_PER_CHARGER * per_site
        sent_at: dict[str, float] = {}
        within_at: dict[str, float] = {}

        async def watch() -> None:
            """When each site's chargers first hold no more than the new capacity (every 20 ms)."""
            while len(within_at) < len(fleet):
                t, now_m = datetime.now(UTC), time.monotonic()
                for site, group in fleet.items():
                    if site in sent_at and site not in within_at and \
                            sum(c.limit_now(t) or 0.0 for c in group) <= new_a + 1e-6:
                        within_at[site] = now_m
                await asyncio.sleep(0.02)

        watcher = asyncio.create_task(watch())
        posted = time.monotonic()
        for site in fleet:
            sent_at[site] = time.monotonic()
            await send(grid, site, new_a)
        last_post = time.monotonic() - posted
        await asyncio.wait_for(watcher, 60)
        reached = max(within_at.values()) - posted
        latencies = sorted(within_at[s] - sent_at[s] for s in fleet)

        n = len(chargers)
        inst_cpu = [(b - a) / dt for a, b in zip(c0, c1, strict=True)]
        per_charger = max(sum(inst_cpu) - idle, 0.0) / n  # cores per charger, above the idle cost
        return {
            "instances": n_instances, "sites": n_sites, "chargers": n, "meter_interval_s": meter_s,
            "window_s": round(dt, 1),
            "instance_cpu_pct": [round(100 * x, 1) for x in inst_cpu],
            "instances_idle_cpu_pct": round(100 * idle, 1),
            "instance_cpu_us_per_charger_s": round(per_charger * 1e6, 1),
            "chargers_per_instance_at_50pct_core": int((0.5 - idle / n_instances) / per_charger) if per_charger else None,
            "postgres_cpu_pct": round(100 * (pg1 - pg0) / dt, 1),
            "postgres_commits_per_s": round((x1 - x0) / dt, 1),
            "postgres_row_writes_per_s": round((w1 - w0) / dt, 1),
            "nats_cpu_pct": round(100 * (n1 - n0) / dt, 1),
            "nats_msgs_in_per_s": round((m1 - m0) / dt, 1),
            "nats_msgs_per_charger_s": round((m1 - m0) / dt / n, 3),
            "forecast_posts_s": round(last_post, 3),
            "forecast_first_post_to_last_charger_s": round(reached, 3),
            "forecast_post_to_site_held_s_median": round(latencies[len(latencies) // 2], 3),
            "forecast_post_to_site_held_s_max": round(latencies[-1], 3),
            "forecast_retries": dict(RETRIES),
        }
    finally:
        for c in chargers:
            await c.stop()
        if grid is not None:
            await grid.stop()
        for inst in instances:
            if inst.proc is not None and inst.proc.poll() is None:
                inst.stop()
        proxy.stop()
        nats.stop()
        pg.stop()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=20)
    parser.add_argument("--per-site", type=int, default=20)
    parser.add_argument("--meter-s", type=float, default=10.0)
    parser.add_argument("--window", type=float, default=40.0)
    args = parser.parse_args()
    results = []
    for n in (1, 3):
        with tempfile.TemporaryDirectory(prefix=f"bench-cluster-{n}-") as tmp:
            results.append(await run(n, args.sites, args.per_site, args.meter_s, args.window, Path(tmp)))
    print(json.dumps({"machine": machine(), "runs": results}, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
