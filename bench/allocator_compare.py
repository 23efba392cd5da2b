"""The allocator of this checkout against the one of another git revision, in the same run.

Loads ``balancer/allocate.py`` as it is at ``--base`` (default ``main``) into a module of its own
(it shares the rest of ``balancer``), then times both call by call, alternating, on the cases of
``bench/allocator.py`` (the benchmark case, and with plan targets and urgencies), so machine noise
hits both alike. Limits must be equal, charger for charger.

Run: .venv/bin/python bench/allocator_compare.py [--base REV] [--chargers 10000] [--calls 300]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from balancer import allocate as current  # noqa: E402
from balancer.topology import Topology  # noqa: E402
from bench.common import machine, tree_site  # noqa: E402


def load_base(rev: str) -> ModuleType:
    source = subprocess.run(["git", "show", f"{rev}:balancer/allocate.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "allocate_base.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("allocate_base", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["allocate_base"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def cases(n: int) -> dict[str, dict[str, Any]]:
    topo = Topology.from_site(tree_site(n))
    capacity = np.repeat(topo.node_limit_a[:, None], 3, axis=1) * 0.6
    capacity[0] = topo.node_limit_a[0] * 0.35
    common = {"topology": topo, "capacity_a": capacity, "phase_mask": topo.charger_phase_mask,
              "min_a": topo.min_current_a, "max_a": topo.max_current_a, "now_s": 1000.0}
    rng = np.random.default_rng(1)
    planned = {**common, "urgency": rng.uniform(-36000, 0, n),
               "target_a": np.where(rng.random(n) < 0.5, topo.max_current_a * 0.5, 0.0)}
    return {"benchmark_case": common, "with_plan_and_urgency": planned}


def paired(base: ModuleType, kwargs: dict[str, Any], calls: int,
           clock: Callable[[], float] = time.perf_counter) -> tuple[list[float], list[float]]:
    """``calls`` timings of each allocator, one call of each in turn (the order swapping every
    pair), so that load from other processes falls on both alike. ``time.process_time`` counts
    only the CPU this process used: on a shared machine, time spent descheduled is left out."""
    reqs = (base.AllocationRequest(**kwargs), current.AllocationRequest(**kwargs))
    funcs = (base.allocate, current.allocate)
    for f, r in zip(funcs, reqs, strict=True):
        f(r)
    times: tuple[list[float], list[float]] = ([], [])
    for k in range(calls):
        for j in ((0, 1) if k % 2 == 0 else (1, 0)):
            started = clock()
            funcs[j](reqs[j])
            times[j].append(clock() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="main")
    parser.add_argument("--chargers", type=int, default=10_000)
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args()
    base = load_base(args.base)
    results = []
    for name, kwargs in cases(args.chargers).items():
        same = np.array_equal(base.allocate(base.AllocationRequest(**kwargs)).limit_a,
                              current.allocate(current.AllocationRequest(**kwargs)).limit_a)
        for clock_name, clock in (("wall", time.perf_counter), ("cpu", time.process_time)):
            before, after = paired(base, kwargs, args.calls, clock)
            b, a = float(np.median(before)), float(np.median(after))
            ratios = np.array(after) / np.maximum(np.array(before), 1e-9)
            results.append({"case": name, "clock": clock_name, "chargers": args.chargers, "calls": args.calls,
                            "base_median_ms": round(b * 1000, 3), "this_median_ms": round(a * 1000, 3),
                            "ratio_of_medians": round(a / b, 3),
                            "median_pair_ratio": round(float(np.median(ratios)), 3),
                            "base_p10_ms": round(float(np.percentile(before, 10)) * 1000, 3),
                            "this_p10_ms": round(float(np.percentile(after, 10)) * 1000, 3), "same_limits": same})
    print(json.dumps({"benchmark": "allocator_compare", "base": args.base, "machine": machine(),
                      "results": results}, indent=1))


if __name__ == "__main__":
    main()
