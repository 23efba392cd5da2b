"""Decreases before increases, on whole schedules (pure functions, no I/O).

A charger's stack-1 profile is a step function of absolute time: (start, limit [A]) periods, each
limit holding until the next start, the last one for ever. What a charger may draw now AND in every
slot ahead is what it holds; a new schedule is an *increase* when it is higher than that anywhere
from now on, a *decrease* when it is lower anywhere. A schedule can be both (lower now, higher in
an hour): the fan-out (``OcppServer.apply``) first pushes the pointwise minimum of what the charger
holds and the new schedule, which is a pure decrease, and only once every charger's decrease is
accepted the new schedule itself.

Every schedule ends in the failsafe at the planning horizon, which moves on by a slot every 15
minutes. A held schedule whose only difference is a horizon a little behind the new one (its
failsafe tail starting in the last twelfth of the new horizon, at no more than the new tail's
value) is taken as holding the new one (``renew_tail``): the charger would fall back to its
failsafe there only if the balancer were gone for most of a day, and failsafes together fit
(DESIGN 4). Without this every charger got a push, and a decrease, at every slot boundary.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

__all__ = ["Periods", "breakpoints", "drop_a", "now_then_min", "peak_between", "pointwise_max", "pointwise_min",
           "raise_a", "raise_now_a", "renew_tail", "value_at"]

Periods = Sequence[tuple[datetime, float]]
EPS_A = 1e-9


def value_at(periods: Periods, t: datetime) -> float:
    """The limit in force at ``t`` (before the first start: the first limit)."""
    value = periods[0][1]
    for start, limit in periods:
        if start > t:
            break
        value = limit
    return value


def breakpoints(held: Periods, new: Periods) -> list[datetime]:
    """Every instant from the new schedule's start on where either schedule may change."""
    start = new[0][0]
    return sorted({start} | {t for t, _ in (*held, *new) if t > start})


def pointwise_min(held: Periods, new: Periods) -> tuple[tuple[datetime, float], ...]:
    """min(held, new) at every instant from ``new``'s start on, as periods (equal neighbours merged)."""
    out: list[tuple[datetime, float]] = []
    for t in breakpoints(held, new):
        value = min(value_at(held, t), value_at(new, t))
        if out and abs(out[-1][1] - value) <= EPS_A:
            continue
        out.append((t, value))
    return tuple(out)


def renew_tail(held: Periods, new: Periods) -> Periods:
    """``held`` with its failsafe tail replaced by ``new`` from the tail's start, when that tail
    starts in the last twelfth of ``new``'s horizon and is not above ``new``'s tail (module
    docstring); else ``held`` itself."""
    if len(held) < 2 or len(new) < 2:
        return held
    (held_end, held_tail), (new_end, new_tail) = held[-1], new[-1]
    if not held_end < new_end or held_tail > new_tail + EPS_A \
            or (new_end - held_end) * 12 > new_end - new[0][0]:
        return held
    return (*(p for p in held if p[0] < held_end), (held_end, value_at(new, held_end)),
            *(p for p in new if p[0] > held_end))


def now_then_min(held: Periods, new: Periods) -> tuple[tuple[datetime, float], ...]:
    """``new`` until its first change (the slot of the moment), then min(held, new): a rise now
    that leaves every slot ahead where it was, or lower."""
    if len(new) < 2:
        return tuple(new)
    cut = new[1][0]
    low = pointwise_min(held, new)
    out = [(new[0][0], new[0][1])]
    for t in (cut, *(t for t, _ in low if t > cut)):
        value = value_at(low, t)
        if abs(out[-1][1] - value) > EPS_A:
            out.append((t, value))
    return tuple(out)


def pointwise_max(a: Periods, b: Periods) -> tuple[tuple[datetime, float], ...]:
    """max(a, b) at every instant from the earlier start on, as periods (equal neighbours merged)."""
    out: list[tuple[datetime, float]] = []
    for t in sorted({t for t, _ in (*a, *b)}):
        value = max(value_at(a, t), value_at(b, t))
        if out and abs(out[-1][1] - value) <= EPS_A:
            continue
        out.append((t, value))
    return tuple(out)


def raise_a(held: Periods, new: Periods) -> float:
    """How far ``new`` goes above ``held`` at its highest point from now on [A] (0: nowhere)."""
    return max(0.0, max(value_at(new, t) - value_at(held, t) for t in breakpoints(held, new)))


def drop_a(held: Periods, new: Periods) -> float:
    """How far ``new`` goes below ``held`` at its lowest point from now on [A] (0: nowhere)."""
    return max(0.0, max(value_at(held, t) - value_at(new, t) for t in breakpoints(held, new)))


def raise_now_a(held: Periods, new: Periods) -> float:
    """How far ``new`` goes above ``held`` at its start, the moment it is sent [A] (0: not above)."""
    start = new[0][0]
    return max(0.0, value_at(new, start) - value_at(held, start))


def peak_between(periods: Periods, t0: datetime, t1: datetime) -> float:
    """The highest limit in force at any instant of [t0, t1]."""
    return max([value_at(periods, t0), value_at(periods, t1), *(v for t, v in periods if t0 < t <= t1)])
