"""OCPP fan-out: 1,000 simulated chargers against one server process.

Measures the server's CPU and RSS while every charger sends MeterValues every 10 s, and the
fan-out time of a new limit to all chargers (``OcppServer.apply`` on 1,000 schedules: from the
decision to the last CALLRESULT, timed inside the server process). In the same run, a bare aiohttp
websocket server sends the same SetChargingProfile frames to bare clients that answer at once,
without the ``ocpp`` package: the transport's floor.

Churn (issue 11 item 6): ``--churn SECONDS`` instead measures how many SetChargingProfile calls
each charger gets per hour in a steady state where every decision (one a second) moves each
charger's limit by up to 0.3 A around its own level (steps of 0.1 A, as the measured draws and
the headroom make them move) with the slot an hour ahead at half of it: what the deadband
(1 A, the default) is there to absorb.
Run: .venv/bin/python bench/ocpp_fanout.py [N] [--churn SECONDS]
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import resource
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _raise_nofile() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))


def ocpp_server(conn: Any, n: int) -> None:
    _raise_nofile()
    from adapters.ocpp.server import OcppServer
    from balancer.config import parse_config
    from balancer.control import slot_floor
    from balancer.events import ChargerSchedule

    config = parse_config({"sites": [{"id": "s", "grid_limit_a": 100000, "fallback_kw": 1000, "chargers": [
        {"id": f"CP{i + 1:04d}", "max_current_a": 32} for i in range(n)]}],
        "ocpp": {"host": "127.0.0.1", "port": 0, "response_timeout_s": 30, "rate_limit_per_s": 1000}})

    async def main() -> None:
        server = OcppServer(config, on_event=lambda e: None)
        await server.start()
        conn.send(server.port)
        loop = asyncio.get_running_loop()
        while True:
            command = await loop.run_in_executor(None, conn.recv)
            if command == "stop":
                break
            if str(command).startswith("churn:"):
                conn.send(await churn(server, float(str(command).split(":")[1])))
                continue
            limit = float(command)
            now = datetime.now(UTC)
            # The slot an hour ahead starts on a slot boundary, as the controller's do: a decision
            # that lowers both is then a pure decrease (with "now + 1 h" the minutes between the old
            # and the new decision's hour would be an increase, and go in a second phase).
            ahead = slot_floor(now) + timedelta(hours=1)
            schedules = [ChargerSchedule(cid, now, limit, ((now, limit), (ahead, limit / 2)),
                                         6.0, transaction_id=link.transaction_id)
                         for cid, link in server.links.items()]
            ready = sum(1 for link in server.links.values() if link.pusher.ready and link.transaction_id)
            started = time.perf_counter()
            await server.apply(schedules)
            conn.send({"seconds": time.perf_counter() - started, "chargers_with_session": ready,
                       "pushes": server.counters["pushes"], "failures": server.counters["push_failures"]})
        await server.stop()

    asyncio.run(main())


async def churn(server: Any, seconds: float, interval_s: float = 1.0) -> dict[str, Any]:
    """Decisions every ``interval_s`` jittering each limit by up to 0.3 A; pushes per charger per hour."""
    import random

    from balancer.control import slot_floor
    from balancer.events import ChargerSchedule

    rng = random.Random(7)
    links = [link for link in server.links.values() if link.pusher.ready and link.transaction_id]
    base = {link.charger_id: 10.0 + k % 7 for k, link in enumerate(links)}
    decisions, pushes0 = 0, server.counters["pushes"]
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        tick = time.perf_counter()
        now = datetime.now(UTC)
        ahead = slot_floor(now) + timedelta(hours=1)
        schedules = []
        for link in links:
            limit = round(base[link.charger_id] + rng.choice((-3, -2, -1, 0, 1, 2, 3)) / 10, 1)
            schedules.append(ChargerSchedule(link.charger_id, now, limit, ((now, limit), (ahead, round(limit / 2, 1))),
                                             6.0, transaction_id=link.transaction_id))
        await server.apply(schedules)
        decisions += 1
        await asyncio.sleep(max(0.0, interval_s - (time.perf_counter() - tick)))
    elapsed = time.perf_counter() - started
    pushes = server.counters["pushes"] - pushes0
    return {"chargers": len(links), "seconds": round(elapsed, 1), "decisions": decisions, "pushes": pushes,
            "pushes_per_charger_per_hour": round(pushes / max(len(links), 1) / elapsed * 3600, 1)}


def bare_server(conn: Any, n: int) -> None:
    _raise_nofile()
    from aiohttp import WSMsgType, web

    sockets: list[web.WebSocketResponse] = []
    waiting: dict[str, asyncio.Future[None]] = {}

    async def handle(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(protocols=("ocpp1.6",))
        await ws.prepare(request)
        sockets.append(ws)
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                frame = json.loads(msg.data)
                future = waiting.pop(frame[1], None)
                if future is not None and not future.done():
                    future.set_result(None)
        return ws

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/ocpp/{cid}", handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=4096)
        await site.start()
        conn.send(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
        loop = asyncio.get_running_loop()
        while (command := await loop.run_in_executor(None, conn.recv)) != "stop":
            started = time.perf_counter()
            futures = []
            for k, ws in enumerate(sockets):
                uid = f"{command}-{k}"
                waiting[uid] = loop.create_future()
                futures.append(waiting[uid])
                await ws.send_str(json.dumps([2, uid, "SetChargingProfile", {"connectorId": 1, "csChargingProfiles": {
                    "chargingProfileId": 2, "stackLevel": 1, "chargingProfilePurpose": "TxProfile",
                    "chargingProfileKind": "Absolute", "transactionId": 1, "chargingSchedule": {
                        "startSchedule": "2026-03-01T00:00:00Z", "chargingRateUnit": "A",
                        "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 10.0}]}}}]))
            await asyncio.gather(*futures)
            conn.send({"seconds": time.perf_counter() - started, "sockets": len(sockets)})
        await runner.cleanup()

    asyncio.run(main())


async def bare_clients(port: int, n: int) -> list[Any]:
    import aiohttp

    session = aiohttp.ClientSession()

    async def client(i: int) -> None:
        async with session.ws_connect(f"http://127.0.0.1:{port}/ocpp/B{i}", protocols=("ocpp1.6",)) as ws:
            async for msg in ws:
                frame = json.loads(msg.data)
                await ws.send_str(json.dumps([3, frame[1], {"status": "Accepted"}]))

    tasks = [asyncio.create_task(client(i)) for i in range(n)]
    return [session, tasks]


def measure(pid: int, seconds: float) -> dict[str, float]:
    import psutil

    proc = psutil.Process(pid)
    proc.cpu_percent(None)
    time.sleep(seconds)
    return {"cpu_percent": round(proc.cpu_percent(None), 1), "rss_mb": round(proc.memory_info().rss / 2**20, 1)}


async def run(n: int, churn_s: float = 0.0) -> dict[str, Any]:
    from adapters.ocpp.simulator import SimCar, SimulatedCharger

    out: dict[str, Any] = {"chargers": n}
    parent, child = multiprocessing.Pipe()
    proc = multiprocessing.Process(target=ocpp_server, args=(child, n), daemon=True)
    proc.start()
    port = parent.recv()
    now = datetime.now(UTC)
    url = f"ws://127.0.0.1:{port}/ocpp"
    sims = [SimulatedCharger(f"CP{i + 1:04d}", url, protocol="ocpp1.6" if i % 2 else "ocpp2.0.1",
                             car=SimCar(arrival=now, departure=now + timedelta(hours=2), energy_wh=1e6),
                             meter_interval_s=10.0, tick_s=1.0) for i in range(n)]
    for k, sim in enumerate(sims):
        sim.start()
        if k % 50 == 49:
            await asyncio.sleep(0.2)
    deadline = time.monotonic() + 180
    while sum(1 for s in sims if s.transaction_id) < n and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
    out["sessions_started"] = sum(1 for s in sims if s.transaction_id)
    loop = asyncio.get_running_loop()
    if churn_s:
        parent.send("16")  # everyone holds a limit first
        await loop.run_in_executor(None, parent.recv)
        parent.send(f"churn:{churn_s}")
        out["churn"] = await loop.run_in_executor(None, parent.recv)
        parent.send("stop")
        for sim in sims:
            await sim.stop()
        proc.join(10)
        return out
    out["server_meter_values_every_10s"] = await loop.run_in_executor(None, measure, proc.pid, 20.0)
    for label, limit in (("first_push", "16"), ("fan_out_decrease", "10")):
        parent.send(limit)
        out[label] = await loop.run_in_executor(None, parent.recv)
        out[label]["seconds"] = round(out[label]["seconds"], 3)
    parent.send("stop")
    for sim in sims:
        await sim.stop()
    proc.join(10)

    parent, child = multiprocessing.Pipe()
    proc = multiprocessing.Process(target=bare_server, args=(child, n), daemon=True)
    proc.start()
    port = parent.recv()
    session, tasks = await bare_clients(port, n)
    await asyncio.sleep(3)
    parent.send("a")
    await loop.run_in_executor(None, parent.recv)  # warm-up
    parent.send("b")
    floor = await loop.run_in_executor(None, parent.recv)
    out["bare_aiohttp_fan_out_s"] = round(floor["seconds"], 3)
    out["ocpp_over_bare"] = round(out["fan_out_decrease"]["seconds"] / max(floor["seconds"], 1e-9), 1)
    parent.send("stop")
    for task in tasks:
        task.cancel()
    await session.close()
    proc.join(10)
    return out


def main() -> None:
    from bench.common import machine

    _raise_nofile()
    args = sys.argv[1:]
    churn_s = 0.0
    if "--churn" in args:
        k = args.index("--churn")
        churn_s = float(args[k + 1])
        del args[k:k + 2]
    n = int(args[0]) if args else 1000
    result = asyncio.run(run(n, churn_s))
    print(json.dumps({"benchmark": "ocpp_fanout", "machine": machine(), **result}, indent=1))


if __name__ == "__main__":
    main()
