"""Shared helpers for the benchmarks: machine description and synthetic sites."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from balancer.model import Charger, Circuit, Site


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in open("/proc/cpuinfo"):  # noqa: SIM115
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "numpy": np.__version__}


def median_s(fn: Callable[[], object], repeat: int = 15) -> float:
    fn()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def tree_site(n: int, seed: int = 0, per_row: int = 25, rows_per_feeder: int = 10) -> Site:
    """Three-level tree (connection -> feeders -> rows), 70 % three-phase, 30 % single-phase."""
    rng = np.random.default_rng(seed)
    n_rows = max(1, -(-n // per_row))
    n_feeders = max(1, -(-n_rows // rows_per_feeder))
    circuits = [Circuit(id=f"f{f}", max_current_a=per_row * rows_per_feeder * 12.0) for f in range(n_feeders)]
    circuits += [Circuit(id=f"r{r}", parent=f"f{r // rows_per_feeder}", max_current_a=per_row * 16.0)
                 for r in range(n_rows)]
    chargers = []
    for i in range(n):
        row = f"r{i // per_row}"
        if rng.random() < 0.3:
            chargers.append(Charger(id=f"C{i}", circuit=row, phases=1, phase=("L1", "L2", "L3")[i % 3],
                                    max_current_a=32.0))
        else:
            chargers.append(Charger(id=f"C{i}", circuit=row, max_current_a=float(rng.choice([16.0, 32.0]))))
    return Site(id="bench", voltage_v=230.0, grid_limit_a=n * 10.0, fallback_kw=100.0, circuits=tuple(circuits),
                chargers=tuple(chargers))
