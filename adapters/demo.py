"""``balancer demo``: the whole system on this machine, a day compressed into about a minute.

The real service (OCPP server, OSCP endpoint, planner, allocator, admin API) runs on loopback
with an accelerated clock; a simulated grid operator sends a 24 h forecast with a peak-hours dip
and heartbeats, then goes silent for 90 minutes in the night (fallback takes over) and comes back;
a simulated fleet of chargers (OCPP 1.6J and 2.0.1 mixed) has cars arriving in the evening and
leaving in the morning. A building shares the connection (a site meter on Modbus TCP, served by
``adapters.meter.simulator``, with a noon peak of 40 A). Over OCPI 2.2.1 a simulated driver's app
(eMSP) sets the first car's departure and energy need (a car without ISO 15118), and a
smart-charging service provider (SCSP) caps the third car's session at 10 A. An office car on an
OCPP 2.1 charger with ``allow_discharge`` (an ISO 15118-20 V2G car, here from noon to 17:30)
carries the building's peak when, at 13:00, the building alone would exceed a midday dip of the
grid operator's forecast (DESIGN 3.9): it discharges just enough, then charges back what it
gave before it leaves. The demo checks the
physics from the chargers' side: what the simulated cars really draw plus the building's load is
compared with the capacity in force, every sample.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import sys
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from adapters.app import Service
from adapters.clock import AcceleratedClock
from adapters.config_file import load_config
from adapters.meter.simulator import MeterSimulator, noon_peak_profile
from adapters.ocpi.simulator import OcpiParty
from adapters.ocpp.dialects.v21 import V21
from adapters.ocpp.simulator import Fleet, Misbehaviour, SimCar, SimulatedCharger
from adapters.oscp.endpoint import BASE_PATH
from adapters.oscp.simulator import GridOperatorSimulator, day_profile_blocks
from balancer.config import parse_config
from balancer.model import Config

__all__ = ["DemoResult", "demo_config", "run_demo", "run_demo_async"]

DAY_S = 86400.0
GRACE_WALL_S = 2.0
"""After the capacity changes, the chargers get this long (wall clock) to follow before a draw
above it counts as a violation (DESIGN 4 allows 5 s; at 1,440x a wall second is 24 sim minutes)."""


OCPI_TOKEN_A = {"app": "demo-ocpi-app-token-a", "scsp": "demo-ocpi-scsp-token-a"}
OCPI_CAP_A = 10.0
V2G_ID = "V2G01"
V2G_DISCHARGE_A = 16.0
NOON_DIP_KW = 20.0
"""The grid operator's capacity from 12:00 to 14:30 (a midday congestion): 29 A per phase, less
than the building's 40 A peak at 13:00."""


def demo_config(n_chargers: int, state_dir: str, influx: dict[str, Any] | None = None,
                meter_port: int | None = None) -> Config:
    """A depot: 100 A connection, two 63 A feeders, ``n_chargers`` 3-phase 32 A chargers and one
    V2G charger (``V2G_ID``, ``allow_discharge``); with ``meter_port`` a site meter (SunSpec over
    Modbus TCP on loopback) at the connection."""
    chargers: list[dict[str, Any]] = [
        {"id": f"CP{i + 1:03d}", "circuit": "feeder-a" if i % 2 == 0 else "feeder-b",
         "max_current_a": 32, "min_current_a": 6, "priority": 2 if i % 5 == 0 else 1} for i in range(n_chargers)]
    chargers.append({"id": V2G_ID, "circuit": "feeder-b", "max_current_a": 32, "min_current_a": 6,
                     "allow_discharge": True, "max_discharge_current_a": V2G_DISCHARGE_A})
    data: dict[str, Any] = {
        "sites": [{"id": "demo-depot", "voltage_v": 230, "grid_limit_a": 100, "fallback_kw": 22,
                   "circuits": [{"id": "feeder-a", "max_current_a": 63}, {"id": "feeder-b", "max_current_a": 63}],
                   "chargers": chargers}],
        "ocpp": {"host": "127.0.0.1", "port": 0, "heartbeat_interval_s": 300},
        "http": {"host": "127.0.0.1", "port": 0},
        "oscp": {"token": "demo-oscp-token"},
        "ocpi": {"country_code": "NL", "party_id": "DEM", "token_a": [OCPI_TOKEN_A["app"], OCPI_TOKEN_A["scsp"]]},
        "control": {"interval_s": 0.25, "planner_budget_s": 2.0},
        "state_dir": state_dir,
    }
    if influx:
        data["influxdb"] = influx
    if meter_port is not None:
        # The clock runs 1,440x: staleness in simulated seconds, polling in wall seconds; the
        # building's load changes slowly, frozen-value detection would see it as frozen.
        data["sites"][0]["meter"] = {"source": "modbus", "host": "127.0.0.1", "port": meter_port, "map": "sunspec",
                                     "poll_s": 0.05, "stale_after_s": 900, "frozen_after_s": 0,
                                     "fallback_base_load_a": [40, 40, 40], "margin_a": 1}
    return parse_config(data)


@dataclass
class DemoResult:
    """What the demo measured."""

    samples: list[dict[str, Any]] = field(default_factory=list)
    violations: int = 0
    worst_overshoot_a: float = 0.0
    limit_violations: int = 0
    requested_wh: dict[str, float] = field(default_factory=dict)
    delivered_wh: dict[str, float] = field(default_factory=dict)
    pauses: dict[str, int] = field(default_factory=dict)
    """Per car, how often its limit paused it while it still wanted current (issue 17 item 5)."""
    pushes: int = 0
    push_failures: int = 0
    fallback_samples: int = 0
    ocpi: dict[str, Any] = field(default_factory=dict)
    """What the OCPI parties did: preferences answer, cap answer, highest limit held under the cap."""
    v2g: dict[str, float] = field(default_factory=dict)
    """The V2G car: the worst deficit it faced (building + margin over capacity) [A], its largest
    discharge [A], energy given back [kWh], and its need and net energy at departure [kWh]."""


async def _ocpi_parties(base_url: str, fleet: Fleet, stop: asyncio.Event, result: DemoResult) -> None:
    """The driver's app sets CP001's needs once its session runs; the SCSP caps CP003 at 10 A."""
    app = await OcpiParty(party_id="APP", role="EMSP").start()
    scsp = await OcpiParty(party_id="SCS", role="SCSP").start()
    try:
        await app.register(f"{base_url}/ocpi/versions", OCPI_TOKEN_A["app"])
        await scsp.register(f"{base_url}/ocpi/versions", OCPI_TOKEN_A["scsp"])
        targets = {c.charger_id: c for c in fleet.chargers[:3]}
        todo = {"CP001", "CP003"} & set(targets)
        while todo and not stop.is_set():
            await asyncio.sleep(0.2)
            for session in await app.sessions():
                cid = session["evse_uid"]
                if cid not in todo or session["status"] != "ACTIVE":
                    continue
                car = targets[cid].car
                if cid == "CP001" and car is not None:
                    _, body = await app.put_preferences(session["id"], departure=car.departure,
                                                        energy_kwh=round(car.energy_wh / 1000, 1))
                    result.ocpi["CP001 charging_preferences"] = body.get("data")
                if cid == "CP003":
                    _, body, _ = await scsp.put_profile(session["id"], OCPI_CAP_A)
                    result.ocpi["CP003 cap"] = body.get("data", {}).get("result")
                    result.ocpi["CP003 cap_session"] = session["id"]
                todo.discard(cid)
        await stop.wait()
    finally:
        await app.stop()
        await scsp.stop()


async def _grid_operator(cp: GridOperatorSimulator, clock: AcceleratedClock, start: datetime, stop: asyncio.Event,
                         heartbeat_sim_s: float = 600.0) -> None:
    await cp.register()
    await cp.handshake(int(heartbeat_sim_s))
    day = start.replace(hour=0, minute=0, second=0, microsecond=0)
    await cp.send_forecast("demo-depot", day_profile_blocks(day, base_kw=60, dip_kw=25, hours=48))
    noon, until = day + timedelta(hours=12), day + timedelta(hours=14.5)
    await cp.send_forecast("demo-depot", [{"capacity": NOON_DIP_KW, "phase": "ALL", "unit": "KW",
                                           "start_time": noon.isoformat().replace("+00:00", "Z"),
                                           "end_time": until.isoformat().replace("+00:00", "Z")}])
    await cp.send_forecast("demo-depot", [{"capacity": 20, "phase": "ALL", "unit": "KW",
                                           "start_time": day.isoformat().replace("+00:00", "Z"),
                                           "end_time": (day + timedelta(days=2)).isoformat().replace("+00:00", "Z")}],
                           kind="FALLBACK_CONSUMPTION")
    silent_from = day + timedelta(days=1, hours=2)
    silent_to = day + timedelta(days=1, hours=3, minutes=30)
    while not stop.is_set():
        now = clock()
        cp.silent = silent_from <= now < silent_to
        await cp.heartbeat(now + timedelta(seconds=2 * heartbeat_sim_s))
        await asyncio.sleep(clock.wall_seconds(heartbeat_sim_s))


def _bar(fraction: float, width: int = 30) -> str:
    done = int(fraction * width)
    return "#" * done + "." * (width - done)


async def run_demo_async(*, n_chargers: int = 20, seconds: float = 60.0, plot: str | None = "demo-plot.png",
                         influx: dict[str, Any] | None = None, out: Any = sys.stdout) -> DemoResult:
    """Run the demo and return what it measured; prints progress and the summary to ``out``."""
    logging.getLogger().setLevel(logging.ERROR)
    start = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)
    clock = AcceleratedClock(start, DAY_S / seconds)
    result = DemoResult()
    drawn: list[Any] = []
    peak = noon_peak_profile(base_a=8.0, peak_a=40.0, width_h=3.0)

    def building(at: datetime) -> float:  # the peak at 13:00, once the fleet is up
        return peak(at - timedelta(hours=1))

    meter = MeterSimulator("sunspec", profile=building, now=clock, noise_a=0.05,
                           chargers_a=lambda: drawn[0].total_draw_a() if drawn else [0.0, 0.0, 0.0])
    await meter.start()
    with tempfile.TemporaryDirectory(prefix="balancer-demo-") as state_dir:
        config = demo_config(n_chargers, state_dir, influx, meter_port=meter.port)
        service = Service(config, now=clock, control_interval_s=config.control.interval_s)
        await service.start()
        cp = GridOperatorSimulator(fp_url=f"http://127.0.0.1:{service.http_port}{BASE_PATH}",
                                   fp_token="demo-oscp-token")
        await cp.start()
        fleet = Fleet.evening_depot(f"ws://127.0.0.1:{service.ocpp.port}/ocpp", n_chargers, start=start,
                                    clock=clock, meter_interval_s=300.0, tick_s=0.05)
        v2g = SimulatedCharger(V2G_ID, f"ws://127.0.0.1:{service.ocpp.port}/ocpp", protocol=V21.subprotocol,
                               clock=clock, meter_interval_s=60.0, tick_s=0.05, car=SimCar(
                                   arrival=start, departure=start + timedelta(hours=5.5), energy_wh=12000.0,
                                   max_current_a=32.0, iso15118=True, discharge_a=V2G_DISCHARGE_A))
        fleet.chargers.append(v2g)
        drawn.append(fleet)
        if len(fleet.chargers) > 5:
            # One charger refuses TxProfile, as some real ones do: the balancer falls back to a
            # TxDefaultProfile for it, and the refusal shows on the dashboard's push-failure panel.
            fleet.chargers[5].misbehaviour = Misbehaviour(rejects_tx_profile=True)
        v2g_need = v2g.car.energy_wh if v2g.car else 0.0
        stop = asyncio.Event()
        operator = asyncio.create_task(_grid_operator(cp, clock, start, stop))
        parties = asyncio.create_task(_ocpi_parties(f"http://127.0.0.1:{service.http_port}", fleet, stop, result))
        await fleet.start()
        controller = service.controllers["demo-depot"]
        last_capacity: tuple[float | int, ...] = ()
        changed_at = 0.0
        loop = asyncio.get_running_loop()
        next_print = 0.0
        try:
            while clock() < start + timedelta(seconds=DAY_S):
                await asyncio.sleep(0.05)
                now = clock()
                status = controller.status(now)
                capacity = tuple(round(c, 3) for c in status.capacity_a)
                # What the chargers may share: the capacity less the building's load as metered. A
                # step in either is followed within 5 s (DESIGN 3.8, 4): the grace starts there.
                cut = status.meter.cut_a if status.meter is not None else (0.0, 0.0, 0.0)
                share = tuple(round(c - k) for c, k in zip(capacity, cut, strict=True))
                if share != last_capacity:
                    last_capacity, changed_at = share, loop.time()
                draw = fleet.total_draw_a()
                non_ev = building(now)
                limits = [0.0, 0.0, 0.0]
                for c in status.chargers:
                    if c["connected"] and c["transaction_id"]:
                        for k in range(3):
                            limits[k] += c["limit_a"]
                over = max(d + non_ev - cap for d, cap in zip(draw, capacity, strict=True))
                settled = loop.time() - changed_at > GRACE_WALL_S
                if over > 0.5 and settled:
                    result.violations += 1
                    result.worst_overshoot_a = max(result.worst_overshoot_a, over)
                if settled and max(a - cap for a, cap in zip(status.allocated_a, capacity, strict=True)) > 1e-6:
                    result.limit_violations += 1
                result.fallback_samples += status.capacity_source != "forecast"
                capped = next((c for c in status.chargers if c["id"] == "CP003" and c.get("external_cap_a")), None)
                if capped is not None and capped["transaction_id"]:
                    held = fleet.chargers[2].limit_now(now)
                    if held is not None and loop.time() - result.ocpi.setdefault("capped_at", loop.time()) > 1.0:
                        result.ocpi["CP003 highest limit held under the cap"] = max(
                            held, result.ocpi.get("CP003 highest limit held under the cap", 0.0))
                if status.meter is not None:
                    deficit = non_ev + config.sites[0].meter.margin_a - capacity[0] if config.sites[0].meter else 0.0
                    result.v2g["worst deficit A"] = max(result.v2g.get("worst deficit A", 0.0), deficit)
                result.v2g["largest discharge A"] = max(result.v2g.get("largest discharge A", 0.0), -v2g.draw_a)
                result.samples.append({"t": now, "capacity": capacity, "draw": draw, "source": status.capacity_source,
                                       "per_charger": [c.draw_a for c in fleet.chargers], "building": non_ev})
                if loop.time() >= next_print:
                    next_print = loop.time() + max(seconds / 40, 0.5)
                    frac = (now - start).total_seconds() / DAY_S
                    charging = sum(1 for c in fleet.chargers if c.draw_a)
                    out.write(f"\r[{_bar(frac)}] {now:%a %H:%M} capacity {capacity[0]:5.1f} A "
                              f"({status.capacity_source:17s}) building {non_ev:4.1f} A drawn {max(draw):5.1f} A  "
                              f"cars charging {charging:2d}")
                    if not out.isatty():
                        out.write("\n")
                    out.flush()
        finally:
            stop.set()
            operator.cancel()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(parties, 5.0)
            await fleet.stop()
            await cp.stop()
            result.pushes = int(service.counters["pushes"])
            result.push_failures = int(service.counters["push_failures"])
            await service.stop()
            await meter.stop()
        out.write("\n")
    result.v2g.update({"given back kWh": v2g.export_wh / 1000.0, "need kWh": v2g_need / 1000.0,
                       "net at departure kWh": (v2g.energy_wh - v2g.export_wh) / 1000.0})
    for sim in fleet.chargers:
        if sim.car is not None and sim is not v2g:
            result.requested_wh[sim.charger_id] = sim.car.energy_wh
            result.delivered_wh[sim.charger_id] = sim.energy_wh
            result.pauses[sim.charger_id] = sim.pauses
    _summary(result, out)
    if plot:
        _plot(result, fleet, plot)
        out.write(f"plot written to {plot}\n")
    return result


def _summary(result: DemoResult, out: Any) -> None:
    requested = sum(result.requested_wh.values())
    delivered = sum(result.delivered_wh.values())
    peak_draw = max((max(s["draw"]) + s.get("building", 0.0) for s in result.samples), default=0.0)
    peak_building = max((s.get("building", 0.0) for s in result.samples), default=0.0)
    peak_cap = max((max(s["capacity"]) for s in result.samples), default=0.0)
    worst = min(((result.delivered_wh[k] / v, k) for k, v in result.requested_wh.items() if v > 0), default=(1.0, "-"))
    out.write("\n  car       requested kWh  delivered kWh   share\n")
    for cid in sorted(result.requested_wh):
        r, d = result.requested_wh[cid], result.delivered_wh[cid]
        out.write(f"  {cid:8s} {r / 1000:14.1f} {d / 1000:14.1f} {100 * d / r:6.1f} %\n")
    share = 100 * delivered / max(requested, 1)
    out.write(f"  {'total':8s} {requested / 1000:14.1f} {delivered / 1000:14.1f} {share:6.1f} %\n\n")
    out.write(f"  worst car:                       {worst[1]} at {100 * worst[0]:.1f} %\n")
    out.write(f"  peak draw / peak capacity:       {peak_draw:.1f} A / {peak_cap:.1f} A per phase"
              f" (cars + building, the building peaking at {peak_building:.1f} A)\n")
    out.write(f"  limit violations (sum of limits > capacity): {result.limit_violations}\n")
    out.write(f"  draw above capacity after {GRACE_WALL_S:.0f} s:   {result.violations}"
              f" (worst {result.worst_overshoot_a:.1f} A)\n")
    out.write(f"  samples on fallback capacity:    {result.fallback_samples} of {len(result.samples)}\n")
    out.write(f"  profile pushes:                  {result.pushes} ({result.push_failures} failed)\n")
    if result.pauses:
        most = max(result.pauses, key=lambda k: result.pauses[k])
        out.write(f"  pauses per car:                  {sum(result.pauses.values()) / len(result.pauses):.2f}"
                  f" (most: {most}, {result.pauses[most]})\n")
    if result.v2g:
        v = result.v2g
        out.write(f"  V2G car on OCPP 2.1 ({V2G_ID}):     building over capacity by up to "
                  f"{v.get('worst deficit A', 0.0):.1f} A, carried by discharging up to "
                  f"{v.get('largest discharge A', 0.0):.1f} A ({v.get('given back kWh', 0.0):.1f} kWh given back);"
                  f" left with {v.get('net at departure kWh', 0.0):.1f} of {v.get('need kWh', 0.0):.1f} kWh needed\n")
    if result.ocpi:
        prefs = result.ocpi.get("CP001 charging_preferences", "-")
        held = result.ocpi.get("CP003 highest limit held under the cap")
        out.write(f"  OCPI driver's app, CP001 needs:  {prefs}\n")
        out.write(f"  OCPI SCSP cap {OCPI_CAP_A:.0f} A on CP003:     {result.ocpi.get('CP003 cap', '-')}, highest limit"
                  f" held under it {'-' if held is None else f'{held:.1f} A'}\n")


def _plot(result: DemoResult, fleet: Fleet, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    times = [s["t"] for s in result.samples]
    per = np.array([s["per_charger"] for s in result.samples]).T
    phases = np.array([min(c.car.phases, 3) if c.car else 3 for c in fleet.chargers])
    fig, ax = plt.subplots(figsize=(12, 5))
    # Every car loads L1 (the demo's single-phase cars are wired to L1), so L1 is the busiest phase.
    building = np.array([s.get("building", 0.0) for s in result.samples])
    colors = ["#999999"] + [f"C{k % 10}" for k in range(len(per))]
    ax.stackplot(times, building, *per, alpha=0.8, linewidth=0, colors=colors)
    ax.plot(times, building, color="#555555", linewidth=1, label="building (non-EV load, site meter)")
    # The V2G car's discharge is a negative draw: the net import shows the peak it carried.
    ax.plot(times, building + per.sum(axis=0), color="#0044aa", linewidth=1, linestyle="--",
            label=f"net import at the connection (with {V2G_ID} discharging at the noon peak)")
    ax.plot(times, [s["capacity"][0] for s in result.samples], color="black", linewidth=2,
            label="capacity in force (L1)")
    fallback = [s["source"] != "forecast" for s in result.samples]
    ax.fill_between(times, 0, max(max(s["capacity"]) for s in result.samples), where=fallback, color="red", alpha=0.1,
                    label="fallback (grid operator silent)")
    ax.set_ylabel("current on L1 [A]")
    ax.set_title(f"balancer demo: {len(fleet.chargers)} chargers ({int((phases == 1).sum())} single-phase cars), "
                 "stacked draw per car under the capacity")
    ax.legend(loc="upper right")
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_demo(args: Any) -> int:
    """``balancer demo``: exit 0 when no limit was violated."""
    influx = None
    if getattr(args, "config", None):
        config = load_config(args.config, require_env=False)  # only its InfluxDB settings are used
        if config.influxdb is not None:
            influx = dataclasses.asdict(config.influxdb)
    result = asyncio.run(run_demo_async(n_chargers=args.chargers, seconds=args.seconds, plot=args.plot,
                                        influx=influx))
    return 0 if result.violations == 0 and result.limit_violations == 0 else 1

