"""Chaos run: ``balancer serve`` as a real process against a fleet, a grid operator and faults.

What runs (issue 11 "Done when", issue 19 items 1, 2 and 8):

- ``balancer serve`` as its own process (started as the e2e tests start it), its state directory
  on a small real tmpfs when this runs as root (else the full-disk phase is skipped and says why);
- N simulated chargers (``adapters/ocpp/simulator.py``), OCPP 1.6J and 2.0.1 alternating, with
  cars arriving over the run (a quarter single-phase), some leaving, and a few misbehaving ones:
  ``ignores_profiles``, ``rejects_profiles`` and ``silent`` (never answers the CSMS's calls);
- a real OSCP grid operator (``adapters/oscp/simulator.py``) sending heartbeats and, every few
  seconds, a 24 h forecast whose level now dips and recovers;
- faults, at fixed fractions of the run: reconnect storms (up to 60 chargers drop their
  connection at once), kill -9 and SIGTERM restarts of serve, a silent grid operator (its
  ``offline_mode_at`` passes, so the fallback takes over), a full state disk for a while, and 20
  large forecasts of 800 blocks posted at once while ``/healthz`` is timed from another thread.

Everything safety-related is measured from the chargers' side: each simulated charger logs every
SetChargingProfile it accepted, in full, with its arrival time, every ClearChargingProfile, and its
sessions. After the run those logs are replayed: what each charger held (its composite limit while
a transaction runs; its real draw for chargers that ignore or reject profiles; its maximum with no
profile at all), summed per phase at every change (profile arrivals, schedule period boundaries,
session starts and stops: exact, not sampled), against the capacity in force, which is known from
what the grid operator sent and had answered 204 (forecast level, or the fallback once
``offline_mode_at`` has passed without a heartbeat; capped by the connection limit). A decrease
takes effect, for this account, when its POST was sent (or at ``offline_mode_at``).

Run: ``.venv/bin/python bench/chaos.py [--chargers 200] [--duration 600] [--seed 1] [--out FILE]``
Prints JSON (see ``bench/README.md``, "Chaos"). ``tests/e2e/test_chaos.py`` runs a short version.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import errno
import http.client
import itertools
import json
import os
import random
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapters.ocpp.simulator import Misbehaviour, ProfileStore, SimCar, SimulatedCharger
from adapters.oscp.simulator import GridOperatorSimulator
from forecast.book import GridOperatorLink
from tests.e2e.service import ServiceProcess

SITE = "chaos"
ADMIN_TOKEN = "chaos-admin-token"
OSCP_TOKEN = "chaos-oscp-token"
VOLTAGE_V = 230.0
WINDOW_S = 5.0
"""DESIGN 4: a change of capacity reaches every connected charger within 5 s."""
EPS_A = 0.05
"""Held sums within this of the capacity count as within it (limits are rounded to 0.1 A)."""


@dataclass
class Options:
    chargers: int = 200
    duration_s: float = 600.0
    seed: int = 1
    storm_size: int = 60
    forecast_every_s: tuple[float, float] = (3.0, 6.0)
    heartbeat_every_s: float = 5.0
    offline_after_heartbeats: float = 3.0
    """``offline_mode_at`` = heartbeat + this many intervals (spans a restart's missed heartbeat)."""
    large_forecasts: int = 20
    large_blocks: int = 800
    meter_interval_s: float = 10.0
    per_charger_base_a: float = 12.0
    per_charger_fallback_a: float = 5.0
    ignores: int = 2
    rejects: int = 2
    silent: int = 3
    tmpfs_size: str = "32m"
    silent_grid_s: float = 0.0
    """How long the grid operator stays silent (0: 6 % of the run, at least until the fallback
    has been in force 8 s)."""
    full_disk_s: float = 0.0
    """How long the state disk stays full (0: 5 % of the run, at least 8 s)."""


@dataclass
class Timeline:
    """What the grid operator had accepted, in order: the facts the capacity in force follows."""

    forecasts: list[tuple[float, float]] = field(default_factory=list)
    """(sent at, level now [A per phase]) of every forecast answered 204."""
    heartbeats: list[tuple[float, float]] = field(default_factory=list)
    """(sent at, offline_mode_at) of every heartbeat answered 204."""

    def capacity_steps(self, grid_a: float, fallback_a: float, end: float) -> list[tuple[float, float]]:
        """[(t, capacity from t)] replaying the service's own link rules (``GridOperatorLink``)."""
        events = sorted([(t, 0, v) for t, v in self.heartbeats] + [(t, 1, v) for t, v in self.forecasts])
        link = GridOperatorLink()
        level: float | None = None
        steps: list[tuple[float, float]] = []

        def cap(t: float) -> float:
            online = link.online(datetime.fromtimestamp(t, UTC))
            return min(grid_a, level if (online and level is not None) else fallback_a)

        def note(t: float) -> None:
            value = cap(t)
            if not steps or abs(steps[-1][1] - value) > 1e-9:
                steps.append((t, value))

        for k, (t, kind, value) in enumerate(events):
            if kind == 0:
                link.heartbeat(datetime.fromtimestamp(t, UTC), datetime.fromtimestamp(value, UTC))
            else:
                level = value
                link.forecast_received(datetime.fromtimestamp(t, UTC))
            note(t)
            nxt = events[k + 1][0] if k + 1 < len(events) else end
            if link.offline_mode_at is not None and t < link.offline_mode_at.timestamp() < nxt:
                note(link.offline_mode_at.timestamp())
        return steps


# ----------------------------------------------------------------------------- charger-side replay
def _ts(t: datetime) -> float:
    return t.timestamp()


def held_timeline(sim: SimulatedCharger, end: float) -> list[tuple[float, float]]:
    """[(t, A per phase the charger holds from t)]: replayed from its own logs."""
    m = sim.misbehaviour
    if m.ignores_profiles or m.rejects_profiles or m.silent:
        # Holds nothing of ours it follows, and draws what it likes: what it holds is what it draws.
        return [(_ts(t), a) for t, a in sim.draw_log]
    phases = sim.car.phases if sim.car else 3
    events: list[tuple[float, int, Any]] = []
    for a in sim.accepted_log:
        events.append((_ts(a.at), 0, a))
    for at, purpose, pid in sim.clear_log:
        events.append((_ts(at), 1, (purpose, pid)))
    for rec in sim.session_log:
        events.append((_ts(rec.started_at), 2, None))
        if rec.stopped_at is not None:
            events.append((_ts(rec.stopped_at), 3, None))
    events.sort(key=lambda e: (e[0], e[1]))
    points = {e[0] for e in events}
    for a in sim.accepted_log:  # where a held schedule moves to its next period
        schedule = a.profile["charging_schedule"]
        schedule = schedule[0] if isinstance(schedule, list) else schedule
        if not schedule.get("start_schedule"):
            continue
        s0 = datetime.fromisoformat(schedule["start_schedule"].replace("Z", "+00:00")).timestamp()
        ends = [s0 + p["start_period"] for p in schedule["charging_schedule_period"]]
        if schedule.get("duration") is not None:
            ends.append(s0 + schedule["duration"])
        points.update(x for x in ends if _ts(a.at) < x < end)
    store = ProfileStore()
    has_tx = False
    out: list[tuple[float, float]] = []
    k = 0
    for p in sorted(points):
        while k < len(events) and events[k][0] <= p:
            _, kind, item = events[k]
            if kind == 0:
                store.install(item.evse, item.profile)
            elif kind == 1:
                store.clear(*item)
            elif kind == 2:
                has_tx = True
            else:
                has_tx = False
                store.drop_tx()
            k += 1
        value = 0.0
        if has_tx:
            limit = store.limit_at(datetime.fromtimestamp(p, UTC), 1, True, phases)
            value = sim.max_current_a if limit is None else min(limit, sim.max_current_a)
        if not out or out[-1][1] != value:
            out.append((p, value))
    return out


def held_vs_capacity(sims: list[SimulatedCharger], steps: list[tuple[float, float]], start: float,
                     end: float, obedient_only: bool = False) -> dict[str, Any]:
    """Excess of the per-phase sum of what the chargers hold over the capacity in force.

    ``obedient_only``: leave out the chargers that ignore, reject or never answer profiles, so
    what remains is the service's own pushes (an increase sent before a decrease shows here),
    not a draw it could only learn from meter values."""
    decreases = [t for (t, v), (_, before) in zip(steps[1:], steps, strict=False) if v < before - 1e-9]
    changes: list[tuple[float, int, float]] = []
    for i, sim in enumerate(sims):
        m = sim.misbehaviour
        if obedient_only and (m.ignores_profiles or m.rejects_profiles or m.silent):
            continue
        changes.extend((t, i, v) for t, v in held_timeline(sim, end))
    marks = sorted({t for t, _ in steps} | set(decreases) | {d + WINDOW_S for d in decreases} | {start, end})
    changes.sort()
    mask = [min(s.car.phases, 3) if s.car else 3 for s in sims]
    held = [0.0] * len(sims)
    phase = [0.0, 0.0, 0.0]
    cap_t = [t for t, _ in steps]
    times = sorted({t for t, _, _ in changes if start <= t <= end} | {m for m in marks if start <= m <= end})
    k = 0
    # Apply everything before the start.
    while k < len(changes) and changes[k][0] < start:
        _, i, v = changes[k]
        for p in range(mask[i]):
            phase[p] += v - held[i]
        held[i] = v
        k += 1
    series: list[tuple[float, float, float]] = []  # (t, excess, capacity)
    peak_phase: list[float] = []  # the most loaded phase's sum at each t
    for t in times:
        while k < len(changes) and changes[k][0] <= t:
            _, i, v = changes[k]
            for p in range(mask[i]):
                phase[p] += v - held[i]
            held[i] = v
            k += 1
        j = bisect.bisect_right(cap_t, t) - 1
        cap = steps[j][1] if j >= 0 else float("inf")
        series.append((t, max(phase) - cap, cap))
        peak_phase.append(max(phase))
    inside = {"a_s": 0.0, "peak_a": 0.0, "seconds": 0.0}
    outside = {"a_s": 0.0, "peak_a": 0.0, "seconds": 0.0}
    episodes: list[dict[str, float]] = []
    for (t, excess, cap), (t2, _, _) in itertools.pairwise(series):
        if excess <= EPS_A:
            continue
        j = bisect.bisect_right(decreases, t) - 1
        bucket = inside if j >= 0 and t < decreases[j] + WINDOW_S else outside
        bucket["a_s"] += excess * (t2 - t)
        bucket["seconds"] += t2 - t
        bucket["peak_a"] = max(bucket["peak_a"], excess)
        if bucket is outside:
            if episodes and abs(episodes[-1]["until_s"] - (t - start)) < 0.002:
                episodes[-1]["until_s"] = round(t2 - start, 3)
                episodes[-1]["peak_a"] = max(episodes[-1]["peak_a"], round(excess, 1))
            else:
                episodes.append({"from_s": round(t - start, 3), "until_s": round(t2 - start, 3),
                                 "peak_a": round(excess, 1), "capacity_a": round(cap, 1)})
    # A decrease is reached when the most loaded phase's sum first fits its new capacity. One that
    # a rise of capacity overtook within 5 s, before it was reached, is "superseded" (not counted);
    # one overtaken later than that, before it was reached, counts as never reached.
    reached: list[dict[str, Any]] = []
    superseded = 0
    ts = [t for t, _, _ in series]
    for d in decreases:
        if not start <= d <= end:
            continue
        c = bisect.bisect_right(cap_t, d) - 1
        target = steps[c][1]
        rise = next((t for t, v in steps[c + 1:] if v > target + 1e-9), None)
        j = bisect.bisect_left(ts, d)
        at = next((ts[m] for m in range(j, len(ts)) if peak_phase[m] <= target + EPS_A), None)
        if at is None and rise is not None and rise < d + WINDOW_S:
            superseded += 1
            continue
        if at is not None and rise is not None and rise < at and rise < d + WINDOW_S:
            superseded += 1
            continue
        reached.append({"at_s": round(d - start, 2), "from_a": round(steps[c - 1][1], 1), "to_a": round(target, 1),
                        "reached_s": None if at is None else round(at - d, 3)})
    late = [r for r in reached if r["reached_s"] is None or r["reached_s"] > WINDOW_S]
    worst = max((r["reached_s"] if r["reached_s"] is not None else float("inf") for r in reached), default=0.0)
    for bucket in (inside, outside):
        for key in bucket:
            bucket[key] = round(bucket[key], 2)
    episodes.sort(key=lambda e: -e["peak_a"])
    return {"outside_5s_after_decrease": outside, "within_5s_after_decrease": inside,
            "worst_episodes_outside": episodes[:8],
            "decreases": {"total": len(reached), "reached_within_5s": len(reached) - len(late),
                          "superseded_within_5s": superseded,
                          "worst_s": None if worst == float("inf") else round(worst, 3),
                          "never_reached": sum(1 for r in reached if r["reached_s"] is None),
                          "late": sorted(late, key=lambda r: -(r["reached_s"] or 1e9))[:10]}}


# ----------------------------------------------------------------------------- helpers
def mount_tmpfs(path: Path, size: str) -> str | None:
    """Mount a real tmpfs at ``path``; None on success, else why not."""
    path.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
                            capture_output=True, text=True, check=False)
    return None if result.returncode == 0 else f"cannot mount a tmpfs (needs root): {result.stderr.strip()}"


def fill(path: Path) -> None:
    """Write ``path`` until its file system answers ENOSPC."""
    with open(path, "wb", buffering=0) as f:
        for chunk in (1 << 16, 1 << 12, 1):
            try:
                while True:
                    f.write(b"\0" * chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise


class HealthProbe:
    """``GET /healthz`` in a loop from a thread of its own (not the fleet's event loop): its
    latency is how long the service's event loop was busy elsewhere."""

    def __init__(self, port: int, every_s: float = 0.01) -> None:
        self.port = port
        self.every_s = every_s
        self.latencies: list[float] = []
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> HealthProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def _run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        while not self._stop.is_set():
            started = time.perf_counter()
            try:
                conn.request("GET", "/healthz")
                conn.getresponse().read()
                self.latencies.append(time.perf_counter() - started)
            except (OSError, http.client.HTTPException):
                self.errors += 1
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            self._stop.wait(self.every_s)
        conn.close()


def _iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def forecast_blocks(level_a: float, now: datetime, dip_ahead_a: float) -> list[dict[str, Any]]:
    """24 h of quarter-hour blocks: ``level_a`` now and next, a dip 45-75 minutes ahead."""
    epoch = int(now.timestamp())
    start = datetime.fromtimestamp(epoch - epoch % 900, UTC)
    out = []
    for k in range(96):
        capacity = dip_ahead_a if k in (3, 4) else level_a
        out.append({"capacity": round(capacity, 1), "phase": "ALL", "unit": "A",
                    "start_time": _iso(start + timedelta(minutes=15 * k)),
                    "end_time": _iso(start + timedelta(minutes=15 * (k + 1)))})
    return out


def large_forecast(level_a: float, now: datetime, n_blocks: int, k: int) -> dict[str, Any]:
    """``n_blocks`` consecutive blocks over 24 h from the current quarter hour, at ``level_a`` (so the
    capacity in force does not change: this phase measures the event loop, not the chargers)."""
    epoch = int(now.timestamp())
    start = datetime.fromtimestamp(epoch - epoch % 900, UTC)
    step = timedelta(seconds=24 * 3600 / n_blocks)
    blocks = [{"capacity": round(level_a + (0.1 * ((i + k) % 3) if i >= 100 else 0.0), 1), "phase": "ALL",
               "unit": "A", "start_time": _iso(start + i * step), "end_time": _iso(start + (i + 1) * step)}
              for i in range(n_blocks)]
    return {"group_id": SITE, "type": "CONSUMPTION", "forecasted_blocks": blocks}


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _cmdline(p: psutil.Process) -> str:
    try:
        return " ".join(p.cmdline())[:100]
    except psutil.Error:
        return "?"


# ----------------------------------------------------------------------------- the run
class Chaos:
    def __init__(self, opts: Options, workdir: Path, tmpfs_ready: bool | None = None) -> None:
        self.opts = opts
        self.workdir = workdir
        self.rng = random.Random(opts.seed)
        n = opts.chargers
        self.grid_a = 16.0 * n
        self.base_a = opts.per_charger_base_a * n
        self.fallback_a = opts.per_charger_fallback_a * n
        fallback_kw = round(self.fallback_a * 3 * VOLTAGE_V / 1000.0, 3)
        self.fallback_a = fallback_kw * 1000.0 / (3 * VOLTAGE_V)
        self.ids = [f"CP{i + 1:03d}" for i in range(n)]
        config = {"sites": [{"id": SITE, "voltage_v": VOLTAGE_V, "grid_limit_a": self.grid_a, "fallback_kw": fallback_kw,
                             "chargers": [{"id": cid, "max_current_a": 32} for cid in self.ids]}],
                  "http": {"admin_token": ADMIN_TOKEN}, "oscp": {"token": OSCP_TOKEN},
                  "ocpp": {"rate_limit_per_s": 200}}
        self.service = ServiceProcess(workdir, config)
        self.state_dir = workdir / "state"
        self.tmpfs_problem: str | None = None
        self.mounted = False
        if tmpfs_ready is None:
            self.tmpfs_problem = mount_tmpfs(self.state_dir, opts.tmpfs_size)
            self.mounted = self.tmpfs_problem is None
        elif not tmpfs_ready:
            self.tmpfs_problem = "no tmpfs for the state directory"
        self.timeline = Timeline()
        self.grid = GridOperatorSimulator(fp_url=f"{self.service.url}/oscp/fp/2.0", fp_token=OSCP_TOKEN)
        self.grid_lock = asyncio.Lock()
        self.grid_silent = False
        self.level_a = self.base_a
        self.sims: list[SimulatedCharger] = []
        self.report: dict[str, Any] = {"kills": [], "sigterms": [], "storms": []}
        self.t0 = 0.0
        self.forecast_statuses: dict[str, int] = {}
        self.kill_windows: list[float] = []
        self.background: list[asyncio.Task[None]] = []
        self.live_at_end: dict[str, float | None] = {}

    # ----------------------------------------------------------------- fleet
    def schedule(self) -> list[tuple[float, str]]:
        d = self.opts.duration_s
        return [(0.10 * d, "storm"), (0.20 * d, "kill9"), (0.30 * d, "silent_grid"), (0.46 * d, "sigterm"),
                (0.54 * d, "full_disk"), (0.64 * d, "storm"), (0.70 * d, "kill9"), (0.78 * d, "large_forecasts"),
                (0.86 * d, "storm")]

    def _arrival_offset(self, lo: float, hi: float) -> float:
        """A moment in [lo, hi) s of the run not within 3 s of a kill (a session started in the
        last moments before a crash is what the state's age may lose: measured, not mixed in)."""
        for _ in range(100):
            x = self.rng.uniform(lo, hi)
            if all(abs(x - k) > 3.0 for k in self.kill_windows):
                return x
        return lo

    def build_fleet(self, start: datetime) -> None:
        o = self.opts
        n = o.chargers
        self.kill_windows = [t for t, what in self.schedule() if what in ("kill9", "sigterm")]
        odd = list(range(n))
        self.rng.shuffle(odd)
        kinds: dict[int, str] = {}
        for kind, count in (("ignores", o.ignores), ("rejects", o.rejects), ("silent", o.silent)):
            for _ in range(count):
                kinds[odd.pop()] = kind
        for i, cid in enumerate(self.ids):
            kind = kinds.get(i)
            mis = Misbehaviour(ignores_profiles=kind == "ignores", rejects_profiles=kind == "rejects",
                               silent=kind == "silent")
            if kind is not None or self.rng.random() < 0.7:  # the misbehaving ones charge from the start
                arrive = self._arrival_offset(0.0, 0.08 * o.duration_s)
            else:
                arrive = self._arrival_offset(0.08 * o.duration_s, 0.85 * o.duration_s)
            leave = 10 * o.duration_s
            if self.rng.random() < 0.2 and kind is None:
                leave = self._arrival_offset(arrive + 0.15 * o.duration_s, arrive + 0.5 * o.duration_s)
            phases = 1 if self.rng.random() < 0.25 and kind is None else 3
            # Misbehaving chargers' cars take 32 A on three phases: their draw must be reserved.
            car_max = 32.0 if kind is not None else self.rng.choice([16.0, 32.0])
            car = SimCar(arrival=start + timedelta(seconds=arrive), departure=start + timedelta(seconds=leave),
                         energy_wh=1e7, max_current_a=car_max, phases=phases)
            self.sims.append(SimulatedCharger(cid, self.service.ocpp_url, protocol="ocpp1.6" if i % 2 == 0 else "ocpp2.0.1",
                                              car=car, meter_interval_s=o.meter_interval_s, tick_s=0.2,
                                              misbehaviour=mis, seed=o.seed + i))

    def at(self) -> float:
        return round(time.time() - self.t0, 2)

    # ----------------------------------------------------------------- grid operator
    async def _post(self, kind: str, coro: Any) -> int:
        try:
            status = int(await asyncio.wait_for(coro, 30))
        except (aiohttp.ClientError, OSError, TimeoutError):
            status = 0
        key = f"{kind}:{status}"
        self.forecast_statuses[key] = self.forecast_statuses.get(key, 0) + 1
        return status

    async def send_forecast(self, level: float) -> int:
        async with self.grid_lock:
            sent = time.time()
            status = await self._post("forecast", self.grid.send_forecast(
                SITE, forecast_blocks(level, datetime.now(UTC), level * 0.7)))
            if status == 204:
                self.timeline.forecasts.append((sent, level))
            return status

    async def send_heartbeat(self) -> int:
        async with self.grid_lock:
            sent = time.time()
            offline_at = datetime.now(UTC) + timedelta(
                seconds=self.opts.offline_after_heartbeats * self.opts.heartbeat_every_s)
            status = await self._post("heartbeat", self.grid.heartbeat(offline_at))
            if status == 204:
                self.timeline.heartbeats.append((sent, offline_at.timestamp()))
            return status

    async def grid_operator(self, stop: asyncio.Event) -> None:
        """Heartbeats, and every few seconds a forecast whose level now dips or recovers."""
        next_hb = 0.0
        next_fc = time.monotonic() + self.rng.uniform(*self.opts.forecast_every_s)
        k = 0
        while not stop.is_set():
            now = time.monotonic()
            if not self.grid_silent and now >= next_hb:
                next_hb = now + self.opts.heartbeat_every_s
                await self.send_heartbeat()
            if not self.grid_silent and now >= next_fc:
                next_fc = now + self.rng.uniform(*self.opts.forecast_every_s)
                k += 1
                # Base, a dip, a deeper dip, back to base: every dip lasts two posts or more.
                self.level_a = self.base_a * (1.0, self.rng.uniform(0.7, 0.85), self.rng.uniform(0.55, 0.7))[k % 3]
                await self.send_forecast(self.level_a)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.1)

    # ----------------------------------------------------------------- faults
    async def health(self) -> dict[str, Any]:
        status, body = await asyncio.to_thread(self.service.request, "GET", "/healthz")
        return dict(body) if status == 200 and isinstance(body, dict) else {"status": f"http {status}"}

    async def sessions_known(self) -> dict[str, str | None]:
        status, body = await asyncio.to_thread(self.service.request, "GET", f"/api/v1/sites/{SITE}", None,
                                               {"Authorization": f"Bearer {ADMIN_TOKEN}"})
        if status != 200:
            return {}
        return {c["id"]: c.get("transaction_id") for c in body["chargers"]}

    async def restart(self, how: str) -> None:
        """kill -9 or SIGTERM serve, start it again; what the chargers ran vs what it knows after."""
        assert self.service.proc is not None
        async with self.grid_lock:
            entry: dict[str, Any] = {"at_s": self.at()}
            health = await self.health()
            entry["state_age_s"] = health.get("state_age_seconds")
            entry["health_before"] = health.get("status")
            children = psutil.Process(self.service.proc.pid).children(recursive=True)
            running = {s.charger_id: s.transaction_id for s in self.sims if s.transaction_id is not None}
            started = time.monotonic()
            if how == "kill9":
                self.service.proc.kill()
                entry["exit_code"] = await asyncio.to_thread(self.service.proc.wait, 10)
                gone_by = time.monotonic() + 3.0
                while any(_alive(p) for p in children) and time.monotonic() < gone_by:
                    await asyncio.sleep(0.1)
                orphans = [p for p in children if _alive(p)]
                entry["children_before"] = len(children)
                entry["orphans_3s_after"] = len(orphans)
                entry["orphans_cmdlines"] = [_cmdline(p) for p in orphans]
                for p in orphans:  # what a leaky version leaves behind
                    with contextlib.suppress(psutil.Error):
                        p.kill()
            else:
                entry["exit_code"] = await asyncio.to_thread(self.service.stop)
            await asyncio.to_thread(self.service.start)
            entry["down_s"] = round(time.monotonic() - started, 2)
            known = await self.sessions_known()
        running = {cid: tx for cid, tx in running.items()
                   if next(s for s in self.sims if s.charger_id == cid).transaction_id == tx}
        entry["sessions_running"] = len(running)
        entry["sessions_known_after_restart"] = sum(1 for cid, tx in running.items() if known.get(cid) == tx)
        entry["missing"] = sorted(cid for cid, tx in running.items() if known.get(cid) != tx)[:20]
        entry["silent_chargers_present"] = sum(1 for s in self.sims if s.misbehaviour.silent)
        self.report["kills" if how == "kill9" else "sigterms"].append(entry)

        async def later() -> None:  # after the chargers reconnected and reported
            await asyncio.sleep(10.0)
            for _ in range(100):  # serve may be restarting for another fault just then
                with contextlib.suppress(OSError):
                    known = await self.sessions_known()
                    if known:
                        still = {s.charger_id: s.transaction_id for s in self.sims if s.transaction_id is not None}
                        entry["sessions_running_10s_after"] = len(still)
                        entry["sessions_known_10s_after"] = sum(1 for cid, tx in still.items()
                                                                if known.get(cid) == tx)
                        return
                await asyncio.sleep(0.2)

        self.background.append(asyncio.create_task(later()))

    async def storm(self) -> None:
        connected = [s for s in self.sims if s.connected.is_set()]
        size = min(self.opts.storm_size, len(connected))
        chosen = self.rng.sample(connected, size)
        entry: dict[str, Any] = {"at_s": self.at(), "chargers": size}
        started = time.monotonic()
        dropped = await asyncio.gather(*(s.drop_connection() for s in chosen))
        entry["dropped"] = sum(1 for d in dropped if d)
        await asyncio.sleep(0.05)
        deadline = time.monotonic() + 60
        while not all(s.connected.is_set() for s in chosen) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        entry["all_reconnected_s"] = round(time.monotonic() - started, 2)
        entry["still_disconnected"] = sum(1 for s in chosen if not s.connected.is_set())
        self.report["storms"].append(entry)

    async def silent_grid(self) -> None:
        span = self.opts.silent_grid_s or max(
            0.06 * self.opts.duration_s, self.opts.offline_after_heartbeats * self.opts.heartbeat_every_s + 8)
        entry: dict[str, Any] = {"from_s": self.at()}
        self.grid_silent = True
        last = self.timeline.heartbeats[-1][1] if self.timeline.heartbeats else None
        entry["offline_mode_at_s"] = None if last is None else round(last - self.t0, 2)
        await asyncio.sleep(span)
        site = await asyncio.to_thread(self.service.request, "GET", f"/api/v1/sites/{SITE}", None,
                                       {"Authorization": f"Bearer {ADMIN_TOKEN}"})
        entry["capacity_source_at_end"] = site[1].get("capacity_source") if site[0] == 200 else None
        self.grid_silent = False
        await self.send_heartbeat()
        await self.send_forecast(self.level_a)
        entry["until_s"] = self.at()
        self.report["silent_grid_operator"] = entry

    async def full_disk(self) -> None:
        if self.tmpfs_problem is not None:
            self.report["full_disk"] = {"skipped": self.tmpfs_problem}
            return
        span = self.opts.full_disk_s or max(0.05 * self.opts.duration_s, 8.0)
        entry: dict[str, Any] = {"from_s": self.at()}
        filler = self.state_dir / "chaos-filler"
        before = dict(self.forecast_statuses)
        await asyncio.to_thread(fill, filler)
        statuses = set()
        end = time.monotonic() + span
        while time.monotonic() < end:
            statuses.add((await self.health()).get("status"))
            await asyncio.sleep(0.5)
        filler.unlink()
        entry["until_s"] = self.at()
        entry["healthz_status_seen"] = sorted(str(s) for s in statuses)
        entry["grid_posts_answered"] = {k: v - before.get(k, 0) for k, v in self.forecast_statuses.items()
                                        if v - before.get(k, 0)}
        await asyncio.sleep(2.0)
        entry["healthz_2s_after"] = (await self.health()).get("status")
        self.report["full_disk"] = entry

    async def large_forecasts(self) -> None:
        o = self.opts
        entry: dict[str, Any] = {"at_s": self.at(), "forecasts": o.large_forecasts, "blocks": o.large_blocks}
        with HealthProbe(self.service.http_port) as idle:
            await asyncio.sleep(2.0)
        async with self.grid_lock:
            level = self.level_a
            bodies = [json.dumps(large_forecast(level, datetime.now(UTC), o.large_blocks, k))
                      for k in range(o.large_forecasts)]
            entry["body_bytes"] = len(bodies[0])
            url = f"{self.service.url}/oscp/fp/2.0/update_group_capacity_forecast"
            headers = {"Authorization": f"Token {OSCP_TOKEN}", "Content-Type": "application/json"}

            async def post(session: aiohttp.ClientSession, body: str) -> tuple[int, float]:
                started = time.perf_counter()
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    return response.status, time.perf_counter() - started

            with HealthProbe(self.service.http_port) as busy:
                await asyncio.sleep(0.2)
                sent = time.time()
                async with aiohttp.ClientSession() as session:
                    results = await asyncio.gather(*(post(session, b) for b in bodies), return_exceptions=True)
                await asyncio.sleep(0.5)
            ok = [r for r in results if isinstance(r, tuple)]
            if any(s == 204 for s, _ in ok):
                self.timeline.forecasts.append((sent, level))
        entry["statuses"] = sorted({str(r[0]) if isinstance(r, tuple) else type(r).__name__ for r in results})
        entry["post_max_s"] = round(max((t for _, t in ok), default=0.0), 3)
        entry["healthz_worst_s"] = round(max(busy.latencies, default=0.0), 4)
        entry["healthz_probes"] = len(busy.latencies)
        entry["healthz_idle_worst_s"] = round(max(idle.latencies, default=0.0), 4)
        self.report["large_forecasts"] = entry

    # ----------------------------------------------------------------- main
    async def run(self) -> dict[str, Any]:
        o = self.opts
        self.t0 = time.time()
        await asyncio.to_thread(self.service.start)
        await self.grid.start()
        stop = asyncio.Event()
        try:
            await self.send_heartbeat()
            self.level_a = self.base_a
            await self.send_forecast(self.level_a)
            self.build_fleet(datetime.fromtimestamp(self.t0, UTC))
            for k, sim in enumerate(self.sims):
                sim.start()
                if k % 20 == 19:
                    await asyncio.sleep(0.05)
            grid_task = asyncio.create_task(self.grid_operator(stop))
            for when, what in self.schedule():
                delay = self.t0 + when - time.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                if what == "storm":
                    await self.storm()
                elif what in ("kill9", "sigterm"):
                    await self.restart(what)
                elif what == "silent_grid":
                    await self.silent_grid()
                elif what == "full_disk":
                    await self.full_disk()
                elif what == "large_forecasts":
                    await self.large_forecasts()
            # At least two decrease windows after the last fault, so what it left is measured.
            await asyncio.sleep(max(self.t0 + o.duration_s - time.time(), 2 * WINDOW_S))
            await asyncio.gather(*self.background, return_exceptions=True)
            end = time.time()
            # What each charger holds now, read live, to check the replay of its logs against.
            self.live_at_end = {s.charger_id: s.limit_now(datetime.fromtimestamp(end, UTC)) for s in self.sims}
            stop.set()
            await grid_task
            final_health = await self.health()
        finally:
            stop.set()
            await asyncio.gather(*(s.stop() for s in self.sims), return_exceptions=True)
            await self.grid.stop()
            if self.service.proc is not None and self.service.proc.poll() is None:
                await asyncio.to_thread(self.service.stop)
            if self.mounted:
                subprocess.run(["umount", "-l", str(self.state_dir)], check=False)
        return self.summarise(end, final_health)

    def dump(self) -> dict[str, Any]:
        """The chargers' logs and the grid operator's timeline, for a closer look (``--dump``)."""
        return {"t0": self.t0, "forecasts": self.timeline.forecasts, "heartbeats": self.timeline.heartbeats,
                "chargers": {s.charger_id: {
                    "protocol": s.protocol, "misbehaviour": asdict(s.misbehaviour),
                    "car_phases": s.car.phases if s.car else 3,
                    "accepted": [(a.at.timestamp(), a.evse, a.profile) for a in s.accepted_log],
                    "cleared": [(t.timestamp(), p, i) for t, p, i in s.clear_log],
                    "sessions": [(r.transaction_id, r.started_at.timestamp(),
                                  r.stopped_at.timestamp() if r.stopped_at else None) for r in s.session_log],
                    "draw": [(t.timestamp(), a) for t, a in s.draw_log],
                    "profile_log": s.profile_log} for s in self.sims}}

    def summarise(self, end: float, final_health: dict[str, Any]) -> dict[str, Any]:
        steps = self.timeline.capacity_steps(self.grid_a, self.fallback_a, end)
        safety = held_vs_capacity(self.sims, steps, self.t0, end)
        own = held_vs_capacity(self.sims, steps, self.t0, end, obedient_only=True)
        kinds = {"ignores_profiles": sum(1 for s in self.sims if s.misbehaviour.ignores_profiles),
                 "rejects_profiles": sum(1 for s in self.sims if s.misbehaviour.rejects_profiles),
                 "silent": sum(1 for s in self.sims if s.misbehaviour.silent)}
        hours = (end - self.t0) / 3600.0
        accepted = sum(len(s.accepted_log) for s in self.sims)
        sessions = sum(len(s.session_log) for s in self.sims)
        levels = [v for _, v in steps]
        # Sessions of obedient chargers that began before the charger held any profile of ours
        # (it may draw its maximum until the first one arrives).
        bare = [round(rec.started_at.timestamp() - self.t0, 2) for sim in self.sims for rec in sim.session_log
                if not (sim.misbehaviour.silent or sim.misbehaviour.rejects_profiles)
                and not any(a.at <= rec.started_at for a in sim.accepted_log)]
        mismatches = []
        for sim in self.sims:
            if sim.misbehaviour.ignores_profiles or sim.misbehaviour.rejects_profiles or sim.misbehaviour.silent:
                continue
            live = self.live_at_end.get(sim.charger_id)
            in_tx = any(r.started_at.timestamp() <= end and (r.stopped_at is None or end < r.stopped_at.timestamp())
                        for r in sim.session_log)
            expected = 0.0 if not in_tx else (sim.max_current_a if live is None else min(live, sim.max_current_a))
            replayed = [v for t, v in held_timeline(sim, end) if t <= end]
            if abs((replayed[-1] if replayed else 0.0) - expected) > 1e-6:
                mismatches.append(sim.charger_id)
        silent = self.report.get("silent_grid_operator")
        if silent and silent.get("offline_mode_at_s") is not None:
            # When the fallback reached the chargers: the decrease at offline_mode_at.
            at = silent["offline_mode_at_s"]
            match = [d for d in safety["decreases"]["late"] if abs(d["at_s"] - at) < 0.5]
            silent["fallback_decrease_late"] = match or None
        return {
            "benchmark": "chaos",
            "options": {k: v for k, v in asdict(self.opts).items()},
            "duration_s": round(end - self.t0, 1),
            "chargers": {"total": len(self.sims),
                         "ocpp1.6": sum(1 for s in self.sims if s.protocol == "ocpp1.6"),
                         "ocpp2.0.1": sum(1 for s in self.sims if s.protocol == "ocpp2.0.1"),
                         "single_phase_cars": sum(1 for s in self.sims if s.car and s.car.phases == 1), **kinds},
            "capacity": {"grid_limit_a": self.grid_a, "fallback_a": round(self.fallback_a, 1),
                         "changes": len(steps), "min_a": round(min(levels), 1) if levels else None,
                         "max_a": round(max(levels), 1) if levels else None},
            "held_above_capacity": {"outside_5s_after_decrease": safety["outside_5s_after_decrease"],
                                    "within_5s_after_decrease": safety["within_5s_after_decrease"],
                                    "worst_episodes_outside": safety["worst_episodes_outside"],
                                    "obedient_chargers_only": {
                                        "outside_5s_after_decrease": own["outside_5s_after_decrease"],
                                        "within_5s_after_decrease": own["within_5s_after_decrease"],
                                        "worst_episodes_outside": own["worst_episodes_outside"][:4],
                                        "decreases_reached_within_5s": [own["decreases"]["reached_within_5s"],
                                                                        own["decreases"]["total"]]}},
            "decreases": safety["decreases"],
            "kills": self.report["kills"],
            "sigterms": self.report["sigterms"],
            "storms": self.report["storms"],
            "silent_grid_operator": silent,
            "full_disk": self.report.get("full_disk"),
            "large_forecasts": self.report.get("large_forecasts"),
            "grid_posts": dict(sorted(self.forecast_statuses.items())),
            "sessions_started_before_any_profile": {"count": len(bare), "at_s": sorted(bare)[:10]},
            "profiles_accepted": accepted,
            "profiles_accepted_per_charger_hour": round(accepted / max(len(self.sims), 1) / max(hours, 1e-9), 1),
            "profiles_rejected": sum(s.rejected_calls for s in self.sims),
            "sessions_seen": sessions,
            "replay_check": {"chargers_checked": len(self.sims) - sum(kinds.values()),
                             "replayed_differs_from_live_at_end": mismatches[:10]},
            "final_health": {k: final_health.get(k) for k in ("status", "reasons", "state_age_seconds")},
        }


async def run_chaos(opts: Options, workdir: Path, tmpfs_ready: bool | None = None,
                    dump: Path | None = None) -> dict[str, Any]:
    chaos = Chaos(opts, workdir, tmpfs_ready)
    result = await chaos.run()
    if dump is not None:
        dump.write_text(json.dumps(chaos.dump(), default=str))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chargers", type=int, default=200)
    parser.add_argument("--duration", type=float, default=600.0, help="seconds")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--storm", type=int, default=60, help="chargers per reconnect storm")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (service log, state)")
    parser.add_argument("--dump", type=Path, help="write the chargers' logs (accepted profiles, sessions) here")
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    from bench.common import machine

    workdir = Path(tempfile.mkdtemp(prefix="bench-chaos-"))
    opts = Options(chargers=args.chargers, duration_s=args.duration, seed=args.seed, storm_size=args.storm)
    result = asyncio.run(run_chaos(opts, workdir, dump=args.dump))
    result["machine"] = machine()
    result["workdir"] = str(workdir) if args.keep else None
    text = json.dumps(result, indent=1)
    if args.out:
        args.out.write_text(text)
    if not args.keep:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    print(text)
    signal.signal(signal.SIGINT, signal.SIG_DFL)


if __name__ == "__main__":
    main()
