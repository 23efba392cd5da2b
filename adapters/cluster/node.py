"""One instance's part in a cluster (DESIGN 3.12): its PostgreSQL store and the sites it controls.

The service asks ``controls(site_id)`` before it steps, pushes or persists a site. When this
instance gains a site it reads the site's state again from PostgreSQL (the former owner's
sessions, needs and held limits, the forecast book, the meter's counters) and wakes the control
loop, which re-sends what every charger should hold. When it loses one, every push still under
way for that site is cancelled at once.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from adapters.cluster.ownership import SiteOwnership
from adapters.cluster.pg_store import PgStore
from balancer.model import ClusterSettings, Config

if TYPE_CHECKING:
    from adapters.app import Service

__all__ = ["ClusterNode", "site_keys"]

log = logging.getLogger(__name__)


def site_keys(site_id: str) -> list[str]:
    """The store keys that belong to one site (read again by whoever takes the site over)."""
    return [f"controller:{site_id}", f"forecast:{site_id}", f"meter_import_wh:{site_id}", f"meter_history:{site_id}"]


class ClusterNode:
    def __init__(self, config: Config, service: Service) -> None:
        assert config.cluster is not None
        self.settings: ClusterSettings = config.cluster
        self.instance_id = self.settings.instance_id
        self.service = service
        self.store = PgStore(self.settings.postgres_url, self.instance_id)
        self.ownership = SiteOwnership(self.settings.postgres_url, self.instance_id, [s.id for s in config.sites],
                                       on_gained=self._gained, on_lost=self._lost)
        self._pushes: dict[str, set[asyncio.Task[Any]]] = {}
        self.counters = {"sites_gained": 0, "sites_lost": 0, "pushes_cancelled": 0}

    async def start(self) -> None:
        await self.ownership.start()

    async def stop(self) -> None:
        await self.ownership.stop()

    def controls(self, site_id: str) -> bool:
        return self.ownership.controls(site_id)

    def owner(self, site_id: str) -> str | None:
        return self.ownership.owners.get(site_id)

    def track_push(self, site_id: str, task: asyncio.Task[Any]) -> None:
        """A push for ``site_id``: cancelled if this instance loses the site before it is done."""
        tasks = self._pushes.setdefault(site_id, set())
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def _gained(self, site_id: str) -> None:
        service = self.service
        self.counters["sites_gained"] += 1
        if not self.store.refresh(site_keys(site_id)):
            log.warning("site %s: taken over without a fresh read of its state (database unreachable)", site_id)
        saved = self.store.get_json(f"controller:{site_id}")
        controller = service.controllers[site_id]
        if isinstance(saved, dict):
            controller.restore(saved)
        service.fp.reload(site_id)
        service.site_gained(site_id)

    def _lost(self, site_id: str) -> None:
        self.counters["sites_lost"] += 1
        for task in list(self._pushes.get(site_id, ())):
            if not task.done():
                task.cancel()
                self.counters["pushes_cancelled"] += 1

    def status(self) -> dict[str, Any]:
        return {"instance_id": self.instance_id, "controlled_sites": self.ownership.controlled(),
                "live_instances": self.ownership.live_instances, **self.counters}
