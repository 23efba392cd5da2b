"""Local controller mode: what the balancer adds in front of a CSMS, at N chargers (default 1,000).

The balancer (``OcppServer`` with ``ocpp.upstream``) runs in its own process; a bare CSMS (aiohttp,
answers at once, no schema checks: the transport's floor) and N bare chargers (aiohttp websocket
clients) run in this one. Figures, all in the same run:

- added latency of a forwarded CALL: Heartbeat round trips charger -> balancer -> CSMS and back,
  p50/p99, against the same chargers connected straight to the same CSMS; every charger sends one
  Heartbeat per ``period_s`` (N / period_s calls per second in both cases);
- memory per proxied charger: the balancer process's RSS growth per connected charger (its
  charger connection, the ``ocpp`` ChargePoint, the relay and its websocket to the CSMS);
- queue replay rate: with the CSMS down, ``queue_chargers`` chargers each send ``queue_depth``
  MeterValues (answered by the balancer, queued on disk); then the CSMS comes back and the time
  until every queue is delivered gives calls per second (each charger's queue goes out one call
  at a time, in order; the chargers' queues in parallel).

Run: .venv/bin/python bench/upstream.py [N] — prints JSON.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import resource
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine


def _raise_nofile() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def balancer_process(conn: Any, n: int, csms_port: int, state_dir: str) -> None:
    _raise_nofile()
    from adapters.ocpp.server import OcppServer
    from balancer.config import parse_config

    config = parse_config({
        "sites": [{"id": "s", "grid_limit_a": 10000, "fallback_kw": 20,
                   "chargers": [{"id": f"CP{i}", "max_current_a": 16} for i in range(n)]}],
        "ocpp": {"host": "127.0.0.1", "port": 0, "rate_limit_per_s": 1000,
                 "upstream": {"url": f"ws://127.0.0.1:{csms_port}/ocpp", "answer_timeout_s": 10,
                              "reconnect_max_s": 2}},
        "state_dir": state_dir,
    })

    async def main() -> None:
        server = OcppServer(config, on_event=lambda event: None)
        await server.start()
        conn.send(server.port)
        while True:
            await asyncio.sleep(0.2)
            if conn.poll():
                request = conn.recv()
                if request == "stop":
                    await server.stop()
                    return
                if request == "queued":
                    assert server.upstream is not None
                    conn.send(server.upstream.queue.size())

    asyncio.run(main())


class BareCsms:
    """Answers every CALL at once; can go down and come back on the same port."""

    def __init__(self) -> None:
        self.port = 0
        self.runner: web.AppRunner | None = None
        self.sockets: set[web.WebSocketResponse] = set()
        self.calls = 0

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/ocpp/{cid}", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", self.port, backlog=4096)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        for ws in list(self.sockets):
            await ws.close()
        if self.runner is not None:
            await self.runner.cleanup()

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(protocols=("ocpp1.6",), max_msg_size=0)
        await ws.prepare(request)
        self.sockets.add(ws)
        async for msg in ws:
            frame = json.loads(msg.data)
            if frame[0] == 2:
                self.calls += 1
                answer: dict[str, Any] = {}
                if frame[2] == "Heartbeat":
                    answer = {"currentTime": _now()}
                elif frame[2] == "BootNotification":
                    answer = {"currentTime": _now(), "interval": 300, "status": "Accepted"}
                await ws.send_str(json.dumps([3, frame[1], answer]))
        self.sockets.discard(ws)
        return ws


class BareCharger:
    """A websocket client sending its own calls and answering the balancer's."""

    def __init__(self, session: aiohttp.ClientSession, url: str, cid: str) -> None:
        self.session, self.url, self.cid = session, url, cid
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.waiting: dict[str, asyncio.Future[float]] = {}
        self.ids = 0
        self.reader: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        self.ws = await self.session.ws_connect(f"{self.url}/{self.cid}", protocols=("ocpp1.6",), max_msg_size=0)
        self.reader = asyncio.get_running_loop().create_task(self.read())

    async def read(self) -> None:
        assert self.ws is not None
        async for msg in self.ws:
            frame = json.loads(msg.data)
            if frame[0] == 2:
                answer: dict[str, Any] = {} if frame[2] == "GetConfiguration" else {"status": "Accepted"}
                await self.ws.send_str(json.dumps([3, frame[1], answer]))
            else:
                future = self.waiting.pop(frame[1], None)
                if future is not None and not future.done():
                    future.set_result(time.perf_counter())

    async def call(self, action: str, payload: dict[str, Any]) -> float:
        """Round trip [s]."""
        assert self.ws is not None
        self.ids += 1
        uid = f"{self.cid}-{self.ids}"
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.waiting[uid] = future
        started = time.perf_counter()
        await self.ws.send_str(json.dumps([2, uid, action, payload]))
        return await asyncio.wait_for(future, 30) - started

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self.reader is not None:
            self.reader.cancel()


async def connect_all(session: aiohttp.ClientSession, url: str, n: int, prefix: str = "CP") -> list[BareCharger]:
    chargers = [BareCharger(session, url, f"{prefix}{i}") for i in range(n)]
    for i in range(0, n, 50):
        await asyncio.gather(*(c.connect() for c in chargers[i:i + 50]))
    return chargers


async def heartbeat_rounds(chargers: list[BareCharger], period_s: float, rounds: int) -> list[float]:
    """Each charger sends one Heartbeat per period, spread evenly: N / period calls per second."""
    rtts: list[float] = []
    gap = period_s / len(chargers)

    async def one(c: BareCharger, delay: float) -> None:
        await asyncio.sleep(delay)
        rtts.append(await c.call("Heartbeat", {}))

    for _ in range(rounds):
        await asyncio.gather(*(one(c, i * gap) for i, c in enumerate(chargers)))
    return rtts


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def rss_kib(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):  # noqa: SIM115
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def main(n: int, period_s: float = 5.0, rounds: int = 3, queue_chargers: int = 100,
               queue_depth: int = 50) -> dict[str, Any]:
    _raise_nofile()
    csms = BareCsms()
    await csms.start()
    parent, child = multiprocessing.Pipe()
    state_dir = tempfile.mkdtemp(prefix="bench-upstream-")
    proc = multiprocessing.get_context("spawn").Process(target=balancer_process,
                                                        args=(child, n, csms.port, state_dir))
    proc.start()
    port = parent.recv()
    balancer_url = f"ws://127.0.0.1:{port}/ocpp"
    await asyncio.sleep(1.0)
    rss_before = rss_kib(proc.pid)
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    try:
        proxied = await connect_all(session, balancer_url, n)
        # Boot, so the balancer reads capabilities (as with a real charger) before measuring.
        await asyncio.gather(*(c.call("BootNotification", {"chargePointVendor": "b", "chargePointModel": "m"})
                               for c in proxied))
        await asyncio.sleep(3.0)
        rss_after = rss_kib(proc.pid)
        direct = await connect_all(session, f"ws://127.0.0.1:{csms.port}/ocpp", n, prefix="D")
        await heartbeat_rounds(proxied[: max(1, n // 10)], 1.0, 1)  # warm-up
        via_balancer = await heartbeat_rounds(proxied, period_s, rounds)
        straight = await heartbeat_rounds(direct, period_s, rounds)
        for c in direct:
            await c.close()

        # Queue replay: the CSMS goes away; some chargers send MeterValues, answered and queued.
        await csms.stop()
        await asyncio.sleep(1.0)
        meter = {"connectorId": 1, "meterValue": [{"timestamp": _now(), "sampledValue": [{"value": "1000"}]}]}
        queued_from = proxied[:queue_chargers]
        local = []
        for _ in range(queue_depth):
            local += await asyncio.gather(*(c.call("MeterValues", meter) for c in queued_from))
        parent.send("queued")
        queued = parent.recv()
        await csms.start()
        started = time.perf_counter()
        while True:
            await asyncio.sleep(0.1)
            parent.send("queued")
            left = parent.recv()
            if left == 0 or time.perf_counter() - started > 300:
                break
        replay_s = time.perf_counter() - started
        for c in proxied:
            await c.close()
    finally:
        await session.close()
        parent.send("stop")
        proc.join(30)
        await csms.stop()
    return {
        "bench": "upstream", "machine": machine(), "chargers": n, "calls_per_s": round(n / period_s, 1),
        "samples": len(via_balancer),
        "forwarded_call_ms": {"p50": round(statistics.median(via_balancer) * 1e3, 2),
                              "p99": round(pct(via_balancer, 0.99) * 1e3, 2)},
        "direct_call_ms": {"p50": round(statistics.median(straight) * 1e3, 2),
                           "p99": round(pct(straight, 0.99) * 1e3, 2)},
        "added_ms": {"p50": round((statistics.median(via_balancer) - statistics.median(straight)) * 1e3, 2),
                     "p99": round((pct(via_balancer, 0.99) - pct(straight, 0.99)) * 1e3, 2)},
        "balancer_rss_kib_per_proxied_charger": round((rss_after - rss_before) / n, 1),
        "offline_local_answer_ms_p50_all_at_once": round(statistics.median(local) * 1e3, 2),
        "queue": {"chargers": queue_chargers, "calls": queued, "replay_s": round(replay_s, 2),
                  "calls_per_s": round(queued / replay_s, 1) if replay_s else None},
    }


if __name__ == "__main__":
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    print(json.dumps(asyncio.run(main(count)), indent=1))
