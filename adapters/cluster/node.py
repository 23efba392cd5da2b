"""One instance's part in a cluster (DESIGN 3.12): its PostgreSQL store, the sites it controls,
and its NATS side as gateway of the chargers connected here and owner of its sites.

The service asks ``controls(site_id)`` before it steps, pushes or persists a site. When this
instance gains a site it reads the site's state again from PostgreSQL (the former owner's
sessions, needs and held limits, the forecast book, the meter's counters), counts every charger
offline (its last limit stays reserved, DESIGN 4) until a gateway reports it, asks the gateways
for their chargers (``sync``) and wakes the control loop, which re-sends what every charger should
hold. When it loses one, every push still under way for that site is cancelled at once.

Charger events go to the site's owner: handled here when this instance controls the site, else
published on NATS. Schedules go to the charger's gateway (the instance that sent its last event):
phase 1 (decreases) on every gateway, then phase 2 (increases), see ``adapters.cluster.bus``.
A meter reading pushed over HTTP and an OCPI command on a session reach the site's owner the same
way (request/reply), and the caller gets the owner's answer.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Any

from adapters.cluster.bus import GONE, METER_TIMEOUT_S, OCPI_TIMEOUT_S, VIEW_TIMEOUT_S, Bus
from adapters.cluster.ownership import SiteOwnership
from adapters.cluster.pg_store import PgStore
from adapters.http_body import error_body
from adapters.meter.push import Currents, MeterPushRefused
from adapters.ocpi.cpo_sessions import DONE_PREFIX
from balancer.events import ChargerOffline, ChargerSchedule, Event
from balancer.model import ClusterSettings, Config

if TYPE_CHECKING:
    from adapters.app import Service

__all__ = ["ClusterNode", "site_keys"]

log = logging.getLogger(__name__)


def site_keys(site_id: str) -> list[str]:
    """The store keys that belong to one site (read again by whoever takes the site over)."""
    return [f"controller:{site_id}", f"forecast:{site_id}", f"meter_import_wh:{site_id}", f"meter_history:{site_id}",
            f"compliance_reported:{site_id}", f"{DONE_PREFIX}{site_id}"]


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
        self._apply_locks: dict[str, asyncio.Lock] = {}
        self._generation: dict[str, int] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.gateway_of: dict[str, str] = {}
        """Charger id -> the instance holding its websocket, as the events of owned sites tell."""
        self.bus: Bus | None = None
        self.counters = {"sites_gained": 0, "sites_lost": 0, "pushes_cancelled": 0}
        self.lead_site = config.sites[0].id
        """The owner of this site speaks for the whole deployment (OSCP heartbeats, registration)."""
        self.store.lead_site = self.lead_site
        self.store.owned = lambda: {s: self.ownership.epochs.get(s, 0) for s in self.ownership.controlled()}

    async def start(self) -> None:
        service = self.service
        service.fp.before_change = self._fresh_book
        service.fp.on_stored = self._stored
        service.fp.durable = lambda site_id: self.store.fault is None  # the write of the book succeeded
        if service.ocpi is not None:  # ActiveChargingProfile updates: by the owner, from every stored cap
            service.ocpi.controls = self.controls
            service.ocpi.refresh = lambda prefix: self.store.refresh(prefix=prefix)
            service.ocpi.forward = self.remote_ocpi  # caps and preferences: applied by the site's owner
            service.ocpi.gather = self.remote_ocpi_site  # the lists: each site's part from its owner
            service.ocpi.stale = self.refresh_ocpi_site
            service.ocpi.shared = self.store  # callbacks: the cluster's outbox, sent by the site's owner
        self.bus = Bus(self.settings.nats_url, self.instance_id, service.ocpp, on_event=self._remote_event,
                       on_changed=self._changed, response_timeout_s=service.config.ocpp.response_timeout_s,
                       on_view=self._view, answers={"meter": self._meter, "ocpi": self._ocpi})
        await self.bus.start()
        await self.ownership.start()

    async def stop(self) -> None:
        await self.ownership.stop()
        if self.bus is not None:
            await self.bus.stop()
        for task in list(self._tasks):
            task.cancel()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("cluster task failed: %r", task.exception())

    # ----------------------------------------------------------------- events in
    def route_event(self, event: Event) -> None:
        """An event of a charger connected here: to the site's owner (this instance or over NATS)."""
        self._route(event, self.instance_id)

    def route_api_event(self, event: Event) -> None:
        """An event from the admin API (needs): to the site's owner; it says nothing of connections."""
        self._route(event, None)

    def _route(self, event: Event, gateway: str | None) -> None:
        cid = getattr(event, "charger_id", None)
        site_id = self.service.ocpp.site_of.get(cid or "", "")
        if not site_id or self.controls(site_id):
            self._deliver(gateway, event)
        elif self.bus is not None:
            self.bus.publish_event(site_id, event, gateway)

    def _remote_event(self, site_id: str, gateway: str | None, event: Event) -> None:
        if self.controls(site_id):
            self._deliver(gateway, event)

    def _deliver(self, gateway: str | None, event: Event) -> None:
        cid = getattr(event, "charger_id", None)
        if cid is not None and gateway is not None:
            if isinstance(event, ChargerOffline):
                if self.gateway_of.get(cid, gateway) != gateway:
                    return  # a late close of a connection the charger has already replaced elsewhere
                self.gateway_of.pop(cid, None)
            else:
                self.gateway_of[cid] = gateway
        self.service._on_event(event)

    def _changed(self, site_id: str, keys: list[str]) -> None:
        """Another instance stored the site's forecast book (the grid operator called it)."""
        if not self.controls(site_id):
            return
        self.store.refresh(keys)
        self.service.fp.reload(site_id)
        self.service._capacity_changed(site_id)

    def _fresh_book(self, site_id: str) -> None:
        """Before a forecast or heartbeat changes a book here: start from the stored one."""
        if not self.controls(site_id) and self.store.refresh([f"forecast:{site_id}"]):
            self.service.fp.reload(site_id)

    def _stored(self, site_id: str) -> None:
        if not self.controls(site_id) and self.bus is not None:
            self.bus.site_changed(site_id, [f"forecast:{site_id}"])

    def _view(self, site_id: str, kind: str) -> dict[str, Any] | None:
        """An admin read forwarded here: answered while this instance controls the site."""
        if not self.controls(site_id):
            return None
        return self.service.site_json(site_id) if kind == "site" else self.service.plan_json(site_id)

    async def remote_view(self, kind: str, site_id: str) -> dict[str, Any] | None:
        """The owner's live view for an admin read here (None: this instance controls the site, or
        no owner answered: the caller serves ``refresh_view``'s snapshot). Asked even while this
        instance's copy of the ownership table names no owner (it lags the locks by up to a tick):
        with no owner subscribed, the ask is repeated until one answers or ``VIEW_TIMEOUT_S`` passes."""
        if self.controls(site_id) or self.bus is None:
            return None
        return await self.bus.view(site_id, kind)

    def refresh_view(self, site_id: str) -> None:
        """For the admin API on an instance that does not control the site, when its owner did not
        answer: the owner's last snapshot (written every 5 s) and the stored forecast book, read again."""
        if self.controls(site_id):
            return
        if self.store.refresh([f"controller:{site_id}", f"forecast:{site_id}"]):
            saved = self.store.get_json(f"controller:{site_id}")
            if isinstance(saved, dict):
                self.service.controllers[site_id].restore(saved)
            self.service.fp.reload(site_id)
            self.service.refresh_capacity(site_id)

    # ----------------------------------------------------------------- asked of the owner
    async def remote_meter(self, site_id: str, current_a: Currents, at: datetime) -> tuple[int, dict[str, Any]] | None:
        """A pushed meter reading of a site another instance controls: (HTTP status, body) of its
        owner's answer, 503 naming why when none came; None when this instance controls the site."""
        if self.controls(site_id) or self.bus is None:
            return None
        reply = await self.bus.ask(site_id, "meter", {"current_a": list(current_a), "at": {"$dt": at.isoformat()}},
                                   METER_TIMEOUT_S)
        if isinstance(reply, dict) and isinstance(reply.get("status"), int) and isinstance(reply.get("body"), dict):
            return reply["status"], reply["body"]
        why = reply if isinstance(reply, str) else "the site's owner answered nonsense"
        log.warning("site %s: pushed meter reading not taken: %s", site_id, why)
        return 503, error_body(503, f"site {site_id}: {why}; push the reading again", "site_id")

    async def _meter(self, site_id: str, body: dict[str, Any]) -> dict[str, Any]:
        if not self.controls(site_id):
            return {"status": 503, "body": error_body(503, f"site {site_id}: instance {self.instance_id} no longer "
                                                           "controls it; push the reading again", "site_id")}
        try:
            raw = body["current_a"]
            current_a: Currents = (raw[0], raw[1], raw[2])
            at = datetime.fromisoformat(body["at"]["$dt"])
            self.service.meters.push_reading(site_id, current_a, at)
        except MeterPushRefused as exc:
            return {"status": exc.status, "body": error_body(exc.status, exc.message, exc.field)}
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            return {"status": 400, "body": error_body(400, f"bad forwarded reading: {exc!r}")}
        return {"status": 202, "body": {"site": site_id, "accepted": True, "at": at.isoformat()}}

    async def remote_ocpi(self, site_id: str, message: dict[str, Any]) -> dict[str, Any]:
        """An OCPI session command run by the site's owner: its reply, or a 503 naming why none came."""
        assert self.bus is not None
        reply = await self.bus.ask(site_id, "ocpi", message, OCPI_TIMEOUT_S)
        if isinstance(reply, dict) and {"status", "status_code", "message", "field", "data"} <= set(reply):
            return reply
        why = reply if isinstance(reply, str) else "the site's owner answered nonsense"
        log.warning("site %s: OCPI %s not run: %s", site_id, message.get("op"), why)
        return {"status": 503, "status_code": 3000, "message": f"site {site_id}: {why}; try again",
                "field": None, "data": None}

    async def remote_ocpi_site(self, site_id: str) -> dict[str, Any] | None:
        """A site's part of the OCPI lists from its owner's live view; None when none answers
        within ``VIEW_TIMEOUT_S`` (the caller builds it from ``refresh_ocpi_site``'s snapshot)."""
        if self.bus is None:
            return None
        reply = await self.bus.ask(site_id, "ocpi", {"op": "site"}, VIEW_TIMEOUT_S)
        data = reply.get("data") if isinstance(reply, dict) and reply.get("status") == 200 else None
        if not isinstance(data, dict) or not isinstance(data.get("location"), dict) \
                or not isinstance(data.get("sessions"), list):
            log.info("site %s: OCPI lists from its last snapshot: its owner did not answer (%s)", site_id, reply)
            return None
        return data

    def refresh_ocpi_site(self, site_id: str) -> None:
        self.refresh_view(site_id)
        self.store.refresh([f"{DONE_PREFIX}{site_id}"])

    async def _ocpi(self, site_id: str, message: dict[str, Any]) -> dict[str, Any]:
        ocpi = self.service.ocpi
        if ocpi is None or not self.controls(site_id):
            return {"status": 503, "status_code": 3000, "field": None, "data": None,
                    "message": f"site {site_id}: instance {self.instance_id} no longer controls it; try again"}
        if message.get("op") == "site":  # the lists' part of this site, for the instance asked
            return {"status": 200, "status_code": 1000, "message": "Success", "field": None,
                    "data": ocpi.site_part(site_id)}
        try:
            reply: dict[str, Any] = await ocpi.command(message)
        except (KeyError, TypeError, ValueError) as exc:
            return {"status": 400, "status_code": 2001, "message": f"bad forwarded command: {exc!r}",
                    "field": None, "data": None}
        return reply

    # ----------------------------------------------------------------- commands out
    async def apply(self, site_id: str, schedules: list[ChargerSchedule]) -> None:
        """Push one decision of an owned site to the chargers' gateways, decreases first everywhere.

        Only the latest decision of a site is pushed (an older one waiting for the lock is
        dropped). Before anything goes out, the site's state with the limits just decided is
        written to PostgreSQL: an instance that takes the site over after a crash mid-push then
        reserves, for every charger it cannot reach yet, at least the limit it may have received.
        No write, no push (the next decision tries again).
        """
        self._generation[site_id] = generation = self._generation.get(site_id, 0) + 1
        async with self._apply_locks.setdefault(site_id, asyncio.Lock()):
            if generation != self._generation[site_id] or not self.controls(site_id) or self.bus is None:
                return
            controller = self.service.controllers[site_id]
            self.store.put_json(f"controller:{site_id}", controller.snapshot(), flush=False)
            if not self.store.flush():
                log.warning("site %s: limits not pushed: their record could not be written first", site_id)
                return
            epoch = self.ownership.epochs.get(site_id, 0)
            groups: dict[str, list[ChargerSchedule]] = {}
            for schedule in schedules:
                gateway = self.gateway_of.get(schedule.charger_id)
                if gateway is not None:
                    groups.setdefault(gateway, []).append(schedule)
            if set(groups) <= {self.instance_id}:
                await self.service.chargers.apply(groups.get(self.instance_id, []))
                return
            fid = uuid.uuid4().hex
            done = await self._phase(site_id, epoch, fid, 1, groups)
            if not all(result is True for result in done.values()) or not self.controls(site_id):
                return  # the gateways flagged what was refused; the next decision sends the increases
            await self._phase(site_id, epoch, fid, 2, {gw: [] for gw in groups})

    async def _phase(self, site_id: str, epoch: int, fid: str, phase: int,
                     groups: dict[str, list[ChargerSchedule]]) -> dict[str, bool | str]:
        """One phase on every gateway at once. A gateway that stops running meanwhile (no NATS
        responder, or its database connection gone from ``live``) is not waited for: its chargers
        lost their websocket, so they count offline (their last limit reserved) until they are back
        elsewhere, and the site is decided again."""
        assert self.bus is not None
        bus = self.bus
        tasks = {gw: asyncio.create_task(bus.command(gw, site_id, epoch, fid, phase, items))
                 for gw, items in groups.items()}
        results: dict[str, bool | str] = {}
        try:
            while len(results) < len(tasks):
                pending = [t for gw, t in tasks.items() if gw not in results]
                await asyncio.wait(pending, timeout=0.2)
                for gw, task in tasks.items():
                    if gw in results:
                        continue
                    if task.done():
                        results[gw] = task.result()
                    elif gw != self.instance_id and gw not in self.ownership.live:
                        task.cancel()
                        results[gw] = GONE
        finally:
            for task in tasks.values():
                task.cancel()
        gone = [gw for gw, result in results.items() if result == GONE]
        if gone:
            now = self.service.now()
            for gw in gone:
                log.warning("site %s: gateway %s is gone; its chargers count as offline", site_id, gw)
                for schedule in groups[gw]:
                    self._deliver(gw, ChargerOffline(schedule.charger_id, now))
                for cid in [c for c, g in self.gateway_of.items() if g == gw]:
                    self._deliver(gw, ChargerOffline(cid, now))
            self.service._wake_soon()
        return results

    def controls(self, site_id: str) -> bool:
        return self.ownership.controls(site_id)

    def speaks_for(self, site_id: str | None) -> bool:
        """Whether this instance speaks for ``site_id`` (None: for the deployment, as the lead site's owner)."""
        return self.controls(self.lead_site if site_id is None else site_id)

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
        keys = site_keys(site_id)
        if site_id == self.lead_site:  # what the former speaker for the deployment knew of the grid operator
            keys += ["oscp:registered", "oscp:our_token", "oscp:required_behaviour"]
        if not self.store.refresh(keys):
            log.warning("site %s: taken over without a fresh read of its state (database unreachable)", site_id)
        saved = self.store.get_json(f"controller:{site_id}")
        controller = service.controllers[site_id]
        if isinstance(saved, dict):
            controller.restore(saved)
        service.fp.reload(site_id)
        now = service.now()
        for cid in controller.states:  # offline (its last limit reserved) until a gateway reports it
            if self.gateway_of.pop(cid, None) != self.instance_id or not service.ocpp.links[cid].connected:
                controller.handle(ChargerOffline(cid, now))
            else:
                self.gateway_of[cid] = self.instance_id
        if self.bus is not None:
            self._spawn(self.bus.own(site_id))
        if service.oscp_client is not None:
            service.oscp_client.kick()  # what the former owner left in the outbox goes out now
        if service.ocpi is not None:
            service.ocpi.kick()
        service.site_gained(site_id)

    def _lost(self, site_id: str) -> None:
        self.counters["sites_lost"] += 1
        for task in list(self._pushes.get(site_id, ())):
            if not task.done():
                task.cancel()
                self.counters["pushes_cancelled"] += 1
        if self.bus is not None:
            self._spawn(self.bus.disown(site_id))

    def status(self) -> dict[str, Any]:
        return {"instance_id": self.instance_id, "controlled_sites": self.ownership.controlled(),
                "live_instances": self.ownership.live_instances, **self.counters,
                **(self.bus.counters if self.bus is not None else {})}
