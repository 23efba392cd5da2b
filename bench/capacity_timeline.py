"""The capacity in force, read every control step (the old path) against the pushed timeline.

One hour of 5-second control steps on a 100-charger site whose book holds 192 quarter-hour
blocks: reading the book over the 96-slot horizon and handing the array to the controller every
step (``set_capacity``: what the service did before) against ``forecast.timeline.TimelineFeed``,
which builds a ``CapacityTimeline`` only when the book, the link, the config or the slot changes.

Run: .venv/bin/python bench/capacity_timeline.py
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from balancer.control import Controller
from balancer.events import CapacityUpdated
from balancer.timeline import SLOT, horizon_slots, slot_floor
from bench.common import machine, tree_site
from forecast.blocks import CapacityForecast, ForecastedBlock
from forecast.book import ForecastBook
from forecast.timeline import TimelineFeed

T0 = datetime(2026, 3, 1, tzinfo=UTC)
STEP = timedelta(seconds=5)


def main() -> None:
    site = tree_site(100)
    book = ForecastBook()
    book.accept(CapacityForecast(site.id, "CONSUMPTION", tuple(
        ForecastedBlock(80.0 + k % 7, "ALL", "A", T0 + SLOT * k, T0 + SLOT * (k + 1)) for k in range(192))), T0)
    n_slots = horizon_slots(24)
    feed = TimelineFeed()

    def poll(ctl: Controller, now: datetime) -> None:
        capacity, sources = book.capacity_slots(site, slot_floor(now), n_slots, now=now)
        ctl.set_capacity(slot_floor(now), capacity, sources)

    def pushed(ctl: Controller, now: datetime) -> None:
        timeline = feed.update(book, site, now, 24)
        if timeline is not None:
            ctl.handle(CapacityUpdated(site.id, timeline))

    results: dict[str, dict[str, float]] = {}
    ways: tuple[tuple[str, Callable[[Controller, datetime], None]], ...] = (
        ("read_every_step", poll), ("timeline_feed", pushed))
    for name, refresh in ways:
        ctl = Controller(site)
        times = []
        for k in range(720):
            now = T0 + STEP * k
            started = time.perf_counter()
            refresh(ctl, now)
            times.append(time.perf_counter() - started)
        results[name] = {"median_us": round(statistics.median(times) * 1e6, 1),
                         "ms_per_hour": round(sum(times) * 1e3, 1)}
    print(json.dumps({"benchmark": "capacity_timeline", "machine": machine(), "results": results}, indent=1))


if __name__ == "__main__":
    main()
