"""Minimum currents: the planner's post-processing and its time-bounded MIP against a long MIP.

Run: .venv/bin/python bench/quality_mip.py [--sizes 40,100,300] [--reference-s 60]   (prints JSON)

A depot of n chargers (``bench.common.tree_site``) with an evening dip (17-20 h at 40 %), cars
arriving 16-20 h and leaving 5-7 h, 20-60 kWh each, 30 % single-phase (6 A minimum everywhere).
Planned energy of: ``post-processing`` (the LP, then ``meet_minimums``; ``mip_s=0``), ``LP + MIP``
(the default: the MIP for at most ``MIP_MAX_S`` within the 2 s planner budget), and the
reference, the same MIP run for ``--reference-s`` with the post-processed plan as its start (the
best plan found; its own gap is printed, so "optimum" is an upper estimate only when the gap is 0).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapters.highs_quiet import silence_highs_banner
from balancer import plan as plan_module
from balancer.plan import PlanSession, build_model, meet_minimums, plan
from balancer.topology import Topology
from bench.common import machine, tree_site

START = datetime(2026, 3, 2, 12, tzinfo=UTC)


def depot(n: int, seed: int = 1) -> tuple[Topology, np.ndarray, list[PlanSession]]:
    topo = Topology.from_site(tree_site(n))
    rng = np.random.default_rng(seed)
    capacity = np.full((96, 3), topo.node_limit_a[0] * 0.6)
    capacity[20:32] *= 0.4  # 17-20 h
    sessions = []
    for i in range(n):
        arrival = START + timedelta(hours=float(rng.uniform(4, 8)))
        departure = START + timedelta(hours=float(rng.uniform(17, 19)))
        sessions.append(PlanSession(topo.charger_ids[i], arrival, departure, float(rng.uniform(20000, 60000)),
                                    phases=1 if rng.uniform() < 0.3 else None))
    return topo, capacity, sessions


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="40,100,300")
    parser.add_argument("--reference-s", type=float, default=60.0)
    args = parser.parse_args()
    silence_highs_banner()
    results = []
    for n in (int(x) for x in args.sizes.split(",")):
        topo, capacity, sessions = depot(n)
        row: dict[str, object] = {"chargers": n, "requested_kwh": round(sum(s.energy_wh for s in sessions) / 1000, 1)}
        for name, mip_s in (("post-processing", 0.0), ("LP + MIP (default)", None)):
            outcome = plan(topo, capacity, sessions, START, mip_s=mip_s)
            assert outcome.plan is not None, outcome
            row[name] = {"planned_kwh": round(sum(outcome.plan.planned_wh.values()) / 1000, 2),
                         "seconds": round(outcome.seconds, 2)}
        model = build_model(topo, capacity, sessions, START, fine_slots=plan_module.FINE_SLOTS)
        lp = plan(topo, capacity, sessions, START, mip_s=0.0)
        assert lp.plan is not None
        started = time.perf_counter()
        # The long run: the LP's post-processed plan as the start, then branch and bound.
        from balancer.plan import _solve_highs

        _, v, _ = _solve_highs(model, model.cost, model.col_hi, model.row_lo, "simplex", 60.0)
        assert v is not None
        x0 = meet_minimums(model, v[: model.n_x])
        x = plan_module.improve_with_mip(model, x0, args.reference_s)
        wh = float(np.minimum(np.bincount(model.col_session, weights=x * model.wh_per_a,
                                          minlength=len(sessions)), model.need_wh).sum())
        row["reference MIP"] = {"planned_kwh": round(wh / 1000, 2), "seconds": round(time.perf_counter() - started, 1),
                                "time_limit_s": args.reference_s}
        ref = max(wh / 1000, 1e-9)
        for name in ("post-processing", "LP + MIP (default)"):
            entry = row[name]
            assert isinstance(entry, dict)
            entry["vs_reference"] = round(entry["planned_kwh"] / ref, 4)
        results.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    print(json.dumps({"benchmark": "quality_mip", "machine": machine(), "results": results}, indent=1))


if __name__ == "__main__":
    main()
