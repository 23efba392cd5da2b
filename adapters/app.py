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
import signal
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from aiohttp import web

from adapters.clock import utc_now
from adapters.config_file import load_config, placeholder_secrets
from adapters.highs_quiet import silence_highs_banner
from adapters.http_api import add_admin_routes
from adapters.logs import setup_logging
from adapters.meter.hub import MeterHub, meter_fields, meter_point
from adapters.metrics import (
    charger_point,
    event_point,
    obedience_point,
    plan_points,
    service_point,
    site_point,
    wired_phases,
)
from adapters.ocpp.server import OcppServer
from adapters.oscp.endpoint import add_oscp_routes
from adapters.oscp.provider import FlexibilityProvider
from adapters.planner_worker import planner_executor
from adapters.prometheus import service_metrics_text
from adapters.store import StateStore, private_dir
from balancer.control import SLOT_S, Controller, PlanRequest, SiteStatus, slot_floor
from balancer.errors import InvalidInput
from balancer.events import (
    Event,
    LimitConfirmed,
    MeterSample,
    NeedsUpdated,
    ObedienceChanged,
    ProfileResult,
    SessionStarted,
    SessionStopped,
)
from balancer.grid_reports import adjust_blocks, compliance_problem, known_needs_wh
from balancer.model import Config
from balancer.plan import SolveOutcome, plan

__all__ = ["Service", "run_serve"]

log = logging.getLogger("balancer.service")

PERSIST_EVERY_S = 5.0
"""The controller state on disk is at most this old (plus one write) while the disk works."""
PERSIST_GAP_S = 0.25
"""Session events closer together than this share one snapshot (a reconnect storm writes a few)."""
PERSIST_YIELD_S = 1.0
"""A snapshot waits at most this long for the limits of a capacity change to go out first."""


def _solve(request: PlanRequest) -> SolveOutcome:
    """Run the LP for a request; any failure comes back as data, never as an exception."""
    try:
        return plan(request.topology, request.capacity_a, list(request.sessions), request.start,
                    budget_s=request.budget_s, fine_slots=request.fine_slots,
                    deficit_a=request.deficit_a, export_room_a=request.export_room_a)
    except Exception as exc:  # the planner must never leave chargers without limits
        log.exception("planner failed")
        return SolveOutcome(status="error", plan=None, solver="none", seconds=0.0, message=repr(exc))


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
        self.store = StateStore(self.state_dir / "state.sqlite")
        self.controllers: dict[str, Controller] = {}
        for site in config.sites:
            controller = Controller(site, config.control)
            saved = self.store.get_json(f"controller:{site.id}")
            if isinstance(saved, dict):
                controller.restore(saved)
            self.controllers[site.id] = controller
        self.ocpi: Any = None
        if config.ocpi is not None:
            from adapters.ocpi.cpo import OcpiCpo

            self.ocpi = OcpiCpo(config, self.store, self.controllers, self._on_event, now)
        self.fp = FlexibilityProvider(config, self.store, now=now, on_capacity_changed=self._capacity_changed)
        self.ocpp = OcppServer(config, on_event=self._on_event, now=now)
        self.influx: Any = None
        if config.influxdb is not None:
            from adapters.influx import InfluxSink

            self.influx = InfluxSink(config.influxdb, spill_dir=self.state_dir / "influx-spill")
        self.oscp_client: Any = None
        self.meters = MeterHub(config, self.controllers, self.store, now=now, urgent=self._capacity_changed,
                               wake=self._wake_soon)
        if config.oscp.capacity_provider is not None:
            from adapters.oscp.client import OscpClient

            self.oscp_client = OscpClient(config, self.store, now=now,
                                          site_energy_wh=self._site_energy_wh,
                                          site_import_wh=self.meters.energy_wh)
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
        self._config_mtime = self._mtime()
        self._started_at = time.monotonic()
        self._compliance_reported: dict[str, datetime] = {}
        self._last_fallback: dict[str, bool] = {}
        self._adjusted: dict[str, datetime] = {}
        self._urgent = False
        self._persist_soon = asyncio.Event()

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
                         meter_sink=self.meters, now=self.now)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, self.config.http.host, self.config.http.port)
        await self._site.start()
        server = self._site._server
        sockets = getattr(server, "sockets", None) or []
        self.http_port = sockets[0].getsockname()[1] if sockets else self.config.http.port
        await self.ocpp.start()
        await self.meters.start()
        if self.ocpi is not None:
            await self.ocpi.start()
            self.ocpi.restore()  # the caps and preferences of sessions that still run
        if self.influx is not None:
            await self.influx.start()
        if self.oscp_client is not None:
            await self.oscp_client.start()
        self._tasks.append(asyncio.create_task(self._control_loop(), name="control-loop"))
        self._tasks.append(asyncio.create_task(self._persist_loop(), name="persist-loop"))
        if self.config_path is not None:
            self._tasks.append(asyncio.create_task(self._watch_config(), name="config-watch"))
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
        await self.meters.stop()
        await self.ocpp.stop()
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
        if isinstance(event, (SessionStarted, SessionStopped)):
            self._persist_soon.set()  # a session must survive a crash right after it starts or stops
        if isinstance(event, (MeterSample, LimitConfirmed)):
            # Meter values arrive all the time (1,000 chargers every 10 s is 100 a second): the
            # next interval step uses them; waking on each would re-decide the site back to back.
            # A confirmed limit is what the decision that sent it counted on already.
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
                try:
                    self._step(site_id)
                except Exception:  # one bad step must not stop the control loop
                    log.exception("control step failed for site %s", site_id)
            self.last_step_s = time.perf_counter() - started
            self.counters["control_steps"] += 1
            if self.influx is not None:
                self.influx.write([service_point(self.now(), outbox_messages=self.store.outbox_size())])

    def _refresh_capacity(self, controller: Controller, now: datetime) -> None:
        start = slot_floor(now)
        n_slots = self.config.control.plan_horizon_h * 4
        capacity, sources = self.fp.capacity_slots(controller.site.id, start, n_slots)
        controller.set_capacity(start, capacity, sources)
        controller.export_cap_a = self.fp.export_cap_a(controller.site.id)  # V2X (DESIGN 3.9)

    def _step(self, site_id: str) -> None:
        """Decide and push one site.

        After a capacity change the status, reports and metrics wait until the new limits are
        out: the push's completion wakes the loop again (``_push_done``) and that step does them.
        """
        controller = self.controllers[site_id]
        now = self.now()
        self._refresh_capacity(controller, now)
        self._maybe_replan(site_id, controller, now)
        schedules = controller.decide(now)
        if schedules:
            task = asyncio.create_task(self.ocpp.apply(schedules))
            self._push_tasks.add(task)
            task.add_done_callback(self._push_done)
            if self._urgent:
                return
        elif not self._push_tasks:
            self._urgent = False
        status = controller.status(now)
        for cid, old, limit in controller.take_reason_changes():
            log.info("charger %s: limit reason %s -> %s: %s", cid, " ".join(x for x in old if x),
                     " ".join(x for x in (limit.code, limit.node, limit.phase) if x), limit.detail)
        self._report(controller, status, now)
        self._write_metrics(controller, status, now)

    def _push_done(self, task: asyncio.Task[None]) -> None:
        self._push_tasks.discard(task)
        if not self._push_tasks and self._urgent:
            self._urgent = False
            self._wake.set()  # now the replan held back while the new limits went out
        if not task.cancelled() and task.exception() is not None:
            log.error("pushing schedules failed: %r", task.exception())

    def _maybe_replan(self, site_id: str, controller: Controller, now: datetime) -> None:
        pending = self._planning.get(site_id)
        if pending is not None and not pending.done():
            return
        if self._urgent:
            # The capacity just changed: the LP (a whole core on a large site) waits until the new
            # limits have gone out, so the change reaches the chargers first.
            return
        if not controller.replan_due:
            return
        request = controller.plan_request(now)
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, _solve, request)
        self._planning[site_id] = future

        def done(fut: asyncio.Future[SolveOutcome]) -> None:
            if fut.cancelled():
                return
            try:
                outcome = fut.result()
            except Exception as exc:  # the worker process died: the allocator decides alone
                outcome = SolveOutcome(status="error", plan=None, solver="none", seconds=0.0, message=repr(exc))
                self._executor = planner_executor()
            self.counters["plans"] += 1
            if outcome.status not in ("optimal", "no_sessions"):
                self.counters["plan_failures"] += 1
                log.warning("site %s: plan %s (%s); allocator alone decides", site_id, outcome.status,
                            outcome.message)
            controller.accept_plan(outcome)
            if self.influx is not None and outcome.plan is not None:
                car_phases = {cid: s.car_phases for cid, s in controller.states.items()}
                self.influx.write(plan_points(site_id, outcome.plan, request.capacity_a,
                                              wired_phases(controller.site, car_phases)))
            if outcome.plan is not None:
                self._maybe_adjust(site_id, controller, request, outcome)
            self._wake.set()

        future.add_done_callback(done)

    def _maybe_adjust(self, site_id: str, controller: Controller, request: PlanRequest,
                      outcome: SolveOutcome) -> None:
        """AdjustGroupCapacityForecast (when enabled) when the plan cannot meet the known needs."""
        if self.oscp_client is None or not self.config.oscp.adjust_forecast or outcome.plan is None:
            return
        known = {cid for cid, s in controller.states.items() if s.need_wh is not None and s.transaction_id}
        requested, planned = known_needs_wh(((s.charger_id, s.energy_wh) for s in request.sessions),
                                            outcome.plan.planned_wh, known)
        now = self.now()
        blocks = adjust_blocks(requested_wh=requested, planned_wh=planned, capacity_a=request.capacity_a,
                               planned_load_a=outcome.plan.limit_a.sum(axis=0), start=request.start,
                               slot=timedelta(seconds=SLOT_S), grid_limit_a=controller.site.grid_limit_a,
                               last_sent=self._adjusted.get(site_id), now=now)
        if blocks:
            self._adjusted[site_id] = now
            self.oscp_client.adjust_forecast(site_id, blocks)
            log.info("site %s: asked the grid operator for more capacity in %d slots (short %.1f kWh)",
                     site_id, len(blocks), (requested - planned) / 1000)

    def _report(self, controller: Controller, status: SiteStatus, now: datetime) -> None:
        """Tell the grid operator when the site cannot comply (at most once per slot)."""
        site = controller.site
        fallback = status.capacity_source != "forecast"
        if self._last_fallback.get(site.id) != fallback:
            self._last_fallback[site.id] = fallback
            if self.influx is not None:
                self.influx.write([event_point(site.id, now, kind="fallback_on" if fallback else "fallback_off",
                                               ok=True, result=status.capacity_source)])
            log.info("site %s: capacity source %s", site.id, status.capacity_source)
        slot = slot_floor(now)
        message = compliance_problem(measured_a=status.measured_a, capacity_a=status.capacity_a,
                                     allocation_status=status.allocation_status, slot=slot,
                                     allocation_message=status.allocation_message,
                                     last_reported_slot=self._compliance_reported.get(site.id))
        if message is None:
            return
        self._compliance_reported[site.id] = slot
        log.warning("site %s: cannot comply: %s", site.id, message)
        self.counters["compliance_errors"] += 1
        if self.influx is not None:
            self.influx.write([event_point(site.id, now, kind="compliance_error", ok=False, result=message)])
        if self.oscp_client is not None:
            self.oscp_client.compliance_error(site.id, message, slot, slot + timedelta(minutes=15),
                                              status.capacity_a)

    def _write_metrics(self, controller: Controller, status: SiteStatus, now: datetime) -> None:
        if self.influx is None:
            return
        site = controller.site
        requested = sum((c["remaining_wh"] or 0.0) + c["session_delivered_wh"]
                        for c in status.chargers if c["transaction_id"])
        delivered = sum(c["session_delivered_wh"] for c in status.chargers if c["transaction_id"])
        points = [site_point(
            site.id, now, capacity_a=status.capacity_a, capacity_source=status.capacity_source,
            allocated_a=status.allocated_a, measured_a=status.measured_a,
            grid_online=self.fp.is_online(site.id), energy_requested_wh=requested,
            energy_delivered_wh=delivered,
            chargers_connected=sum(1 for c in status.chargers if c["connected"]),
            voltage_v=site.voltage_v,
        )]
        metered = meter_point(site.id, now, status)
        if metered is not None:
            points.append(metered)
        wired = wired_phases(site)
        for c in status.chargers:
            points.append(charger_point(
                site.id, c["id"], now, protocol=c["protocol"] or "", limit_a=c["limit_a"],
                measured_a=c["measured_a"], power_w=c["power_w"], energy_wh=c["energy_wh"],
                soc_pct=c["soc_pct"], state=c["state"], connected=c["connected"], obeys=c["obeys"],
                limit_reason=c["limit_reason"]["code"],
                grid_phases=wired.get(c["id"], (0, 1, 2)),
            ))
        self.influx.write(points)

    async def _persist_loop(self) -> None:
        """Snapshot the controllers every ``PERSIST_EVERY_S``, and soon after a session event.

        Independent of the control loop and of pushes: a charger that never answers keeps a push
        task alive for minutes, and the state must not wait for it beyond ``PERSIST_YIELD_S``
        (the snapshot, 10-55 ms at 200-1,000 chargers, would delay a decrease). A failed write is
        retried here.
        """
        loop = asyncio.get_running_loop()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._persist_soon.wait(), timeout=PERSIST_EVERY_S)
            self._persist_soon.clear()
            deadline = loop.time() + PERSIST_YIELD_S
            while self._urgent and loop.time() < deadline:
                await asyncio.sleep(0.05)
            self._persist()
            await asyncio.sleep(PERSIST_GAP_S)

    def _persist(self) -> None:
        """Write every controller's snapshot (and whatever else is pending); never raises."""
        try:
            for site_id, controller in self.controllers.items():
                self.store.put_json(f"controller:{site_id}", controller.snapshot(), flush=False)
            ok = self.store.flush()
        except Exception:  # a snapshot bug must not end the persist loop; the next round tries again
            log.exception("state snapshot failed")
            ok = False
        self.counters["state_saves" if ok else "state_save_failures"] += 1
        self.counters["state_write_failures"] = self.store.failures

    # ----------------------------------------------------------------- config reload
    def _mtime(self) -> float:
        if self.config_path is None:
            return 0.0
        try:
            return self.config_path.stat().st_mtime
        except OSError:
            return 0.0

    async def _watch_config(self) -> None:
        while True:
            await asyncio.sleep(2.0)
            mtime = self._mtime()
            if mtime != self._config_mtime:
                self._config_mtime = mtime
                self.reload_config()

    def reload_config(self) -> bool:
        """Load the config file again; an invalid one is refused and the old one keeps running."""
        if self.config_path is None:
            return False
        try:
            new = load_config(self.config_path)
        except InvalidInput as exc:
            self.counters["config_rejected"] += 1
            log.error("config reload refused, keeping the running config: %s", exc)
            self._config_event(ok=False, result=str(exc))
            return False
        if {s.id for s in new.sites} != set(self.controllers) or new.state_dir != self.config.state_dir \
                or new.ocpp.port != self.config.ocpp.port or new.http.port != self.config.http.port \
                or (new.ocpi is None) != (self.ocpi is None):
            self.counters["config_rejected"] += 1
            log.error("config reload refused: sites, ports, state_dir and adding or removing ocpi need a restart")
            self._config_event(ok=False, result="sites, ports, state_dir and adding or removing ocpi need a restart")
            return False
        for site in new.sites:
            self.controllers[site.id].reconfigure(site)
        self.ocpp.update_config(new)
        self.fp.update_config(new)
        self._tasks.append(asyncio.ensure_future(self.meters.update_config(new)))
        if self.ocpi is not None:
            self.ocpi.update_config(new)
        self.config = new
        self.counters["config_reloads"] += 1
        log.info("config reloaded from %s", self.config_path)
        self._config_event(ok=True, result=str(self.config_path))
        self._wake.set()
        return True

    def _config_event(self, *, ok: bool, result: str) -> None:
        """A ``config_reloaded`` / ``config_rejected`` annotation on every site's dashboard."""
        if self.influx is not None:
            self.influx.write([event_point(site_id, self.now(), kind="config_reloaded" if ok else "config_rejected",
                                           ok=ok, result=result) for site_id in self.controllers])

    # ----------------------------------------------------------------- admin backend
    def site_ids(self) -> list[str]:
        return list(self.controllers)

    def site_json(self, site_id: str) -> dict[str, Any] | None:
        controller = self.controllers.get(site_id)
        if controller is None:
            return None
        status = controller.status(self.now())
        chargers = []
        for c in status.chargers:
            live = self.ocpp.charger_status(c["id"])
            chargers.append({**c, "protocol": live.get("protocol") or c["protocol"],
                             "connected": bool(live.get("connected", c["connected"])),
                             "obeys": live.get("obeys", c["obeys"]),
                             "capabilities": live.get("capabilities"),
                             # What its composite schedule allowed at the last read-back: all its
                             # profiles combined, what it really may draw (None: not read yet).
                             "composite_a": live.get("composite_a")})
        return {
            "id": site_id,
            "at": status.at.isoformat(),
            "capacity_w": round(status.capacity_w, 1),
            "capacity_a": [round(x, 2) for x in status.capacity_a],
            "capacity_source": status.capacity_source,
            "allocated_a": [round(x, 2) for x in status.allocated_a],
            "idle_allocated_a": [round(x, 2) for x in status.idle_allocated_a],
            "measured_a": [round(x, 2) for x in status.measured_a],
            "grid_operator_online": self.fp.is_online(site_id),
            "allocation_status": status.allocation_status,
            "plan_status": controller.plan_status,
            "plan_message": controller.plan_message,
            **meter_fields(status),
            "chargers": chargers,
        }

    def plan_json(self, site_id: str) -> dict[str, Any] | None:
        controller = self.controllers.get(site_id)
        if controller is None:
            return None
        now = self.now()
        start = slot_floor(now)
        n_slots = self.config.control.plan_horizon_h * 4
        capacity = controller.capacity_ahead(start, n_slots)
        body: dict[str, Any] = {"site": site_id, "start": start.isoformat(), "slot_minutes": 15,
                                "status": controller.plan_status, "message": controller.plan_message,
                                "capacity_a": np.round(capacity, 2).tolist(), "chargers": {},
                                "hourly_from_slot": None}
        result = controller.plan
        if result is not None:
            offset = int((start - result.start).total_seconds() // result.slot_s)
            for j, cid in enumerate(result.charger_ids):
                row = result.limit_a[j, max(offset, 0):]
                body["chargers"][cid] = {"limit_a": np.round(row, 2).tolist()}
            body["plan_start"] = result.start.isoformat()
            hourly = result.hourly_from_slot
            body["hourly_from_slot"] = None if hourly is None else max(hourly - offset, 0)
        return body

    def set_needs(self, charger_id: str, energy_wh: float | None, departure: datetime | None,
                  max_current_a: float | None, phases: int | None, discharge_allowed: bool | None = None) -> None:
        site_id = self._site_of(charger_id)
        if not site_id:
            raise KeyError(charger_id)
        state = self.controllers[site_id].states[charger_id]
        if state.transaction_id is None:
            raise ValueError(f"charger {charger_id!r} has no running session")
        self._on_event(NeedsUpdated(charger_id=charger_id, at=self.now(), energy_wh=energy_wh,
                                    departure=departure, max_current_a=max_current_a, phases=phases,
                                    source="api", v2x=discharge_allowed))

    def health(self) -> dict[str, Any]:
        """``status`` "ok", or "degraded" with ``reasons`` while control runs on but something is off.

        ``state_age_seconds``: how old the state on disk is, i.e. what a crash now would lose.
        """
        store = self.store
        now = time.time()
        reasons = []
        if store.fault is not None:
            reasons.append(f"state not persisted since {now - (store.fault_since or now):.0f} s: {store.fault}")
        return {"status": "degraded" if reasons else "ok", "reasons": reasons,
                "uptime_s": round(time.monotonic() - self._started_at, 1), "sites": len(self.controllers),
                "state_age_seconds": round(max(now - store.saved_at, 0.0), 3),
                "state_saved_at": datetime.fromtimestamp(store.saved_at, UTC).isoformat(),
                "state_pending_writes": store.pending, "state_write_failures": store.failures}

    def metrics_text(self) -> str:
        return service_metrics_text(self, self.now())


async def _serve(config: Config, config_path: Path) -> int:
    service = Service(config, config_path=config_path)
    await service.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, service.reload_config)
    print(f"balancer serving: http://{config.http.host}:{service.http_port} "
          f"ws://{config.ocpp.host}:{service.ocpp.port}/ocpp/{{charger_id}}", flush=True)
    await stop.wait()
    log.info("shutting down")
    await service.stop()
    return 0


def run_serve(args: Any) -> int:
    """``balancer serve --config PATH [--log-format json|text] [--log-level LEVEL]``."""
    setup_logging(getattr(args, "log_format", "json"), getattr(args, "log_level", "INFO"))
    path = Path(args.config)
    try:
        config = load_config(path)
    except InvalidInput as exc:
        print(f"{path}: {len(exc.problems)} problem(s)")
        for problem in exc.problems:
            print(f"  {problem}")
        return 2
    placeholders = placeholder_secrets(config)
    if placeholders:
        print(f"{path}: refusing to serve with {len(placeholders)} placeholder secret(s)", file=sys.stderr)
        for problem in placeholders:
            print(f"  {problem}", file=sys.stderr)
        return 2
    return asyncio.run(_serve(config, path))
