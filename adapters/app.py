"""The composition root: wires config, state, OCPP, OSCP, InfluxDB and the admin API to the core.

One ``Service`` runs every site of a config. Its control loop wakes on every event (a forecast, a
session, a meter sample...) and at least every ``control.interval_s``; per site it refreshes the
capacity in force, replans when due (the LP runs in a worker process, never on the event loop),
allocates, pushes schedules and writes metrics. The controller state is persisted by a task of
its own (every ``PERSIST_EVERY_S`` and right after a session starts or stops), so no step, push or
silent charger holds the snapshot back, and a failing disk never stops control.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from datetime import datetime
from pathlib import Path
from typing import Any

from aiohttp import web

from adapters.admin_backend import health_json, plan_json, site_json
from adapters.clock import utc_now
from adapters.config_reload import reload_config, watch_config
from adapters.grid_reporting import GridReporting
from adapters.highs_quiet import silence_highs_banner
from adapters.http_api import add_admin_routes
from adapters.meter.hub import MeterHub
from adapters.metrics import event_point, obedience_point, service_point
from adapters.ocpp.server import OcppServer
from adapters.oscp.endpoint import add_oscp_routes
from adapters.oscp.provider import FlexibilityProvider
from adapters.persist import PERSIST_EVERY_S, Persister
from adapters.planner_worker import planner_executor
from adapters.prometheus import service_metrics_text
from adapters.replanning import maybe_replan
from adapters.site_points import site_points
from adapters.store import StateStore, private_dir
from adapters.store_port import Store
from balancer.control import Controller
from balancer.events import (
    CapacityUpdated,
    Event,
    LimitConfirmed,
    MeterSample,
    NeedsUpdated,
    ObedienceChanged,
    ProfileResult,
    ReadingDue,
    SessionStarted,
    SessionStopped,
)
from balancer.model import Config
from balancer.plan import SolveOutcome
from balancer.ports import ChargerPort

__all__ = ["PERSIST_EVERY_S", "Service", "run_serve"]

log = logging.getLogger("balancer.service")


class Service:
    """The running balancer."""

    def __init__(self, config: Config, *, config_path: Path | None = None,
                 now: Callable[[], datetime] = utc_now, control_interval_s: float | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.now = now
        self.interval_s = control_interval_s or config.control.interval_s
        self.state_dir = Path(config.state_dir)
        private_dir(self.state_dir)
        self.cluster: Any = None  # cluster mode (DESIGN 3.12): PostgreSQL state, site ownership
        if config.cluster is not None:
            from adapters.cluster.node import ClusterNode

            self.cluster = ClusterNode(config, self)
        self.store: Store = self.cluster.store if self.cluster is not None else StateStore(
            self.state_dir / "state.sqlite")
        self.controllers: dict[str, Controller] = {}
        for site in config.sites:
            controller = Controller(site, config.control)
            saved = self.store.get_json(f"controller:{site.id}")
            if isinstance(saved, dict):
                controller.restore(saved)
            controller.history.load(self.store.get_json(f"sessions:{site.id}"))  # the arrival forecast's
            self.controllers[site.id] = controller
        self.ocpi: Any = None
        if config.ocpi is not None:
            from adapters.ocpi.cpo import OcpiCpo

            self.ocpi = OcpiCpo(config, self.store, self.controllers, self._on_event, now)
        self.fp = FlexibilityProvider(config, self.store, now=now, on_capacity_changed=self._capacity_changed)
        self.ocpp = OcppServer(config, on_event=self._on_event if self.cluster is None else self.cluster.route_event,
                               now=now)
        self.chargers: ChargerPort = self.ocpp
        """Every charger is reached through this port (``balancer.ports``); the OCPP server is the
        one transport today (README, "Architecture": adding one)."""
        self.share_failsafes()
        for controller in self.controllers.values():  # flags and held limits survive a restart
            for cid, state in controller.states.items():
                pusher = self.ocpp.links[cid].pusher if cid in self.ocpp.links else None
                if pusher is not None:
                    pusher.seed_allowed()
                if pusher is not None and not state.obeys:
                    pusher.restore_flag(state.draw_a)
                if pusher is not None:
                    pusher.verified = state.verified
        self.influx: Any = None
        if config.influxdb is not None:
            from adapters.influx import InfluxSink

            self.influx = InfluxSink(config.influxdb, spill_dir=self.state_dir / "influx-spill",
                                     controls=None if self.cluster is None else self._controls)
        self.oscp_client: Any = None
        self.meters = MeterHub(config, self.controllers, self.store, now=now, urgent=self._capacity_changed,
                               wake=self._wake_soon, controls=self._controls)
        if config.oscp.capacity_provider is not None:
            from adapters.oscp.client import OscpClient

            self.oscp_client = OscpClient(config, self.store, now=now,
                                          site_energy_wh=self._site_energy_wh,
                                          site_import_wh=self.meters.energy_wh,
                                          **({} if self.cluster is None else {"controls": self.cluster.speaks_for}))
            client = self.oscp_client
            self.fp.on_handshake = lambda body, request_id: client.handshake_acknowledge(request_id)
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        # The LP runs in its own process: HiGHS would otherwise hold the event loop's GIL for
        # seconds on a large site, and every charger would wait for it.
        self._executor = planner_executor()
        self._planning: dict[str, asyncio.Future[SolveOutcome]] = {}
        self._push_tasks: set[asyncio.Task[None]] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self.http_port = 0
        self.counters: dict[str, float] = {"control_steps": 0, "events": 0, "plans": 0,
                                           "plan_failures": 0, "pushes": 0, "push_failures": 0,
                                           "config_reloads": 0, "config_rejected": 0,
                                           "state_saves": 0, "state_save_failures": 0, "state_write_failures": 0,
                                           "compliance_errors": 0}
        self.last_step_s = 0.0
        self.started_at = time.monotonic()
        self.grid_reporting = GridReporting(self)
        self._urgent = False
        self.persister = Persister(self.store, self.controllers, self.counters, busy=lambda: self._urgent,
                                   controls=self._controls)  # only a site's owner writes its snapshot

    # ----------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        silence_highs_banner()
        for controller in self.controllers.values():
            self._refresh_capacity(controller, self.now())  # the restored capacity, before anything asks
        app = web.Application(client_max_size=self.config.http.max_body_bytes)
        add_oscp_routes(app, self.fp)
        if self.ocpi is not None:
            self.ocpi.add_routes(app, admin_token=self.config.http.admin_token)
        add_admin_routes(app, self, admin_token=self.config.http.admin_token,
                         listen_host=self.config.http.host,
                         max_body_bytes=lambda: self.config.http.max_body_bytes,
                         meter_sink=self.meters, now=self.now,
                         forward=None if self.cluster is None else self.cluster.remote_view,
                         meter_forward=None if self.cluster is None else self.cluster.remote_meter)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, self.config.http.host, self.config.http.port)
        await self._site.start()
        server = self._site._server
        sockets = getattr(server, "sockets", None) or []
        self.http_port = sockets[0].getsockname()[1] if sockets else self.config.http.port
        await self.chargers.start()
        await self.meters.start()
        if self.ocpi is not None:
            await self.ocpi.start()
            self.ocpi.restore()  # the caps and preferences of sessions that still run
        if self.influx is not None:
            await self.influx.start()
        if self.oscp_client is not None:
            await self.oscp_client.start()
        if self.cluster is not None:
            await self.cluster.start()
        self._tasks.append(asyncio.create_task(self._control_loop(), name="control-loop"))
        self._tasks.append(asyncio.create_task(self.persister.loop(), name="persist-loop"))
        if self.config_path is not None:
            self._tasks.append(asyncio.create_task(watch_config(self), name="config-watch"))
        log.info("service started: http port %s, ocpp port %s", self.http_port, self.ocpp.port)

    async def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for task in list(self._push_tasks):
            task.cancel()
        self._persist()
        if self.cluster is not None:
            await self.cluster.stop()  # after the last snapshot: the next owner reads it
        await self.meters.stop()
        await self.chargers.stop()
        if self.ocpi is not None:
            await self.ocpi.stop()
        if self.oscp_client is not None:
            await self.oscp_client.stop()
        if self.influx is not None:
            await self.influx.stop()
        if self._runner is not None:
            await self._runner.cleanup()
        self._executor.shutdown(wait=False, cancel_futures=True)
        self.store.close()
        log.info("service stopped")

    def share_failsafes(self) -> None:
        """The OCPP server pushes each charger's failsafe as soon as it can (``Pusher``)."""
        for controller in self.controllers.values():
            for i, cid in enumerate(controller.topology.charger_ids):
                self.ocpp.failsafe_a[cid] = float(controller.failsafe_a[i])

    # ----------------------------------------------------------------- events in
    def _on_event(self, event: Event) -> None:
        self.counters["events"] += 1
        charger_id = getattr(event, "charger_id", None)
        if self.ocpi is not None:
            self.ocpi.observe(event)  # before the controllers forget an ended session
        for controller in self.controllers.values():
            if charger_id is None or charger_id in controller.states:
                controller.handle(event)
        if isinstance(event, ProfileResult):
            self.counters["pushes"] += 1
            ok = event.result == "Accepted"
            if not ok:
                self.counters["push_failures"] += 1
            if self.influx is not None and charger_id is not None:
                site_id = self._site_of(charger_id)
                self.influx.write([event_point(site_id, event.at, kind="profile_push", charger=charger_id,
                                               ok=ok, result=event.result, limit_a=event.limit_a)])
            return  # a push result changes no decision by itself
        if isinstance(event, ObedienceChanged) and self.influx is not None and charger_id is not None:
            self.influx.write([obedience_point(self._site_of(charger_id), event.at, charger=charger_id,
                                               obeys=event.obeys, draw_a=event.draw_a, detail=event.detail)])
        if isinstance(event, (SessionStarted, SessionStopped, ObedienceChanged)):
            # A session, or a charger's flag, must survive a crash right after it changes.
            self.persister.soon()
        if isinstance(event, (MeterSample, LimitConfirmed, ReadingDue)):
            # Meter values arrive all the time (1,000 chargers every 10 s is 100 a second): the
            # next interval step uses them; waking on each would re-decide the site back to back.
            # A confirmed limit is what the decision that sent it counted on already; so is a
            # reading asked for after it.
            return
        self._wake.set()

    def _wake_soon(self) -> None:
        self._wake.set()

    def _capacity_changed(self, site_id: str) -> None:
        self._urgent = True
        self._wake.set()

    def _site_of(self, charger_id: str) -> str:
        for site_id, controller in self.controllers.items():
            if charger_id in controller.states:
                return site_id
        return ""

    def _controls(self, site_id: str) -> bool:
        return self.cluster is None or bool(self.cluster.controls(site_id))

    def _site_energy_wh(self, site_id: str) -> float:
        controller = self.controllers[site_id]
        return float(sum(s.energy_wh or 0.0 for s in controller.states.values()))

    # ----------------------------------------------------------------- control loop
    async def _control_loop(self) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.interval_s)
            self._wake.clear()
            if self._stopping.is_set():
                return
            started = time.perf_counter()
            for site_id in list(self.controllers):
                if not self._controls(site_id):
                    continue  # another instance controls it (or nobody yet: failsafe profiles hold)
                try:
                    self._step(site_id)
                except Exception:  # one bad step must not stop the control loop
                    log.exception("control step failed for site %s", site_id)
            self.last_step_s = time.perf_counter() - started
            self.counters["control_steps"] += 1
            if self.influx is not None:
                self.influx.write([service_point(self.now(), outbox_messages=self.store.outbox_size())])

    def _refresh_capacity(self, controller: Controller, now: datetime) -> None:
        """Hand the controller a new capacity timeline when there is one (``TimelineFeed``),
        and the export cap in force (V2X, DESIGN 3.9)."""
        timeline = self.fp.timeline(controller.site.id, now)
        if timeline is not None:
            controller.handle(CapacityUpdated(controller.site.id, timeline))
        controller.export_cap_a = self.fp.export_cap_a(controller.site.id)  # V2X (DESIGN 3.9)

    def _step(self, site_id: str) -> None:
        """Decide and push one site.

        After a capacity change the status, reports and metrics wait until the new limits are
        out: the push's completion wakes the loop again (``_push_done``) and that step does them.
        """
        controller = self.controllers[site_id]
        now = self.now()
        self._refresh_capacity(controller, now)
        maybe_replan(self, site_id, controller, now)
        schedules = controller.decide(now)
        if schedules:
            task = asyncio.create_task(self.chargers.apply(schedules) if self.cluster is None
                                       else self.cluster.apply(site_id, schedules))
            self._push_tasks.add(task)
            if self.cluster is not None:
                self.cluster.track_push(site_id, task)
            task.add_done_callback(self._push_done)
            if self._urgent:
                return
        elif not self._push_tasks:
            self._urgent = False
        status = controller.status(now)
        for cid, old, limit in controller.take_reason_changes():
            log.info("charger %s: limit reason %s -> %s: %s", cid, " ".join(x for x in old if x),
                     " ".join(x for x in (limit.code, limit.node, limit.phase) if x), limit.detail)
        self.grid_reporting.report(controller, status, now)
        if self.influx is not None:
            self.influx.write(site_points(controller.site, status, now, grid_online=self.fp.is_online(site_id)))

    def _push_done(self, task: asyncio.Task[None]) -> None:
        self._push_tasks.discard(task)
        if not self._push_tasks and self._urgent:
            self._urgent = False
            self._wake.set()  # now the replan held back while the new limits went out
        if not task.cancelled() and task.exception() is not None:
            log.error("pushing schedules failed: %r", task.exception())

    def _persist(self) -> None:
        self.persister.persist()

    def reload_config(self) -> bool:
        """Load the config file again; an invalid one is refused and the old one keeps running."""
        return reload_config(self)

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` as one of the service's tasks (cancelled at stop)."""
        self._tasks.append(asyncio.ensure_future(work))

    def wake(self) -> None:
        self._wake.set()

    # ----------------------------------------------------------------- admin backend
    def site_ids(self) -> list[str]:
        return list(self.controllers)

    def site_json(self, site_id: str) -> dict[str, Any] | None:
        return site_json(self, site_id)

    def plan_json(self, site_id: str) -> dict[str, Any] | None:
        return plan_json(self, site_id)

    def refresh_capacity(self, site_id: str) -> None:
        self._refresh_capacity(self.controllers[site_id], self.now())

    def site_gained(self, site_id: str) -> None:
        """This instance now controls ``site_id`` (cluster mode): decide and push it right away."""
        self.refresh_capacity(site_id)
        self._capacity_changed(site_id)

    def set_needs(self, charger_id: str, energy_wh: float | None, departure: datetime | None,
                  max_current_a: float | None, phases: int | None, discharge_allowed: bool | None = None) -> None:
        site_id = self._site_of(charger_id)
        if not site_id:
            raise KeyError(charger_id)
        state = self.controllers[site_id].states[charger_id]
        if self._controls(site_id) and state.transaction_id is None:  # else the owner checks for itself
            raise ValueError(f"charger {charger_id!r} has no running session")
        route = self._on_event if self.cluster is None else self.cluster.route_api_event
        route(NeedsUpdated(charger_id=charger_id, at=self.now(), energy_wh=energy_wh, departure=departure,
                           max_current_a=max_current_a, phases=phases, source="api", v2x=discharge_allowed))

    def health(self) -> dict[str, Any]:
        return health_json(self)

    def metrics_text(self) -> str:
        return service_metrics_text(self, self.now())


def run_serve(args: Any) -> int:
    """``balancer serve``: see ``adapters.serve.run_serve`` (kept here, where it always was)."""
    from adapters.serve import run_serve as run  # serve.py builds a Service: imported when called

    return run(args)
