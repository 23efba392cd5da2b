"""The Flexibility Provider's state: forecasts and link state per site, persisted in SQLite."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

import numpy as np
import numpy.typing as npt

from adapters.clock import utc_now
from adapters.store_port import Store
from balancer.model import Config
from balancer.timeline import CapacityTimeline
from forecast.blocks import CapacityForecast
from forecast.book import ForecastBook
from forecast.timeline import TimelineFeed

__all__ = ["MAX_HEARTBEAT_INTERVAL_S", "FlexibilityProvider", "heartbeat_interval_s"]

log = logging.getLogger(__name__)

# The longest heartbeat interval a grid operator may ask for (a day); the endpoint refuses more.
MAX_HEARTBEAT_INTERVAL_S = 86_400


def heartbeat_interval_s(required_behaviour: Any) -> float | None:
    """The heartbeat interval a stored ``required_behaviour`` asks for, or None.

    Values stored before the endpoint bounded them (``Infinity``, ``1e308``) read as None, so the
    caller's default applies: heartbeats never stop and no date arithmetic overflows.
    """
    value = required_behaviour.get("heartbeat_interval") if isinstance(required_behaviour, dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 1 <= value <= MAX_HEARTBEAT_INTERVAL_S:
        return None
    return float(value)


class FlexibilityProvider:
    """Holds each site's ``ForecastBook``; every accepted change is stored before it is used."""

    def __init__(self, config: Config, store: Store, *, now: Callable[[], datetime] = utc_now,
                 on_capacity_changed: Callable[[str], None] | None = None) -> None:
        self.config = config
        self.store = store
        self.now = now
        self.on_capacity_changed = on_capacity_changed or (lambda site_id: None)
        self.books: dict[str, ForecastBook] = {}
        for site in config.sites:
            self.reload(site.id)
        self.feeds: dict[str, TimelineFeed] = {}
        self.registration: dict[str, Any] = store.get_json("oscp:registration") or {}
        self.required_behaviour: dict[str, Any] = store.get_json("oscp:required_behaviour") or {}
        self.counters = {"forecasts": 0, "heartbeats": 0, "rejected": 0, "repeats": 0}
        self.before_change: Callable[[str], None] = lambda site_id: None
        """Cluster mode: read the site's book from the store first (another instance may have changed it)."""
        self.on_stored: Callable[[str], None] = lambda site_id: None
        """Cluster mode: the site's book was stored here (its owner reads it again)."""
        self.durable: Callable[[str], bool] = lambda site_id: True
        """Whether the site's book as accepted is safe where the controlling instance reads it.
        One process: always (it runs on what it holds in memory). Cluster mode: only once it is in
        PostgreSQL; else the endpoint answers 503 so the grid operator sends it again."""
        self.on_handshake: Callable[[dict[str, Any], str | None], None] | None = None
        self.on_register: Callable[[dict[str, Any]], None] | None = None

    def reload(self, site_id: str) -> None:
        """Take the site's book from the store (in a cluster, another instance may have written it)."""
        raw = self.store.get_json(f"forecast:{site_id}")
        book = ForecastBook.from_json(raw) if isinstance(raw, dict) else ForecastBook()
        old = self.books.get(site_id)
        if old is not None:  # a new revision: the site's TimelineFeed then hands out a fresh timeline
            book.revision = old.revision + 1
        self.books[site_id] = book

    def update_config(self, config: Config) -> None:
        self.config = config

    def site_id_of_group(self, group_id: str) -> str | None:
        for site in self.config.sites:
            if site.group_id == group_id:
                return site.id
        return None

    def accept_forecast(self, site_id: str, forecast: CapacityForecast) -> None:
        self.before_change(site_id)
        book = self.books[site_id]
        book.accept(forecast, self.now())
        self.store.put_json(f"forecast:{site_id}", book.to_json())
        self.on_stored(site_id)
        self.counters["forecasts"] += 1
        self.on_capacity_changed(site_id)

    def heartbeat(self, offline_mode_at: datetime) -> None:
        """A heartbeat from the grid operator: one link for every site of this deployment."""
        now = self.now()
        for site_id in list(self.books):
            self.before_change(site_id)
            book = self.books[site_id]
            was_online = book.link.online(now)
            book.link.heartbeat(now, offline_mode_at)
            self.store.put_json(f"forecast:{site_id}", book.to_json())
            self.on_stored(site_id)
            if not was_online:
                log.info("grid operator back online for site %s", site_id)
                self.on_capacity_changed(site_id)
        self.counters["heartbeats"] += 1

    def register(self, body: dict[str, Any]) -> None:
        self.registration = body
        self.store.put_json("oscp:registration", body)
        if self.on_register is not None:
            self.on_register(body)

    def handshake(self, body: dict[str, Any], request_id: str | None) -> None:
        self.required_behaviour = body.get("required_behaviour") or {}
        self.store.put_json("oscp:required_behaviour", self.required_behaviour)
        if self.on_handshake is not None:
            self.on_handshake(body, request_id)

    def is_online(self, site_id: str) -> bool:
        return self.books[site_id].link.online(self.now())

    def timeline(self, site_id: str, now: datetime) -> CapacityTimeline | None:
        """The site's capacity in force over the planning horizon when it changed since the last
        call (a forecast, the link, the config, or a slot boundary: ``TimelineFeed``), else None."""
        feed = self.feeds.setdefault(site_id, TimelineFeed())
        return feed.update(self.books[site_id], self.config.site(site_id), now, self.config.control.plan_horizon_h)

    def capacity_slots(self, site_id: str, start: datetime, n_slots: int) -> tuple[npt.NDArray[np.float64], list[str]]:
        return self.books[site_id].capacity_slots(self.config.site(site_id), start, n_slots, now=self.now())

    def export_cap_a(self, site_id: str) -> npt.NDArray[np.float64] | None:
        """The GENERATION forecast in force now (3,) [A], the cap on V2X export; None: none."""
        now = self.now()
        return self.books[site_id].export_cap_a(self.config.site(site_id), now, now)
