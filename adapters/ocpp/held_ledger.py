"""What a fleet of simulated chargers holds, summed, at every instant and in every slot ahead.

Replays every accepted SetChargingProfile (and every TxProfile dropped at a session's end) of the
simulated chargers' ``hold_log`` in arrival order across the fleet. After each change it evaluates
every charger's composite schedule (``ProfileStore.limit_at``: the Max profile capping the
Tx-or-TxDefault profile of the highest stack level) at that instant and at every later period
start of any profile held, and sums them: what the chargers would be allowed to draw, now and in
each slot ahead, if nothing else reached them. A charger holding nothing counts at its maximum.
Used by the tests and benchmarks to check DESIGN 4 from the chargers' side.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from adapters.ocpp.simulator import ProfileStore, SimulatedCharger

__all__ = ["Excess", "held_sums", "worst_excess"]


@dataclass(frozen=True)
class Excess:
    """The worst point: at ``at`` (a change) the chargers held ``held_a`` for instant ``slot``."""

    at: datetime
    slot: datetime
    held_a: float
    capacity_a: float

    @property
    def over_a(self) -> float:
        return self.held_a - self.capacity_a


def _starts(profile: dict[str, Any]) -> list[datetime]:
    schedule = profile["charging_schedule"]
    schedule = schedule[0] if isinstance(schedule, list) else schedule
    start = schedule.get("start_schedule")
    if not start:
        return []
    t0 = datetime.fromisoformat(str(start).replace("Z", "+00:00"))
    return [t0 + timedelta(seconds=p["start_period"]) for p in schedule["charging_schedule_period"]]


def held_sums(chargers: list[SimulatedCharger], *, since: datetime | None = None,
              until: datetime | None = None) -> Iterator[tuple[datetime, datetime, float]]:
    """(change time, instant, summed limit [A per phase]) after every change from ``since`` on,
    for that instant and every later period start before ``until``."""
    stores = {c.charger_id: ProfileStore() for c in chargers}
    by_id = {c.charger_id: c for c in chargers}
    merged = heapq.merge(*([(at, c.charger_id, k, evse, profile) for k, (at, evse, profile) in enumerate(c.hold_log)]
                           for c in chargers), key=lambda x: (x[0], x[2]))
    for at, cid, _k, evse, profile in merged:
        store = stores[cid]
        if profile is None:
            store.drop_tx()
        else:
            store.install(evse, profile)
        if since is not None and at < since:
            continue
        instants = {at} | {t for s in stores.values() for p in s.profiles.values() for t in _starts(p)
                           if t > at and (until is None or t < until)}
        for t in sorted(instants):
            total = 0.0
            for other_id, other in stores.items():
                sim = by_id[other_id]
                phases = sim.car.phases if sim.car else 3
                limit = other.limit_at(t, 1, True, phases)
                total += sim.max_current_a if limit is None else limit
            yield at, t, total


def worst_excess(sums: Iterator[tuple[datetime, datetime, float]],
                 capacity: Callable[[datetime, datetime], float]) -> Excess | None:
    """The point where the held sum goes furthest above ``capacity(change time, instant)``
    (None: nowhere above it)."""
    worst: Excess | None = None
    for at, t, total in sums:
        cap = capacity(at, t)
        if total > cap + 1e-6 and (worst is None or total - cap > worst.over_a):
            worst = Excess(at, t, total, cap)
    return worst
