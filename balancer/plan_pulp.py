"""The planner's LP through pulp: the CBC fallback and a second route to cross-check HiGHS.

It takes the same ``LpModel`` matrices as the HiGHS route, so both solve the identical problem;
pulp adds solver choice (CBC bundled with pulp 3.x, or HiGHS through highspy).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pulp

from balancer.plan_types import LpModel

__all__ = ["solve_pulp"]

FloatArray = npt.NDArray[np.float64]


def solve_pulp(model: LpModel, cost: FloatArray, col_hi: FloatArray, row_lo: FloatArray, method: str,
               budget_s: float) -> tuple[str, FloatArray | None, str]:
    """Solve ``max cost @ v`` s.t. ``row_lo <= A v <= row_hi``, ``0 <= v <= col_hi`` with pulp."""
    n_col = model.a.shape[1]
    problem = pulp.LpProblem("plan", pulp.LpMaximize)
    v = [pulp.LpVariable(f"v{j}", lowBound=float(model.col_lo[j]), upBound=float(col_hi[j]))
         for j in range(n_col)]
    problem += pulp.lpDot([float(c) for c in cost], v)
    a = model.a.tocsr()
    for i in range(a.shape[0]):
        lo, hi = float(row_lo[i]), float(model.row_hi[i])
        start, end = a.indptr[i], a.indptr[i + 1]
        expr = pulp.lpSum(float(val) * v[int(j)] for j, val in
                          zip(a.indices[start:end], a.data[start:end], strict=True))
        if np.isfinite(hi):
            problem += expr <= hi
        if np.isfinite(lo):
            problem += expr >= lo
    limit = max(1, int(np.ceil(budget_s)))
    if method == "pulp-highs":
        solver = pulp.HiGHS(msg=False, timeLimit=limit)
    else:
        solver = pulp.PULP_CBC_CMD(msg=False, timeLimit=limit)
    problem.solve(solver)
    status = pulp.LpStatus[problem.status]
    if status != "Optimal":
        return ("infeasible" if status == "Infeasible" else "error"), None, f"{method}: {status}"
    return "optimal", np.array([var.value() or 0.0 for var in v], dtype=np.float64), ""
