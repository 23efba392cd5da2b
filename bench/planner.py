"""Planner speed: 100 / 500 / 1,000 sessions x 96 slots on a three-level tree, per route.

Run: .venv/bin/python bench/planner.py [--big-routes]   (prints JSON)
The pulp routes build the model variable by variable; at 1,000 sessions they take minutes, so they
run only at 100 sessions unless --big-routes is given. Every route runs as the service calls it
(hourly decisions past ``FINE_SLOTS`` in a large model); ``highs-simplex-per-slot`` is the default
route with 15-minute decisions throughout, for comparison. Two cases: ``arrivals`` (cars arrive
over 0-8 h and leave after 12-24 h) and ``present`` (every car is there now and leaves after
4-24 h: what the service plans, where the first hours are the busiest).
"""

from __future__ import annotations

import itertools
import json
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapters.highs_quiet import silence_highs_banner
from balancer.plan import FINE_SLOTS, PlanSession, build_model, plan
from balancer.topology import Topology
from bench.common import machine, tree_site

START = datetime(2026, 3, 2, 12, tzinfo=UTC)


def sessions(topo: Topology, n: int, seed: int = 1, case: str = "arrivals") -> list[PlanSession]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        if case == "present":
            arrival, departure = START, START + timedelta(hours=float(rng.uniform(4, 24)))
        else:
            arrival = START + timedelta(hours=float(rng.uniform(0, 8)))
            departure = START + timedelta(hours=float(rng.uniform(12, 24)))
        out.append(PlanSession(topo.charger_ids[i], arrival, departure, float(rng.uniform(5000, 60000))))
    return out


def main() -> None:
    silence_highs_banner()
    big = "--big-routes" in sys.argv
    results = []
    for case, n in itertools.product(("arrivals", "present"), (100, 500, 1_000)):
        topo = Topology.from_site(tree_site(n))
        capacity = np.full((96, 3), topo.node_limit_a[0] * 0.5)
        capacity[20:32] *= 0.4  # a peak-hours dip
        ss = sessions(topo, n, case=case)
        started = time.perf_counter()
        model = build_model(topo, capacity, ss, START, fine_slots=FINE_SLOTS)
        build_s = time.perf_counter() - started
        per_slot = build_model(topo, capacity, ss, START)
        row = {"case": case, "sessions": n, "slots": 96, "variables": int(model.a.shape[1]), "rows": int(model.a.shape[0]),
               "nonzeros": int(model.a.nnz), "matrix_build_s": round(build_s, 4),
               "per_slot_model": {"variables": int(per_slot.a.shape[1]), "rows": int(per_slot.a.shape[0]),
                                  "nonzeros": int(per_slot.a.nnz)}, "routes": {}}
        routes = ["highs-simplex", "highs-simplex-per-slot"]
        if case == "arrivals":
            routes += ["highs-ipm"] + (["pulp-highs", "pulp-cbc"] if n == 100 or big else [])
        for route in routes:
            solver = route.removesuffix("-per-slot")
            fine = None if route.endswith("-per-slot") else FINE_SLOTS
            outcome = plan(topo, capacity, ss, START, solver=solver, budget_s=120.0, fine_slots=fine)
            row["routes"][route] = {"status": outcome.status, "build_plus_solve_s": round(outcome.seconds, 3),
                                    "planned_kwh": round(sum(outcome.plan.planned_wh.values()) / 1000, 1)
                                    if outcome.plan else None,
                                    "hourly_from_slot": outcome.plan.hourly_from_slot if outcome.plan else None}
        row["requested_kwh"] = round(sum(s.energy_wh for s in ss) / 1000, 1)
        results.append(row)
    print(json.dumps({"benchmark": "planner", "machine": machine(), "results": results}, indent=1))


if __name__ == "__main__":
    main()
