"""V2X cost: the allocator at 10,000 chargers with 10 % V2X sessions against the same run without
V2X, and the LP at 1,000 sessions with 10 % V2X against the same sessions without.

Allocator: the tree of ``bench/allocator.py`` (10,000 chargers, three levels); the connection's
non-EV load exceeds its capacity by 400 A per phase (a building peak), so the V2X chargers carry it
(every tenth charger, discharge bound 16 A) and nobody charges; "without V2X" is the same instant
with no discharge bound (everyone paused, a compliance error) and, for scale, the same tree with a
capacity left for charging (the usual run of ``bench/allocator.py``). LP: the ``present`` case of
``bench/planner.py`` (1,000 cars, 96 slots, hourly decisions past 2 h), with a building peak over
the capacity in slots 16-23 (12:00-14:00 after a 08:00 start) and every tenth session V2X.

Run: .venv/bin/python bench/v2x.py   (prints JSON)
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapters.highs_quiet import silence_highs_banner
from balancer.allocate import AllocationRequest, allocate
from balancer.plan import plan
from balancer.topology import Topology
from bench.common import machine, median_s, tree_site
from bench.planner import START, sessions

N_ALLOC = 10_000
N_PLAN = 1_000
DEFICIT_A = 400.0


def allocator_rows() -> list[dict[str, object]]:
    topo = Topology.from_site(tree_site(N_ALLOC))
    n = topo.n_chargers
    v2x = np.arange(n) % 10 == 0
    capacity = np.repeat(topo.node_limit_a[:, None], 3, axis=1) * 0.6
    capacity[0] = 0.0  # the building alone is over the capacity in force
    base = AllocationRequest(topology=topo, capacity_a=capacity, phase_mask=topo.charger_phase_mask,
                             min_a=topo.min_current_a, max_a=topo.max_current_a, now_s=1000.0,
                             deficit_a=np.full(3, DEFICIT_A), export_room_a=np.full(3, 2 * DEFICIT_A),
                             discharge_max_a=np.where(v2x, 16.0, 0.0))
    rows = []
    for label, req in (("peak, 10 % V2X", base), ("peak, no V2X", replace(base, discharge_max_a=np.zeros(n)))):
        out = allocate(req)
        dis = np.maximum(-out.limit_a, 0.0)
        rows.append({"case": label, "chargers": n, "median_ms": round(median_s(lambda req=req: allocate(req)) * 1000, 3),
                     "status": out.status, "discharging": int((dis > 0).sum()),
                     "discharge_per_phase_a": [round(float(x), 1) for x in (dis[:, None] * topo.charger_phase_mask)
                                               .sum(axis=0)],
                     "charging": int((out.limit_a > 0).sum())})
    normal = np.repeat(topo.node_limit_a[:, None], 3, axis=1) * 0.6
    normal[0] = topo.node_limit_a[0] * 0.35
    for label, extra in (("no peak, 10 % V2X bounds given", {"deficit_a": np.zeros(3),
                                                             "discharge_max_a": np.where(v2x, 16.0, 0.0)}),
                         ("no peak, no V2X", {})):
        req = AllocationRequest(topology=topo, capacity_a=normal, phase_mask=topo.charger_phase_mask,
                                min_a=topo.min_current_a, max_a=topo.max_current_a, now_s=1000.0, **extra)
        out = allocate(req)
        rows.append({"case": label, "chargers": n, "median_ms": round(median_s(lambda req=req: allocate(req)) * 1000, 3),
                     "status": out.status, "discharging": int((out.limit_a < 0).sum()),
                     "charging": int((out.limit_a > 0).sum())})
    return rows


def planner_rows() -> list[dict[str, object]]:
    topo = Topology.from_site(tree_site(N_PLAN))
    capacity = np.full((96, 3), topo.node_limit_a[0] * 0.5)
    deficit = np.zeros((96, 3))
    capacity[16:24] = 0.0
    deficit[16:24] = 300.0
    export = deficit + 100.0
    plain = sessions(topo, N_PLAN, case="present")
    v2x = [replace(s, discharge_max_a=16.0) if i % 10 == 0 else s for i, s in enumerate(plain)]
    rows = []
    for label, ss, extra in (("10 % V2X, peak", v2x, {"deficit_a": deficit, "export_room_a": export}),
                             ("no V2X, same peak", plain, {"deficit_a": deficit, "export_room_a": export}),
                             ("no V2X, no V2X inputs", plain, {})):
        started = time.perf_counter()
        out = plan(topo, capacity, ss, START, budget_s=120.0, **extra)  # type: ignore[arg-type]
        seconds = time.perf_counter() - started
        row: dict[str, object] = {"case": label, "sessions": N_PLAN, "slots": 96, "status": out.status,
                                  "build_plus_solve_s": round(seconds, 3)}
        if out.plan is not None:
            limit = out.plan.limit_a
            dis = np.maximum(-limit, 0.0)
            peak = dis[:, 16:24]
            row.update({"planned_kwh": round(sum(out.plan.planned_wh.values()) / 1000, 1),
                        "discharging_pairs": int((dis > 0).sum()),
                        "peak_discharge_a_per_slot_min": round(float((peak[:, :, None] * topo.charger_phase_mask[:, None, :])
                                                                      .sum(axis=0).min()), 1),
                        "discharge_outside_peak": int((np.delete(dis, range(16, 24), axis=1) > 0).sum())})
        rows.append(row)
    return rows


def main() -> None:
    silence_highs_banner()
    print(json.dumps({"benchmark": "v2x", "machine": machine(), "start": (START + timedelta(0)).isoformat(),
                      "allocator": allocator_rows(), "planner": planner_rows()}, indent=1))


if __name__ == "__main__":
    main()
