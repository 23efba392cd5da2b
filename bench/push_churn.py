"""Push churn in a steady state: ``balancer serve`` as a process, N simulated chargers, nothing changing.

Issue 11 item 6. One forecast (a constant level below what the cars could take, with a dip 45-75
minutes ahead so the planner has something to shift), heartbeats from the grid operator, N chargers
(1.6J and 2.0.1 alternating, the 2.0.1 cars ISO 15118 with a departure and an energy need) whose
cars all arrive at the start and stay. After ``--warmup`` seconds, SetChargingProfile calls are
counted for ``--seconds`` more: on the service's side (``balancer_ocpp_pushes_total``) and on the
chargers' side (profiles accepted, by purpose, and how each accepted stack-1 limit profile moved
what the charger may draw now and in the slots ahead compared with the one it replaced).

``--forecast-every S`` re-posts the same forecast every S seconds (grid operators resend theirs;
each accepted POST is a new revision of the capacity, so a replan).

Run: ``.venv/bin/python bench/push_churn.py [--chargers 20] [--warmup 60] [--seconds 240]
[--forecast-every S]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapters.ocpp.simulator import SimCar, SimulatedCharger
from adapters.oscp.simulator import GridOperatorSimulator
from bench.common import machine
from tests.e2e.service import ServiceProcess

SITE = "churn"
OSCP_TOKEN = "churn-oscp-token"


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def forecast_blocks(level_a: float, now: datetime, dip_a: float) -> list[dict[str, Any]]:
    """24 h of quarter-hour blocks at ``level_a``, ``dip_a`` 45-75 minutes ahead."""
    epoch = int(now.timestamp())
    start = datetime.fromtimestamp(epoch - epoch % 900, UTC)
    return [{"capacity": dip_a if k in (3, 4) else level_a, "phase": "ALL", "unit": "A",
             "start_time": _iso(start + timedelta(minutes=15 * k)),
             "end_time": _iso(start + timedelta(minutes=15 * (k + 1)))} for k in range(96)]


def pushes_total(service: ServiceProcess) -> float:
    text = service.get("/metrics")
    return sum(float(line.rsplit(" ", 1)[1]) for line in str(text).splitlines()
               if line.startswith("balancer_ocpp_pushes_total"))


def _periods(profile: dict[str, Any]) -> tuple[datetime, list[tuple[float, float]]]:
    """(start, [(offset s, limit)]) of an accepted profile (1.6 or 2.0.1 shape)."""
    schedule = profile.get("chargingSchedule") or profile.get("charging_schedule")
    if isinstance(schedule, list):
        schedule = schedule[0]
    assert isinstance(schedule, dict)
    start = schedule.get("startSchedule") or schedule.get("start_schedule")
    periods = schedule.get("chargingSchedulePeriod") or schedule.get("charging_schedule_period") or []
    at = datetime.fromisoformat(str(start).replace("Z", "+00:00"))
    return at, [(float(p.get("startPeriod", p.get("start_period", 0))), float(p["limit"])) for p in periods]


def _value(start: datetime, periods: list[tuple[float, float]], t: datetime) -> float:
    offset = (t - start).total_seconds()
    value = periods[0][1]
    for s, limit in periods:
        if s > offset:
            break
        value = limit
    return value


def classify(sims: list[SimulatedCharger], since: datetime) -> Counter[str]:
    """How each accepted stack-1 limit profile after ``since`` moved the one it replaced (same id)."""
    kinds: Counter[str] = Counter()
    for sim in sims:
        last: dict[Any, tuple[datetime, list[tuple[float, float]]]] = {}
        for entry in sim.accepted_log:
            profile = entry.profile
            key = (entry.evse, profile.get("chargingProfileId", profile.get("id")),
                   profile.get("chargingProfilePurpose", profile.get("charging_profile_purpose")))
            level = profile.get("stackLevel", profile.get("stack_level"))
            now_start, periods = _periods(profile)
            previous = last.get(key)
            last[key] = (now_start, periods)
            if entry.at <= since or level != 1 or previous is None or not periods:
                continue
            points = sorted({entry.at} | {now_start + timedelta(seconds=s) for s, _ in periods if
                                          now_start + timedelta(seconds=s) > entry.at}
                            | {previous[0] + timedelta(seconds=s) for s, _ in previous[1]
                               if previous[0] + timedelta(seconds=s) > entry.at})
            diffs = [_value(now_start, periods, t) - _value(*previous, t) for t in points]
            now_diff = diffs[0]
            up, down = max([0.0, *diffs]), max([0.0, *(-d for d in diffs)])
            tag = "same" if up < 0.05 and down < 0.05 else ("up" if down < 0.05 else ("down" if up < 0.05 else "both"))
            where = "now" if abs(now_diff) >= 0.05 else "ahead only"
            small = max(up, down) <= 1.0
            kinds[f"{tag} {where}{' (<= 1 A)' if small and tag != 'same' else ''}"] += 1
    return kinds


async def run(n: int, warmup_s: float, seconds: float, forecast_every_s: float = 0.0) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-churn-"))
    ids = [f"CP{i + 1:03d}" for i in range(n)]
    level_a = 10.0 * n  # cars could take 16-32 A each
    config = {"sites": [{"id": SITE, "voltage_v": 230, "grid_limit_a": 16.0 * n, "fallback_kw": round(level_a * 0.69, 1),
                         "chargers": [{"id": cid, "max_current_a": 32} for cid in ids]}],
              "oscp": {"token": OSCP_TOKEN}, "ocpp": {"rate_limit_per_s": 200}}
    service = ServiceProcess(tmp, config).start()
    grid = GridOperatorSimulator(fp_url=f"{service.url}/oscp/fp/2.0", fp_token=OSCP_TOKEN)
    await grid.start()
    start = datetime.now(UTC)
    assert await grid.heartbeat(start + timedelta(minutes=10)) == 204
    assert await grid.send_forecast(SITE, forecast_blocks(level_a, start, level_a * 0.6)) == 204
    sims = []
    for i, cid in enumerate(ids):
        iso = i % 2 == 1
        car = SimCar(arrival=start, departure=start + timedelta(hours=3 + i % 5), energy_wh=15000.0 + 2500.0 * (i % 7),
                     max_current_a=(16.0, 32.0)[i % 3 == 0], phases=1 if i % 4 == 3 else 3, iso15118=iso)
        sims.append(SimulatedCharger(cid, service.ocpp_url, protocol="ocpp2.0.1" if iso else "ocpp1.6", car=car,
                                     meter_interval_s=10.0, tick_s=1.0, seed=i))
    try:
        for sim in sims:
            sim.start()
        async def grid_operator(until: float) -> None:
            beat = 0.0
            while (now := time.monotonic()) < until:
                await asyncio.sleep(min(5.0, forecast_every_s or 5.0, max(0.0, until - now)))
                if time.monotonic() - beat >= 5.0:
                    beat = time.monotonic()
                    await grid.heartbeat(datetime.now(UTC) + timedelta(minutes=10))
                if forecast_every_s:  # the same forecast again, as grid operators resend theirs
                    await grid.send_forecast(SITE, forecast_blocks(level_a, start, level_a * 0.6))

        await grid_operator(time.monotonic() + warmup_s)
        since = datetime.now(UTC)
        service0 = pushes_total(service)
        charger0 = sum(len(sim.accepted_log) for sim in sims)
        t1 = time.monotonic()
        await grid_operator(t1 + seconds)
        elapsed = time.monotonic() - t1
        service1 = pushes_total(service)
        accepted = [a for sim in sims for a in sim.accepted_log if a.at > since]
        purposes = Counter(str(a.profile.get("chargingProfilePurpose", a.profile.get("charging_profile_purpose")))
                           + f" stack {a.profile.get('stackLevel', a.profile.get('stack_level'))}" for a in accepted)
        per_hour = 3600.0 / elapsed / n
        return {"chargers": n, "warmup_s": warmup_s, "forecast_every_s": forecast_every_s, "seconds": round(elapsed, 1),
                "charging": sum(1 for sim in sims if sim.transaction_id),
                "service_pushes": int(service1 - service0),
                "service_pushes_per_charger_per_hour": round((service1 - service0) * per_hour, 1),
                "accepted": len(accepted),
                "accepted_per_charger_per_hour": round(len(accepted) * per_hour, 1),
                "accepted_before_window": charger0,
                "accepted_by_purpose": dict(purposes),
                "limit_profile_moves": dict(classify(sims, since))}
    finally:
        for sim in sims:
            await sim.stop()
        await grid.stop()
        service.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chargers", type=int, default=20)
    parser.add_argument("--warmup", type=float, default=60.0)
    parser.add_argument("--seconds", type=float, default=240.0)
    parser.add_argument("--forecast-every", type=float, default=0.0,
                        help="re-post the same forecast this often [s] (0: once)")
    args = parser.parse_args()
    result = asyncio.run(run(args.chargers, args.warmup, args.seconds, args.forecast_every))
    print(json.dumps({"benchmark": "push_churn", "machine": machine(), **result}, indent=1))


if __name__ == "__main__":
    main()
