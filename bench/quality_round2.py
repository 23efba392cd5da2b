"""Scheduling quality, round 2 (issue 17): this version against an older one in the same run.

Run: .venv/bin/python bench/quality_round2.py [--seeds 10] [--step-s 300] [--baseline-rev main]
     [--tight 0.8] [--set PROTECT_SHARE=0.0625 ...]     (prints markdown tables, then one JSON line)

The days of ``bench/quality.py`` (depot, office, car park; seeds 1..N), each also in a *tight*
variant with ``--tight`` of the connection capacity, simulated online at the control step
``--step-s`` (5 minutes, as the issue's simulator; the plan's slots stay 15 minutes). Strategies:
least laxity first and earliest deadline first (both give 0 or at least the 6 A minimum, never a
limit between), our LP + allocator as of ``--baseline-rev`` ("today": the ``balancer`` package
of that git revision, run in a subprocess of its own), and this checkout's, with and without the
churn guard (``min_pause_s`` / ``min_charge_s`` 0). Per strategy and site, over the seeds:
delivered as a share of the upper bound (``bench/quality.py``: the foresight LP, energy only, no
minimums), and of a second bound, the same foresight LP with the planner's own objective
(protected share, fair split, partly covered first slot; ``objective_bound_wh``: how far the
online controller is from what its own objective reaches with foresight), sessions completed
(< 0.1 kWh short), the worst car's share, pauses, resumes and limit changes (profile pushes) per
car, violations. Each configuration runs in its own process, one
after the other (the machine is shared).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SITES = ("depot", "office", "carpark")
CLASSIC = ("least laxity first", "earliest deadline first")


def worker(args: argparse.Namespace) -> None:
    """Simulate every day for the strategies asked for; one JSON line per (variant, site, seed, strategy)."""
    sys.path.insert(0, str(REPO))
    sys.path.insert(0, args.root)  # the balancer package measured comes first
    import balancer.allocate
    import balancer.model
    import balancer.plan as plan_module
    import balancer.topology  # noqa: F401  (imported now, before bench.quality puts REPO first)
    from adapters.highs_quiet import silence_highs_banner
    from bench import strategies
    from bench.quality import objective_bound_wh, simulate, upper_bound_wh
    from bench.scenarios import generate

    silence_highs_banner()
    for item in args.set or []:
        key, value = item.split("=", 1)
        # The constant lives in balancer.plan, or since the split in one of its modules.
        for name in ("balancer.plan", "balancer.plan_model", "balancer.plan_minimums", "balancer.plan_expected"):
            try:
                module = importlib.import_module(name)
            except ImportError:
                continue
            if hasattr(module, key):
                setattr(module, key, type(getattr(module, key))(float(value)))
    strategies.FORECAST_AS = args.forecast_as
    names = args.strategies.split(",")
    pause, _, charge = (args.churn or "").partition(",")
    churn = {} if args.churn is None else {"min_pause_s": float(pause), "min_charge_s": float(charge or pause)}
    if args.asleep_after is not None:
        churn["car_asleep_after_s"] = args.asleep_after
    strategies.FACTORIES["our LP + allocator"] = lambda: strategies.make_lp_plus_allocator(**churn)
    forecast_sites = set(args.forecast_sites.split(",")) if args.forecast_days else set()
    for variant, scale, sleepy in (("normal", 1.0, 0.0), ("tight", args.tight, 0.0), ("sleepy", 1.0, args.sleepy)):
        if (variant == "sleepy" and not sleepy) or variant not in args.variants.split(","):
            continue
        for kind in args.sites.split(","):
            for seed in range(1, args.seeds + 1):
                base = generate(kind, seed)
                day = dataclasses.replace(base, capacity_a=base.capacity_a * scale)
                requested = sum(c.energy_wh for c in day.cars)
                bound = upper_bound_wh(day, args.step_s) / requested
                own_bound = objective_bound_wh(day, args.step_s) / requested
                if kind in forecast_sites:
                    history = past_sessions(kind, seed, args.forecast_days, args.forecast_scale)
                    strategies.FACTORIES["our LP + allocator"] = lambda h=history: strategies.make_lp_plus_allocator(
                        **churn, history=h, history_days=args.forecast_days)
                for name in names:
                    r = simulate(day, name, step_s=args.step_s, sleepy_share=sleepy)
                    print(json.dumps({"variant": variant, "site": kind, "seed": seed, "strategy": name,
                                      "bound": bound, "bound_objective": own_bound, "balancer": plan_module.__file__, **r}), flush=True)


def past_sessions(kind: str, seed: int, days: int, scale: float = 1.0) -> list[Any]:
    """The site's own history for the arrival forecast: ``days`` other days of the same kind (seeds
    no measured day uses), laid on the days before the measured one; energies times ``scale``."""
    from datetime import timedelta

    from bench.scenarios import generate
    from forecast.arrivals import PastSession

    out = []
    for j in range(1, days + 1):
        day = generate(kind, 100_000 + 100 * seed + j)
        shift = timedelta(days=j)
        out += [PastSession(c.arrival - shift, c.departure - shift, c.energy_wh * scale,
                            (True, c.phases == 3, c.phases == 3), c.max_current_a) for c in day.cars]
    return out


def run_worker(root: str, label: str, strategy_names: str, args: argparse.Namespace,
               churn: str | None = None, extra: list[str] | None = None) -> list[dict[str, Any]]:
    cmd = [sys.executable, __file__, "--worker", "--root", root, "--strategies", strategy_names,
           "--seeds", str(args.seeds), "--step-s", str(args.step_s), "--tight", str(args.tight),
           "--sites", args.sites, "--sleepy", str(args.sleepy)]
    if churn is not None:
        cmd += ["--churn", churn]
    for item in extra or []:
        cmd += ["--set", item]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    for row in rows:
        if row["strategy"] == "our LP + allocator":
            row["strategy"] = label
    return rows


def export(rev: str) -> str:
    """The ``balancer`` package of ``rev`` in a temporary directory (``git archive``)."""
    target = tempfile.mkdtemp(prefix="quality-baseline-")
    data = subprocess.run(["git", "-C", str(REPO), "archive", rev, "balancer"], capture_output=True,
                          check=True).stdout
    with tarfile.open(fileobj=BytesIO(data)) as tar:
        tar.extractall(target, filter="data")
    return target


def aggregate(rows: list[dict[str, Any]]) -> dict[tuple[str, str, str], dict[str, float]]:
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["variant"], r["site"], r["strategy"]), []).append(r)
    out = {}
    for key, rs in groups.items():
        ratio = np.array([r["delivered"] / r["bound"] for r in rs])
        own = np.array([r["delivered"] / r.get("bound_objective", np.nan) for r in rs])
        cars = sum(r["cars"] for r in rs)
        out[key] = {
            "vs_bound_mean": float(ratio.mean()), "vs_bound_min": float(ratio.min()),
            "vs_objective_bound_mean": float(own.mean()), "vs_objective_bound_min": float(own.min()),
            "completed": float(sum(r["completed"] for r in rs)), "cars": float(cars),
            "worst_car_min": float(min(r["worst_car"] for r in rs)),
            "worst_car_mean": float(np.mean([r["worst_car"] for r in rs])),
            "pauses_per_car": float(sum(r["pauses_per_car"] * r["cars"] for r in rs) / cars),
            "resumes_per_car": float(sum(r["resumes_per_car"] * r["cars"] for r in rs) / cars),
            "pushes_per_car": float(sum(r["pushes_per_car"] * r["cars"] for r in rs) / cars),
            "violations": float(sum(r["violations"] for r in rs)),
            "limits_between_0_and_min": float(sum(r["limits_between_0_and_min"] for r in rs)),
            "asleep": float(sum(r.get("asleep", 0.0) for r in rs)),
            "detected": float(sum(r.get("detected_asleep", 0.0) for r in rs)),
            "asleep_short_kwh": float(sum(r.get("asleep_energy_wh", 0.0) for r in rs) / 1000.0),
        }
    return out


def table(agg: dict[tuple[str, str, str], dict[str, float]], order: list[str]) -> str:
    lines = ["| variant | site | strategy | vs bound (mean / min) | vs own-objective bound (mean / min) | completed "
             "| worst car (min / mean) | pauses / car | resumes / car | pushes / car | cars asleep (detected) "
             "| violations | 0<limit<min |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for variant in ("normal", "tight", "sleepy"):
        for site in SITES:
            for name in order:
                a = agg.get((variant, site, name))
                if a is None:
                    continue
                lines.append(
                    f"| {variant} | {site} | {name} | {100 * a['vs_bound_mean']:.2f} / {100 * a['vs_bound_min']:.2f} % "
                    f"| {100 * a['vs_objective_bound_mean']:.2f} / {100 * a['vs_objective_bound_min']:.2f} % "
                    f"| {a['completed']:.0f} / {a['cars']:.0f} | {100 * a['worst_car_min']:.1f} / "
                    f"{100 * a['worst_car_mean']:.1f} % | {a['pauses_per_car']:.2f} | {a['resumes_per_car']:.2f} "
                    f"| {a['pushes_per_car']:.2f} | {a['asleep']:.0f} ({a['detected']:.0f}) | {a['violations']:.0f} "
                    f"| {a['limits_between_0_and_min']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--step-s", type=int, default=300)
    parser.add_argument("--tight", type=float, default=0.8)
    parser.add_argument("--sleepy", type=float, default=0.2, help="share of cars that fall asleep at a pause (0: no such variant)")
    parser.add_argument("--sites", default=",".join(SITES))
    parser.add_argument("--variants", default="normal,tight,sleepy", help="of normal, tight, sleepy")
    parser.add_argument("--baseline-rev", default="main")
    parser.add_argument("--set", action="append", help="planner constant for this checkout, e.g. PROTECT_SHARE=0")
    parser.add_argument("--forecast-days", type=int, default=0,
                        help="plan with the arrival forecast from this many past days of the site (0: without)")
    parser.add_argument("--forecast-sites", default="carpark", help="sites planned with the arrival forecast")
    parser.add_argument("--forecast-scale", type=float, default=1.0, help="reserve this share of the forecast")
    parser.add_argument("--forecast-as", default="bid", choices=("bid", "reserve"),
                        help="the forecast as bids for the capacity ahead, or as reserved capacity")
    parser.add_argument("--asleep-after", type=float, default=None,
                        help="car_asleep_after_s of our strategy (default: the controller's; 0: no sleep detection)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--root", default=str(REPO), help=argparse.SUPPRESS)
    parser.add_argument("--strategies", default="our LP + allocator", help=argparse.SUPPRESS)
    parser.add_argument("--churn", default=None, help=argparse.SUPPRESS)  # "min_pause_s[,min_charge_s]"
    parser.add_argument("--rows", action="append", metavar="LABEL=FILE",
                        help="tabulate the JSON lines of earlier --worker runs instead of running (repeatable); "
                             "their 'our LP + allocator' rows are named LABEL")
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    if args.rows:
        rows, order = [], list(CLASSIC)
        for item in args.rows:
            label, _, path = item.partition("=")
            for line in Path(path).read_text().splitlines():
                if line.startswith("{"):
                    row = json.loads(line)
                    if row["strategy"] == "our LP + allocator":
                        row["strategy"] = label
                    rows.append(row)
            order.append(label)
        agg = aggregate(rows)
        print(table(agg, list(dict.fromkeys(order))))
        print()
        print(json.dumps({"|".join(k): v for k, v in agg.items()}))
        return
    today = f"our LP + allocator ({args.baseline_rev})"
    ours = "our LP + allocator (this branch)"
    no_churn = "this branch, min_pause_s = min_charge_s = 0"
    rows = run_worker(str(REPO), ours, ",".join((*CLASSIC, "our LP + allocator")), args, extra=args.set)
    rows += run_worker(str(REPO), no_churn, "our LP + allocator", args, churn="0", extra=args.set)
    rows += run_worker(export(args.baseline_rev), today, "our LP + allocator", args)
    agg = aggregate(rows)
    print(f"seeds 1-{args.seeds}, control step {args.step_s} s, tight = {args.tight:.0%} of the capacity, "
          f"sleepy = {args.sleepy:.0%} of the cars fall asleep at a pause\n")
    print(table(agg, [*CLASSIC, today, no_churn, ours]))
    print()
    print(json.dumps({"|".join(k): v for k, v in agg.items()}))


if __name__ == "__main__":
    main()
