"""Allocator speed: 100 / 1,000 / 10,000 chargers on a three-level tree, versus the same snapshot as an LP.

Run: .venv/bin/python bench/allocator.py   (prints JSON)
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapters.highs_quiet import silence_highs_banner
from balancer.allocate import AllocationRequest, allocate, node_load_a
from balancer.check import check_allocation
from balancer.topology import Topology
from bench.common import machine, median_s, tree_site


def lp_snapshot(topo: Topology, capacity: np.ndarray, mask: np.ndarray, hi: np.ndarray) -> tuple[float, float]:
    """The same snapshot as an LP (max total current, node/phase rows, bounds) with HiGHS: (seconds, total)."""
    import highspy

    started = time.perf_counter()
    rows = []
    for p in range(3):
        rows.append(topo.ancestors.multiply(mask[:, p][None, :]))
    a = sp.vstack(rows, format="csc")
    upper = np.concatenate([capacity[:, p] for p in range(3)])
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    lp = highspy.HighsLp()
    lp.num_col_, lp.num_row_ = a.shape[1], a.shape[0]
    lp.col_cost_ = mask.sum(axis=1).astype(float)
    lp.col_lower_, lp.col_upper_ = np.zeros(a.shape[1]), hi
    lp.row_lower_, lp.row_upper_ = np.full(a.shape[0], -np.inf), upper
    lp.sense_ = highspy.ObjSense.kMaximize
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_, lp.a_matrix_.index_, lp.a_matrix_.value_ = a.indptr, a.indices, a.data
    h.passModel(lp)
    h.run()
    total = float(h.getInfo().objective_function_value)
    return time.perf_counter() - started, total


def main() -> None:
    silence_highs_banner()
    results = []
    for n in (100, 1_000, 10_000):
        topo = Topology.from_site(tree_site(n))
        capacity = np.repeat(topo.node_limit_a[:, None], 3, axis=1) * 0.6  # short: 60 % of every fuse
        capacity[0] = topo.node_limit_a[0] * 0.35
        req = AllocationRequest(topology=topo, capacity_a=capacity, phase_mask=topo.charger_phase_mask,
                                min_a=topo.min_current_a, max_a=topo.max_current_a, now_s=1000.0)
        result = allocate(req)
        assert not check_allocation(req, result.limit_a)
        t_alloc = median_s(lambda req=req: allocate(req))
        # As the controller calls it with a plan: distinct urgencies, and a target for half the
        # chargers (the other half held back), so both admission rounds run.
        rng = np.random.default_rng(1)
        planned = AllocationRequest(topology=topo, capacity_a=capacity, phase_mask=topo.charger_phase_mask,
                                    min_a=topo.min_current_a, max_a=topo.max_current_a, now_s=1000.0,
                                    urgency=rng.uniform(-36000, 0, n),
                                    target_a=np.where(rng.random(n) < 0.5, topo.max_current_a * 0.5, 0.0))
        assert not check_allocation(planned, allocate(planned).limit_a)
        t_planned = median_s(lambda req=planned: allocate(req))
        t_lp, lp_total = lp_snapshot(topo, capacity, topo.charger_phase_mask.astype(float), topo.max_current_a)
        ours = float((result.limit_a[:, None] * topo.charger_phase_mask).sum())
        results.append({"chargers": n, "nodes": topo.n_nodes, "allocator_median_ms": round(t_alloc * 1000, 3),
                        "allocator_with_plan_and_urgency_median_ms": round(t_planned * 1000, 3),
                        "lp_highs_build_solve_ms": round(t_lp * 1000, 1), "lp_over_allocator": round(t_lp / t_alloc, 1),
                        "allocated_phase_amps": round(ours, 1), "lp_optimum_no_minimums": round(lp_total, 1),
                        "max_node_load_ratio": round(float((node_load_a(topo, result.limit_a, topo.charger_phase_mask)
                                                            / np.maximum(capacity, 1e-9)).max()), 4),
                        "status": result.status})
    print(json.dumps({"benchmark": "allocator", "machine": machine(), "results": results}, indent=1))


if __name__ == "__main__":
    main()
