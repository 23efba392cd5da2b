"""Scheduling quality: our LP + allocator against common strategies on realistic days.

Run: .venv/bin/python bench/quality.py --seed 42 [--summary-seeds 10]   (prints markdown tables, writes
bench/out/*.png). Seeds 1-10, a tight variant (80 % of the capacity), sessions completed, worst car
and pauses per car against another checkout in the same run: ``bench/quality_round2.py``, which
simulates with this module.

Each day is simulated online in 15-minute steps: at every step a strategy sees only the cars
plugged in now (their need and departure) and sets limits; a car draws min(limit, its max) if that
is at least 6 A, else nothing, until it is full or leaves. The perfect-foresight LP knows every
arrival in advance; its plan is executed as it stands. The upper bound is the same foresight LP
without minimum currents and with energy as its only objective: no strategy that keeps the limits
can deliver more (minimum currents only remove options), so "vs bound" is a true ratio. A car is
counted from the first step after it arrives to the last step before it leaves, the same for
every strategy.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from scipy.optimize import linprog

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapters.highs_quiet import silence_highs_banner
from balancer.allocate import node_load_a
from balancer.plan import PlanSession, build_model, plan
from balancer.topology import Topology, phase_mask
from bench.quality_metrics import churn_summary, summarise
from bench.scenarios import SITE_TYPES, Scenario, generate
from bench.strategies import FACTORIES, STRATEGIES, Present

STEP_S = 900
OUT = Path(__file__).resolve().parent / "out"


def windows(s: Scenario, step_s: int = STEP_S) -> tuple[np.ndarray, np.ndarray]:
    """First and last+1 step of every car (rounded inward to whole steps)."""
    t0 = s.start.timestamp()
    n_steps = 96 * STEP_S // step_s
    first = np.array([math.ceil((c.arrival.timestamp() - t0) / step_s) for c in s.cars])
    end = np.array([math.floor((c.departure.timestamp() - t0) / step_s) for c in s.cars])
    return np.clip(first, 0, n_steps), np.clip(end, 0, n_steps)


def simulate(s: Scenario, strategy: str, limits_fn=None, step_s: int = STEP_S,  # type: ignore[no-untyped-def]
             sleepy_share: float = 0.0) -> dict[str, float]:
    """One day online; ``step_s`` the control step (the plan's slots stay 15 minutes). Besides
    energy: sessions completed, pauses (drew, then nothing while still present and short),
    resumes and limit changes (profile pushes) per car. ``sleepy_share`` of the cars (drawn from
    the scenario's seed) fall asleep at their first pause and never draw again (as Renault Zoe,
    Dacia Spring, Fiat 500e are reported to); the strategy is not told, as a charger would not,
    but sees what a charger reports: each car's draw in the step before (its meter) and whether a
    car held at 0 A asks for current (``SuspendedEVSE``; an asleep car does not)."""
    topo = Topology.from_site(s.site)
    n = topo.n_chargers
    first, end = windows(s, step_s)
    delivered = np.zeros(len(s.cars))
    node_cap = np.repeat(topo.node_limit_a[:, None], 3, axis=1).astype(float)
    loads, caps, used_short, times = [], [], [], []
    sub_min = 0
    decide = limits_fn or fresh_strategy(strategy)
    was_on = np.zeros(len(s.cars), dtype=bool)
    started_car = np.zeros(len(s.cars), dtype=bool)
    last_limit = np.zeros(len(s.cars))
    pauses = np.zeros(len(s.cars), dtype=int)
    resumes = np.zeros(len(s.cars), dtype=int)
    pushes = np.zeros(len(s.cars), dtype=int)
    sleepy = np.random.default_rng(s.seed + 1000).uniform(size=len(s.cars)) < sleepy_share
    asleep = np.zeros(len(s.cars), dtype=bool)
    last_draw = np.zeros(len(s.cars))
    for k in range(96 * STEP_S // step_s):
        slot = k * step_s // STEP_S
        now = s.start + timedelta(seconds=k * step_s)
        here = np.zeros(n, dtype=bool)
        car_of = np.full(n, -1)
        for j, c in enumerate(s.cars):
            if first[j] <= k < end[j] and delivered[j] < c.energy_wh - 1e-6:
                i = topo.index(c.charger_id)
                here[i], car_of[i] = True, j
        max_a = np.array([s.cars[j].max_current_a if j >= 0 else 0.0 for j in car_of])
        phases = np.array([s.cars[j].phases if j >= 0 else 3 for j in car_of])
        remaining = np.array([s.cars[j].energy_wh - delivered[j] if j >= 0 else 0.0 for j in car_of])
        departure = [s.cars[j].departure if j >= 0 else None for j in car_of]
        power = max_a * phases * 230.0
        laxity = np.array([((d - now).total_seconds() - r / p * 3600) if d is not None and p > 0 else np.inf
                           for d, r, p in zip(departure, remaining, power, strict=True)])
        arrival_s = np.array([s.cars[j].arrival.timestamp() if j >= 0 else np.inf for j in car_of])
        requested = np.array([s.cars[j].energy_wh if j >= 0 else 0.0 for j in car_of])
        # What the charger reports from the step before: the meter (the car's draw), and whether
        # the car asks for current at 0 A (SuspendedEVSE: awake, held at 0 by us).
        drew = np.array([last_draw[j] if j >= 0 else 0.0 for j in car_of])
        asks = np.array([j >= 0 and not asleep[j] and last_limit[j] < topo.min_current_a[i] - 1e-9
                         for i, j in enumerate(car_of)], dtype=bool)
        present = Present(now, topo, s.capacity_a[slot], s.capacity_a[slot:], here, max_a, phases, remaining,
                          arrival_s, departure, laxity, requested, drew, asks)
        started = time.perf_counter()
        limit = decide(k, present)
        times.append(time.perf_counter() - started)
        sub_min += int(np.sum((limit > 1e-9) & (limit < topo.min_current_a - 1e-9)))
        draw = np.where(here & (np.minimum(limit, max_a) >= topo.min_current_a - 1e-9), np.minimum(limit, max_a), 0.0)
        # A car takes no more than it still needs in this step.
        need_a = np.where(here, remaining / (phases * 230.0 * step_s / 3600), 0.0)
        draw = np.minimum(draw, need_a)
        for i in np.flatnonzero(here):
            j = car_of[i]
            if asleep[j]:
                draw[i] = 0.0
            on = draw[i] > 0
            asleep[j] |= sleepy[j] and was_on[j] and not on
            pushes[j] += abs(limit[i] - last_limit[j]) > 1e-9
            pauses[j] += was_on[j] and not on
            resumes[j] += on and not was_on[j] and started_car[j]
            was_on[j], last_limit[j], last_draw[j] = on, limit[i], draw[i]
            started_car[j] |= on
        mask = phase_mask(topo, phases)
        load = node_load_a(topo, draw, mask)
        cap = node_cap.copy()
        cap[0] = np.minimum(cap[0], s.capacity_a[slot])
        loads.append(load)
        caps.append(cap)
        demand = node_load_a(topo, np.where(here, max_a, 0.0), mask)[0].max()
        if demand > cap[0].max():
            used_short.append(float(load[0].max() / cap[0].max()))
        for i in np.flatnonzero(here):
            delivered[car_of[i]] += draw[i] * phases[i] * 230.0 * step_s / 3600
    out = summarise([c.energy_wh for c in s.cars], delivered, np.array(loads), np.array(caps), used_short, times,
                    sub_min)
    out.update(churn_summary([c.energy_wh for c in s.cars], delivered, pauses, resumes, pushes))
    out["asleep"] = float(asleep.sum())
    stats = getattr(decide, "stats", None) or {}
    out["detected_asleep"] = float(stats.get("detected", 0))
    out["asleep_energy_wh"] = float(sum(s.cars[j].energy_wh - delivered[j] for j in np.flatnonzero(asleep)))
    return out


def fresh_strategy(name: str):  # type: ignore[no-untyped-def]
    """A strategy as ``(step, present) -> limits``, with state of its own for this day."""
    fn = FACTORIES[name]() if name in FACTORIES else STRATEGIES[name]

    def decide(k: int, p: Present) -> np.ndarray:
        return fn(p)

    decide.stats = getattr(fn, "stats", None)  # type: ignore[attr-defined]
    return decide


def foresight_sessions(s: Scenario, step_s: int = STEP_S) -> list[PlanSession]:
    """Every car of the day as a session over exactly the steps it is counted in."""
    first, end = windows(s, step_s)
    return [PlanSession(c.charger_id, s.start + timedelta(seconds=int(f) * step_s),
                        s.start + timedelta(seconds=int(e) * step_s), c.energy_wh, max_current_a=c.max_current_a,
                        phases=c.phases) for c, f, e in zip(s.cars, first, end, strict=True) if e > f]


def upper_bound_wh(s: Scenario, step_s: int = STEP_S) -> float:
    """Most energy any limit-keeping strategy can deliver: the foresight LP, energy only, no minimums."""
    return _foresight_lp_wh(s, step_s, energy_only=True)


def objective_bound_wh(s: Scenario, step_s: int = STEP_S) -> float:
    """The energy of the foresight LP with the planner's own objective (priority, protected share,
    fair split, partly covered first slot, earlier delivery) and no minimums: what the controller's
    objective reaches knowing every arrival. Below ``upper_bound_wh`` by what the fairness promises
    cost in energy (a single-phase car's protected share on a short phase is bought with up to 2.5
    Wh of three-phase energy); not an upper bound for a strategy, which may trade otherwise."""
    return _foresight_lp_wh(s, step_s, energy_only=False)


def _foresight_lp_wh(s: Scenario, step_s: int, energy_only: bool) -> float:
    topo = Topology.from_site(s.site)
    model = build_model(topo, s.capacity_a, foresight_sessions(s, step_s), s.start)
    if energy_only:
        # Maximise the energy of the current columns (kWh), nothing else; the model caps it at the need.
        cost = np.zeros(model.a.shape[1])
        cost[: model.n_x] = -model.wh_per_a / 1000.0
    else:
        cost = -model.cost
    a = model.a.tocsr()
    upper, lower = np.isfinite(model.row_hi), np.isfinite(model.row_lo)
    result = linprog(cost, A_ub=sp.vstack([a[upper], -a[lower]]),
                     b_ub=np.concatenate([model.row_hi[upper], -model.row_lo[lower]]),
                     bounds=np.c_[model.col_lo, model.col_hi], method="highs")
    assert result.status == 0, result.message
    return float(result.x[: model.n_x] @ model.wh_per_a)


def perfect_foresight(s: Scenario) -> dict[str, float]:
    topo = Topology.from_site(s.site)
    sessions = foresight_sessions(s)
    started = time.perf_counter()
    outcome = plan(topo, s.capacity_a, sessions, s.start, budget_s=60.0)
    seconds = time.perf_counter() - started
    assert outcome.plan is not None, outcome
    limits = outcome.plan.limit_a
    result = simulate(s, "perfect-foresight LP", lambda k, p: limits[:, k])
    result["decision_ms_median"] = result["decision_ms_p95"] = seconds * 1000
    return result


def table(rows: list[tuple[str, str, dict[str, float]]], bounds: dict[str, float]) -> str:
    """Markdown table; ``bounds`` is each site's upper bound as a share of the requested energy."""
    head = ("| site | strategy | delivered | vs bound | vs foresight LP | worst car | completed | pauses / car "
            "| violations (worst A) | used when short | Jain | 0<limit<min | decision ms (median / p95) |\n"
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    lines = [head]
    foresight = {site: r["delivered"] for site, name, r in rows if name == "perfect-foresight LP"}
    for site, name, r in rows:
        lines.append(f"| {site} | {name} | {100 * r['delivered']:.1f} % | {100 * r['delivered'] / bounds[site]:.1f} % "
                     f"| {100 * r['delivered'] / foresight[site]:.1f} % "
                     f"| {100 * r['worst_car']:.1f} % | {r['completed']:.0f} / {r['cars']:.0f} "
                     f"| {r['pauses_per_car']:.2f} | {r['violations']} ({r['worst_overshoot_a']:.1f}) "
                     f"| {100 * r['capacity_used_when_short']:.1f} % | {r['jain']:.3f} | {r['limits_between_0_and_min']} "
                     f"| {r['decision_ms_median']:.2f} / {r['decision_ms_p95']:.2f} |")
        if name == "perfect-foresight LP":
            lines.append(f"| {site} | upper bound (foresight LP, energy only, no minimums) | {100 * bounds[site]:.1f} % "
                         "| 100.0 % | | | | | | | | | |")
    return "\n".join(lines)


def plot(rows: list[tuple[str, str, dict[str, float]]], seed: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    OUT.mkdir(exist_ok=True)
    sites = list(dict.fromkeys(site for site, _, _ in rows))
    names = list(dict.fromkeys(name for _, name, _ in rows))
    fig, ax = plt.subplots(figsize=(12, 5))
    width = 0.8 / len(names)
    for j, name in enumerate(names):
        values = [next(100 * r["delivered"] for s, n, r in rows if s == site and n == name) for site in sites]
        ax.bar(np.arange(len(sites)) + j * width, values, width, label=name)
    ax.set_xticks(np.arange(len(sites)) + 0.4 - width / 2, sites)
    ax.set_ylabel("requested energy delivered by departure [%]")
    ax.set_title(f"scheduling quality, seed {seed}")
    ax.legend(fontsize=7, ncol=2, loc="lower right")
    fig.tight_layout()
    fig.savefig(OUT / f"quality-seed{seed}.png", dpi=100)
    plt.close(fig)


SUMMARY_STRATEGIES = ("earliest deadline first", "least laxity first", "our LP + allocator")


def seed_summary(seeds: list[int]) -> str:
    """Delivered energy over many days: each strategy as a share of the upper bound, per site and seed."""
    lines = ["| site | seed | upper bound | " + " | ".join(SUMMARY_STRATEGIES) + " | perfect-foresight LP |",
             "|---|---:|---:|" + "---:|" * (len(SUMMARY_STRATEGIES) + 1)]
    for kind in SITE_TYPES:
        for seed in seeds:
            scenario = generate(kind, seed)
            bound = upper_bound_wh(scenario) / sum(c.energy_wh for c in scenario.cars)
            shares = [simulate(scenario, name)["delivered"] for name in SUMMARY_STRATEGIES]
            shares.append(perfect_foresight(scenario)["delivered"])
            lines.append(f"| {kind} | {seed} | {100 * bound:.1f} % | "
                         + " | ".join(f"{100 * x / bound:.1f} %" for x in shares) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--summary-seeds", type=int, default=0,
                        help="also print delivered energy vs the bound for seeds 1..N (about 15 s a seed)")
    args = parser.parse_args()
    silence_highs_banner()
    rows = []
    bounds = {}
    for kind in SITE_TYPES:
        scenario = generate(kind, args.seed)
        bounds[kind] = upper_bound_wh(scenario) / sum(c.energy_wh for c in scenario.cars)
        for name in STRATEGIES:
            rows.append((kind, name, simulate(scenario, name)))
        rows.append((kind, "perfect-foresight LP", perfect_foresight(scenario)))
    print(f"seed {args.seed}\n")
    print(table(rows, bounds))
    plot(rows, args.seed)
    if args.summary_seeds:
        print(f"\nseeds 1-{args.summary_seeds}, delivered as a share of the upper bound\n")
        print(seed_summary(list(range(1, args.summary_seeds + 1))))


if __name__ == "__main__":
    main()
