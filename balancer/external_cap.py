"""A cap set by another party (an OCPI ChargingProfile) applied to a charger's schedule. Pure.

The schedule is a step function (start, limit [A]); so is the cap (start, limit), with no cap
before its first start and after ``until``. The capped schedule is their pointwise minimum, with
a period starting wherever either changes: a cap that drops in the middle of a slot is in the
schedule the charger holds from that moment, not from the next slot. Where the cap lowers a limit
the result is rounded down to the charger's granularity and set to 0 below its minimum; the last
period (the failsafe at the horizon) is kept as it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from balancer.rounding import floor_to

__all__ = ["cap_at", "capped_periods"]


def cap_at(cap: Sequence[Sequence[float]], until: float | None, t: float) -> float | None:
    """The cap in force at ``t`` [epoch s] [A]; None when there is none."""
    if not cap or (until is not None and t >= until):
        return None
    found = None
    for start, limit in cap:
        if start > t:
            break
        found = float(limit)
    return found


def capped_periods(periods: Sequence[tuple[datetime, float]], cap: Sequence[Sequence[float]], until: float | None,
                   min_a: float, step_a: float) -> list[tuple[datetime, float]]:
    """``periods`` (all but the last) lowered to the cap at every moment; never raised."""
    if len(periods) < 2 or not cap:
        return list(periods)
    body, last = periods[:-1], periods[-1]
    tz = body[0][0].tzinfo or UTC
    first, end = body[0][0].timestamp(), last[0].timestamp()
    edges = {t.timestamp() for t, _ in body}
    edges.update(float(s) for s, _ in cap if first < s < end)
    if until is not None and first < until < end:
        edges.add(until)
    out: list[tuple[datetime, float]] = []
    k = 0
    for t in sorted(edges):
        while k + 1 < len(body) and body[k + 1][0].timestamp() <= t:
            k += 1
        value = body[k][1]
        limit = cap_at(cap, until, t)
        if limit is not None and limit < value:
            value = floor_to(limit, step_a, min_a) if step_a > 0 else (limit if limit >= min_a else 0.0)
        if not out or out[-1][1] != value:
            out.append((datetime.fromtimestamp(t, tz), value))
    out.append(last)
    return out
