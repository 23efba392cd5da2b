"""When a site's capacity in force must be read anew, and the ``CapacityTimeline`` it gives. Pure.

The capacity in force changes only when the book changes (a forecast with new blocks), when the
grid operator's link goes offline or comes back, when the site's config changes, or when a slot
boundary passes (the timeline moves on). ``TimelineFeed.update`` answers a new timeline exactly
then and None otherwise, so the controller is told of a change instead of asking for the whole
horizon every control step and comparing it with the last one.
"""

from __future__ import annotations

from datetime import datetime

from balancer.model import Site
from balancer.timeline import CapacityTimeline, horizon_slots, slot_floor
from forecast.book import ForecastBook

__all__ = ["TimelineFeed"]


class TimelineFeed:
    """Makes one site's timelines. Its revision counts the changes of what the capacity is read
    from (book, link, site config, horizon); a slot boundary alone keeps it."""

    def __init__(self) -> None:
        self.revision = 0
        self._read_from: tuple[int, bool, int] | None = None
        self._site: Site | None = None
        self._slot: datetime | None = None

    def update(self, book: ForecastBook, site: Site, now: datetime, horizon_h: float) -> CapacityTimeline | None:
        """The timeline over ``horizon_h`` hours from the slot holding ``now`` when something it
        depends on changed since the last one, else None. A reloaded config is a new ``site``
        object: compared by identity, not field by field (a large site has thousands)."""
        slot = slot_floor(now)
        n_slots = horizon_slots(horizon_h)
        read_from = (book.revision, book.link.online(now), n_slots)
        same = read_from == self._read_from and site is self._site
        if same and slot == self._slot:
            return None
        if self._read_from is not None and not same:
            self.revision += 1
        self._read_from, self._site, self._slot = read_from, site, slot
        return book.timeline(site, slot, n_slots, now=now, revision=self.revision)
