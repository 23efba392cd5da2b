"""Metrics of a simulated day: energy shares, violations, capacity use, fairness, compute time."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["churn_summary", "jain_index", "shares", "summarise", "violations"]


def jain_index(values: Sequence[float]) -> float:
    """Jain's fairness index (sum x)^2 / (n sum x^2): 1 when all equal, 1/n when one has all."""
    x = np.asarray(values, dtype=float)
    if len(x) == 0 or not np.any(x):
        return 1.0
    return float(x.sum() ** 2 / (len(x) * (x**2).sum()))


def shares(requested_wh: Sequence[float], delivered_wh: Sequence[float]) -> tuple[float, float, list[float]]:
    """(total share, worst car's share, each car's share) of requested energy delivered by departure."""
    req = np.asarray(requested_wh, dtype=float)
    got = np.minimum(np.asarray(delivered_wh, dtype=float), req)
    each = [float(g / r) if r > 0 else 1.0 for g, r in zip(got, req, strict=True)]
    total = float(got.sum() / req.sum()) if req.sum() > 0 else 1.0
    return total, (min(each) if each else 1.0), each


def violations(load_a: np.ndarray, capacity_a: np.ndarray, tol_a: float = 1e-6) -> tuple[int, float]:
    """(count of node/phase/step overloads, worst overshoot [A]); arrays of the same shape."""
    over = load_a - capacity_a
    bad = over > tol_a
    return int(bad.sum()), float(over[bad].max()) if bad.any() else 0.0


def summarise(requested: Sequence[float], delivered: Sequence[float], load_a: np.ndarray, capacity_a: np.ndarray,
              used_when_short: Sequence[float], decision_s: Sequence[float], sub_min_limits: int) -> dict[str, float]:
    total, worst, each = shares(requested, delivered)
    count, worst_over = violations(load_a, capacity_a)
    times = np.asarray(decision_s, dtype=float) if len(decision_s) else np.zeros(1)
    return {"delivered": total, "worst_car": worst, "violations": count, "worst_overshoot_a": worst_over,
            "capacity_used_when_short": float(np.mean(used_when_short)) if len(used_when_short) else float("nan"),
            "jain": jain_index(each), "decision_ms_median": float(np.median(times) * 1000),
            "decision_ms_p95": float(np.percentile(times, 95) * 1000), "limits_between_0_and_min": sub_min_limits}


COMPLETE_WH = 100.0
"""A session counts as completed when it left less than this short of its request (0.1 kWh)."""


def churn_summary(requested: Sequence[float], delivered: Sequence[float], pauses: Sequence[int],
                  resumes: Sequence[int], pushes: Sequence[int]) -> dict[str, float]:
    """Sessions completed (< 0.1 kWh short) and pauses, resumes, limit changes per car."""
    req = np.asarray(requested, dtype=float)
    got = np.asarray(delivered, dtype=float)
    n = max(len(req), 1)
    return {"cars": float(len(req)), "completed": float(np.sum(got >= req - COMPLETE_WH)),
            "pauses_per_car": float(np.sum(pauses) / n), "resumes_per_car": float(np.sum(resumes) / n),
            "pushes_per_car": float(np.sum(pushes) / n)}
