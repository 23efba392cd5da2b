"""Invariant checks of allocations and plans, used at run time and by the tests.

They recompute the physics from the result instead of trusting the solver: node loads per phase
against capacity, each limit 0 or within [min, max], and on the charger's granularity.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from balancer.allocate import AllocationRequest, node_load_a

__all__ = ["check_allocation"]

FloatArray = npt.NDArray[np.float64]


def check_allocation(req: AllocationRequest, limit_a: FloatArray, tol: float = 1e-6) -> list[str]:
    """Every broken rule of ``limit_a`` for ``req``, as readable strings (empty when all hold)."""
    topo = req.topology
    problems: list[str] = []
    capacity = np.maximum(np.nan_to_num(np.asarray(req.capacity_a, dtype=np.float64), nan=0.0), 0.0)
    load = node_load_a(topo, limit_a, np.asarray(req.phase_mask, dtype=bool))
    for k, p in zip(*np.nonzero(load > capacity + tol), strict=True):
        name = topo.node_ids[k] or "connection"
        problems.append(f"{name} L{p + 1}: load {load[k, p]:.3f} A > capacity {capacity[k, p]:.3f} A")
    lo = np.asarray(req.min_a, dtype=np.float64)
    hi = np.asarray(req.max_a, dtype=np.float64)
    for i in np.flatnonzero((limit_a > tol) & (limit_a < lo - tol)):
        problems.append(f"{topo.charger_ids[i]}: limit {limit_a[i]:.3f} A below its minimum {lo[i]:.3f} A")
    for i in np.flatnonzero(limit_a > hi + tol):
        problems.append(f"{topo.charger_ids[i]}: limit {limit_a[i]:.3f} A above its maximum {hi[i]:.3f} A")
    steps = limit_a / topo.granularity_a
    for i in np.flatnonzero(np.abs(steps - np.round(steps)) > 1e-6):
        problems.append(f"{topo.charger_ids[i]}: limit {limit_a[i]!r} A not a multiple of "
                        f"{topo.granularity_a[i]:g} A")
    for i in np.flatnonzero(limit_a < -tol):
        problems.append(f"{topo.charger_ids[i]}: negative limit {limit_a[i]:.3f} A")
    return problems
