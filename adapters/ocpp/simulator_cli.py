"""``balancer simulate``: a fleet of simulated chargers against any CSMS."""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
from datetime import UTC, datetime, timedelta
from typing import Any

from adapters.ocpp.simulator import Fleet, SimCar, SimulatedCharger

__all__ = ["run_simulate"]


def build_fleet(args: Any) -> Fleet:
    """N chargers with a car each, arriving over the first minute, staying for hours (real time)."""
    now = datetime.now(UTC)
    chargers = []
    for i in range(args.chargers):
        protocol = args.protocol if args.protocol != "mixed" else ("ocpp1.6" if i % 2 == 0 else "ocpp2.0.1")
        phases = 1 if i % 4 == 3 else 3
        # --sleepy: this share of the cars (the same ones every run) falls asleep after a pause.
        sleepy = random.Random(i).random() < getattr(args, "sleepy", 0.0)
        car = SimCar(arrival=now + timedelta(seconds=i % 60), departure=now + timedelta(hours=8),
                     energy_wh=20000.0 / (3 / phases), max_current_a=32.0 if i % 2 else 16.0, phases=phases,
                     iso15118=protocol in ("ocpp2.0.1", "ocpp2.1") and i % 3 == 0,
                     discharge_a=16.0 if protocol == "ocpp2.1" and phases == 3 else 0.0,
                     sleeps_after_pause_s=getattr(args, "sleep_after_s", 0.0) if sleepy else None)
        chargers.append(SimulatedCharger(f"{args.prefix}{i + 1:03d}", args.url, protocol=protocol, car=car,
                                         password=args.password, meter_interval_s=args.meter_interval, tick_s=0.5,
                                         seed=i))
    return Fleet(chargers)


async def _run(args: Any) -> int:
    fleet = build_fleet(args)
    meter = None
    if getattr(args, "meter_port", None) is not None:
        from adapters.meter.simulator import MeterSimulator, noon_peak_profile

        meter = MeterSimulator(args.meter_map, host=args.meter_host, port=args.meter_port,
                               profile=noon_peak_profile(), chargers_a=fleet.total_draw_a, noise_a=0.05)
        await meter.start()
        print(f"site meter ({args.meter_map}) on {args.meter_host}:{meter.port}, unit id 1", flush=True)
    await fleet.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    print(f"simulating {len(fleet.chargers)} chargers against {args.url} (Ctrl-C to stop)", flush=True)
    started = loop.time()
    seen_profiles = 0
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=5.0)
        connected = sum(1 for c in fleet.chargers if c.connected.is_set())
        charging = sum(1 for c in fleet.chargers if c.draw_a > 0)
        profiles = sum(len(c.profile_log) for c in fleet.chargers)
        draw = fleet.total_draw_a()
        print(f"{loop.time() - started:7.0f} s  connected {connected:4d}  charging {charging:4d}  "
              f"draw L1/L2/L3 {draw[0]:.1f}/{draw[1]:.1f}/{draw[2]:.1f} A  profiles received {profiles}"
              f" (+{profiles - seen_profiles})", flush=True)
        seen_profiles = profiles
        if args.duration and loop.time() - started >= args.duration:
            break
    await fleet.stop()
    if meter is not None:
        await meter.stop()
    print("summary:")
    for c in fleet.chargers:
        last = c.profile_log[-1] if c.profile_log else None
        print(f"  {c.charger_id} {c.protocol:9s} energy {c.energy_wh / 1000:6.2f} kWh  profiles {len(c.profile_log):3d}"
              f"{'  asleep' if c.asleep else ''}"
              f"  last {last['purpose'] + ' ' + str(last['limits'][:3]) + ' ' + last['result'] if last else '-'}")
    return 0


def run_simulate(args: Any) -> int:
    return asyncio.run(_run(args))
