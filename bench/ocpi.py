"""OCPI ChargingProfiles: PUTs per second on one process, and PUT -> the charger holding the cap.

The real service (`balancer serve`) runs as its own process with N chargers and an `ocpi`
section; N simulated chargers (OCPP 1.6J and 2.0.1, all in a transaction) and one simulated
SCSP (`adapters.ocpi.simulator.OcpiParty`, which also receives the ChargingProfileResult
callbacks) run in this process. The SCSP registers (token A -> B -> C), then:

1. throughput: `--procs` load processes with `--workers` concurrent clients each PUT caps
   (random session, 6-32 A) for `--seconds`; every PUT is validated, persisted with its callback
   (one SQLite transaction), applied to the controller (a changed cap is pushed to the charger)
   and answered. Reported: PUTs/s answered ACCEPTED, the service's CPU time per PUT (psutil),
   and how many callbacks the SCSP received by the end. The load processes only send (the SCSP,
   the callback receiver, runs in this process), so the client side is not the limit as long as
   the machine has a core for them;
2. latency: `--rounds` times, a cap of 8 A on a charger holding >= 16 A, timed from sending
   the PUT until the simulated charger holds <= 8 A (polled every 2 ms), then DELETE and wait
   for the limit to come back. Reported: median and p95.

Run: .venv/bin/python bench/ocpi.py [--chargers 10] [--seconds 10] [--procs 2] [--workers 16] [--rounds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapters.ocpi.simulator import OcpiParty
from adapters.ocpp.simulator import SimCar, SimulatedCharger
from bench.common import machine

TOKEN_A = "bench-token-a"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def config(n: int, tmp: Path, http_port: int, ocpp_port: int) -> dict[str, Any]:
    return {
        "sites": [{"id": "bench", "voltage_v": 230, "grid_limit_a": 32 * n, "fallback_kw": 32 * n * 3 * 0.23,
                   "chargers": [{"id": f"CP{i}", "max_current_a": 32} for i in range(n)]}],
        "http": {"host": "127.0.0.1", "port": http_port},
        "ocpp": {"host": "127.0.0.1", "port": ocpp_port},
        "control": {"interval_s": 1.0},
        "ocpi": {"country_code": "NL", "party_id": "EVB", "token_a": TOKEN_A, "rate_limit_per_s": 1e6},
        "state_dir": str(tmp / "state"),
    }


async def wait_for(predicate: Any, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            return False
        await asyncio.sleep(0.002)
    return True


async def run(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-ocpi-"))
    http_port, ocpp_port = free_port(), free_port()
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(config(args.chargers, tmp, http_port, ocpp_port)))
    log = open(tmp / "service.log", "wb")  # noqa: SIM115 - kept open for the process
    proc = subprocess.Popen([sys.executable, "-m", "adapters.cli", "serve", "--config", str(path)],
                            stdout=log, stderr=log, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    party = await OcpiParty().start()
    now = datetime.now(UTC)
    sims = [SimulatedCharger(f"CP{i}", f"ws://127.0.0.1:{ocpp_port}/ocpp",
                             protocol="ocpp1.6" if i % 2 == 0 else "ocpp2.0.1",
                             car=SimCar(arrival=now, departure=now + timedelta(hours=8), energy_wh=60000),
                             meter_interval_s=5.0, tick_s=0.05) for i in range(args.chargers)]
    try:
        base = f"http://127.0.0.1:{http_port}"
        for _ in range(200):
            try:
                status, _ = await party.register(f"{base}/ocpi/versions", TOKEN_A)
                if status == 200:
                    break
            except OSError:
                await asyncio.sleep(0.1)
        for sim in sims:
            sim.start()
        sessions: dict[str, str] = {}
        while len(sessions) < args.chargers:
            sessions = {s["evse_uid"]: s["id"] for s in await party.sessions() if s["status"] == "ACTIVE"}
            await asyncio.sleep(0.2)
        by_id = {sim.charger_id: sim for sim in sims}
        ok = await wait_for(lambda: all((s.limit_now(datetime.now(UTC)) or 0) >= 16 for s in sims), 30)
        assert ok, "chargers never reached 16 A"
        service = psutil.Process(proc.pid)

        # 1. throughput
        ids = list(sessions.values())
        counts = {"ACCEPTED": 0, "other": 0}
        start_at = time.time() + 8.0  # every loader has started (imported) by then: they all begin at once
        job = json.dumps({"url": party.cpo_endpoints["chargingprofiles:RECEIVER"], "token": party.token_c,
                          "sessions": ids, "results": f"{party.base}/results/", "workers": args.workers,
                          "seconds": args.seconds, "start_at": start_at})
        loaders = [await asyncio.create_subprocess_exec(sys.executable, __file__, "--load", job,
                                                        stdout=asyncio.subprocess.PIPE) for _ in range(args.procs)]
        await asyncio.sleep(max(0.0, start_at - time.time()))
        cpu0 = service.cpu_times()
        elapsed = 0.0
        for out in await asyncio.gather(*(p.communicate() for p in loaders)):
            got = json.loads(out[0])
            counts["ACCEPTED"] += got["ACCEPTED"]
            counts["other"] += got["other"]
            elapsed = max(elapsed, got["seconds"])
        cpu1 = service.cpu_times()
        cpu_s = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
        await wait_for(lambda: len(party.results) >= counts["ACCEPTED"], 30)
        throughput = {"procs": args.procs, "workers": args.workers, "seconds": round(elapsed, 2), "accepted": counts["ACCEPTED"],
                      "other": counts["other"], "puts_per_s": round(counts["ACCEPTED"] / elapsed, 1),
                      "service_cpu_ms_per_put": round(1000 * cpu_s / max(counts["ACCEPTED"], 1), 3),
                      "service_cpu_share": round(cpu_s / elapsed, 2),
                      "callbacks_received": len(party.results)}

        # Clear every cap, let the limits come back.
        for sid in ids:
            await party.delete_profile(sid)
        await wait_for(lambda: all((s.limit_now(datetime.now(UTC)) or 0) >= 16 for s in sims), 30)

        # 2. PUT -> held
        latencies = []
        for k in range(args.rounds):
            cid = f"CP{k % args.chargers}"
            sim = by_id[cid]
            await wait_for(lambda sim=sim: (sim.limit_now(datetime.now(UTC)) or 0) >= 16, 30)
            t0 = time.monotonic()
            await party.put_profile(sessions[cid], 8.0)
            if await wait_for(lambda sim=sim: (sim.limit_now(datetime.now(UTC)) or 99) <= 8.0, 10):
                latencies.append(time.monotonic() - t0)
            await party.delete_profile(sessions[cid])
        latencies.sort()
        latency = {"rounds": args.rounds, "held": len(latencies),
                   "median_ms": round(1000 * statistics.median(latencies), 1) if latencies else None,
                   "p95_ms": round(1000 * latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))], 1)
                   if latencies else None,
                   "max_ms": round(1000 * latencies[-1], 1) if latencies else None}
        return {"bench": "ocpi", "machine": machine(), "at": datetime.now(UTC).isoformat(timespec="seconds"),
                "chargers": args.chargers, "throughput": throughput, "put_to_held": latency}
    finally:
        for sim in sims:
            await sim.stop()
        await party.stop()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


async def load(job: dict[str, Any]) -> dict[str, float]:
    """A load process: PUT caps for ``seconds`` with ``workers`` concurrent clients; counts answers."""
    import aiohttp

    from adapters.ocpi.messages import encode_token

    counts: dict[str, float] = {"ACCEPTED": 0, "other": 0}
    base = job["url"].rstrip("/")
    async with aiohttp.ClientSession(headers={"Authorization": encode_token(job["token"])}) as http:

        async def worker(stop_at: float) -> None:
            rng = random.Random()
            n = 0
            while time.monotonic() < stop_at:
                n += 1
                body = {"charging_profile": {"charging_rate_unit": "A", "charging_profile_period": [
                    {"start_period": 0, "limit": float(rng.randint(6, 32))}]},
                    "response_url": f"{job['results']}{os.getpid()}-{id(rng)}-{n}"}
                async with http.put(f"{base}/{rng.choice(job['sessions'])}", json=body) as response:
                    answer = await response.json()
                ok = response.status == 200 and answer.get("data", {}).get("result") == "ACCEPTED"
                counts["ACCEPTED" if ok else "other"] += 1

        await asyncio.sleep(max(0.0, job["start_at"] - time.time()))
        t0 = time.monotonic()
        await asyncio.gather(*(worker(t0 + job["seconds"]) for _ in range(job["workers"])))
        counts["seconds"] = time.monotonic() - t0
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chargers", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--load", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load:
        print(json.dumps(asyncio.run(load(json.loads(args.load)))))
        return
    print(json.dumps(asyncio.run(run(args)), indent=2))


if __name__ == "__main__":
    main()
