"""The composition root: wires config, state, OCPP, OSCP, InfluxDB and the admin API to the core.

One ``Service`` runs every site of a config. Its control loop wakes on every event (a forecast, a
session, a meter sample...) and at least every ``control.interval_s``; per site it refreshes the
capacity in force, replans when due (the LP runs in a worker process, never on the event loop),
allocates, pushes schedules, writes metrics and persists the controller state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import signal
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from aiohttp import web

from adapters.clock import utc_now
from adapters.config_file import load_config
from adapters.highs_quiet import silence_highs_banner
from adapters.http_api import add_admin_routes
from adapters.metrics import charger_point, event_point, plan_points, site_point
from adapters.ocpp.server import OcppServer
from adapters.oscp.endpoint import add_oscp_routes
from adapters.oscp.provider import FlexibilityProvider
from adapters.store import StateStore
from balancer.control import Controller, PlanRequest, SiteStatus, slot_floor
from balancer.errors import InvalidInput
from balancer.events import Event, MeterSample, NeedsUpdated, ProfileResult
from balancer.model import Config
from balancer.plan import SolveOutcome, plan

__all__ = ["Service", "run_serve"]

log = logging.getLogger("balancer.service")


def _solve(request: PlanRequest) -> SolveOutcome:
    """Run the LP for a request; any failure comes back as data, never as an exception."""
    try:
        return plan(request.topology, request.capacity_a, list(request.sessions), request.start,
                    budget_s=request.budget_s, fine_slots=request.fine_slots)
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
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.store = StateStore(self.state_dir / "state.sqlite")
        self.controllers: dict[str, Controller] = {}
        for site in config.sites:
            controller = Controller(site, config.control)
            saved = self.store.get_json(f"controller:{site.id}")
            if isinstance(saved, dict):
                controller.restore(saved)
            self.controllers[site.id] = controller
        self.fp = FlexibilityProvider(config, self.store, now=now, on_capacity_changed=self._capacity_changed)
        self.ocpp = OcppServer(config, on_event=self._on_event, now=now)
        self.influx: Any = None
        if config.influxdb is not None:
            from adapters.influx import InfluxSink

            self.influx = InfluxSink(config.influxdb, spill_dir=self.state_dir / "influx-spill")
        self.oscp_client: Any = None
        if config.oscp.capacity_provider is not None:
            from adapters.oscp.client import OscpClient

            self.oscp_client = OscpClient(config, self.store, now=now,
                                          site_energy_wh=self._site_energy_wh)
            client = self.oscp_client
            self.fp.on_handshake = lambda body, request_id: client.handshake_acknowledge(request_id)
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        # The LP runs in its own process: HiGHS would otherwise hold the event loop's GIL for
        # seconds on a large site, and every charger would wait for it.
        self._executor = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=silence_highs_banner)
        self._planning: dict[str, asyncio.Future[SolveOutcome]] = {}
        self._push_tasks: set[asyncio.Task[None]] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self.http_port = 0
        self.counters: dict[str, float] = {"control_steps": 0, "events": 0, "plans": 0,
                                           "plan_failures": 0, "pushes": 0, "push_failures": 0,
                                           "config_reloads": 0, "config_rejected": 0}
        self.last_step_s = 0.0
        self._config_mtime = self._mtime()
        self._started_at = time.monotonic()
        self._compliance_reported: dict[str, datetime] = {}
        self._last_fallback: dict[str, bool] = {}
        self._adjusted: dict[str, datetime] = {}
        self._urgent = False

    # ----------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        silence_highs_banner()
        for controller in self.controllers.values():
            self._refresh_capacity(controller, self.now())  # the restored capacity, before anything asks
        app = web.Application(client_max_size=self.config.http.max_body_bytes)
        add_oscp_routes(app, self.fp)
        add_admin_routes(app, self, admin_token=self.config.http.admin_token,
                         listen_host=self.config.http.host)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, self.config.http.host, self.config.http.port)
        await self._site.start()
        server = self._site._server
        sockets = getattr(server, "sockets", None) or []
        self.http_port = sockets[0].getsockname()[1] if sockets else self.config.http.port
        await self.ocpp.start()
        if self.influx is not None:
            await self.influx.start()
        if self.oscp_client is not None:
            await self.oscp_client.start()
        self._tasks.append(asyncio.create_task(self._control_loop(), name="control-loop"))
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
        await self.ocpp.stop()
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
        if isinstance(event, MeterSample):
            # Meter values arrive all the time (1,000 chargers every 10 s is 100 a second): the
            # next interval step uses them; waking on each would re-decide the site back to back.
            return
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
            deferred = False
            for site_id in list(self.controllers):
                try:
                    deferred |= self._step(site_id)
                except Exception:  # one bad step must not stop the control loop
                    log.exception("control step failed for site %s", site_id)
            self.last_step_s = time.perf_counter() - started
            self.counters["control_steps"] += 1
            if not deferred:
                self._persist()

    def _refresh_capacity(self, controller: Controller, now: datetime) -> None:
        start = slot_floor(now)
        n_slots = self.config.control.plan_horizon_h * 4
        capacity, sources = self.fp.capacity_slots(controller.site.id, start, n_slots)
        controller.set_capacity(start, capacity, sources)

    def _step(self, site_id: str) -> bool:
        """Decide and push one site; True when the bookkeeping waits for the next step.

        After a capacity change the status, reports, metrics and the SQLite snapshot (tens of ms
        at 1,000 chargers) wait until the new limits are out: the push's completion wakes the
        loop again (``_push_done``) and that step does them.
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
                return True
        elif not self._push_tasks:
            self._urgent = False
        status = controller.status(now)
        self._report(controller, status, now)
        self._write_metrics(controller, status, now)
        return False

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
                self._executor = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                                     initializer=silence_highs_banner)
            self.counters["plans"] += 1
            if outcome.status not in ("optimal", "no_sessions"):
                self.counters["plan_failures"] += 1
                log.warning("site %s: plan %s (%s); allocator alone decides", site_id, outcome.status,
                            outcome.message)
            controller.accept_plan(outcome)
            if self.influx is not None and outcome.plan is not None:
                self.influx.write(plan_points(site_id, outcome.plan, request.capacity_a))
            if outcome.plan is not None:
                self._maybe_adjust(site_id, controller, request, outcome)
            self._wake.set()

        future.add_done_callback(done)

    def _maybe_adjust(self, site_id: str, controller: Controller, request: PlanRequest,
                      outcome: SolveOutcome) -> None:
        """AdjustGroupCapacityForecast (when enabled): the plan cannot meet the known needs.

        Only cars with known needs count (unknown needs are planned as "as much as possible").
        For the slots where the plan fills the capacity, ask for it scaled up by the shortfall's
        share of what is planned, at most the connection limit; at most once an hour.
        """
        if self.oscp_client is None or not self.config.oscp.adjust_forecast or outcome.plan is None:
            return
        known = {cid for cid, s in controller.states.items() if s.need_wh is not None and s.transaction_id}
        requested = sum(s.energy_wh for s in request.sessions if s.charger_id in known)
        planned = sum(outcome.plan.planned_wh.get(cid, 0.0) for cid in known)
        shortfall = requested - planned
        now = self.now()
        last = self._adjusted.get(site_id)
        if shortfall < 1000.0 or planned <= 0 or (last is not None and now - last < timedelta(hours=1)):
            return
        cap = request.capacity_a.min(axis=1)
        load = outcome.plan.limit_a.sum(axis=0)
        factor = 1.0 + shortfall / planned
        blocks = []
        for k in np.flatnonzero(load >= 0.99 * cap[: len(load)]):
            start = request.start + timedelta(minutes=15 * int(k))
            want = min(controller.site.grid_limit_a, float(cap[k]) * factor)
            blocks.append({"capacity": round(want, 1), "phase": "ALL", "unit": "A",
                           "start_time": start.isoformat().replace("+00:00", "Z"),
                           "end_time": (start + timedelta(minutes=15)).isoformat().replace("+00:00", "Z")})
        if blocks:
            self._adjusted[site_id] = now
            self.oscp_client.adjust_forecast(site_id, blocks)
            log.info("site %s: asked the grid operator for more capacity in %d slots (short %.1f kWh)",
                     site_id, len(blocks), shortfall / 1000)

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
        over = max(m - c for m, c in zip(status.measured_a, status.capacity_a, strict=True))
        infeasible = status.allocation_status == "infeasible"
        if not (infeasible or over > 1.0):
            return
        slot = slot_floor(now)
        if self._compliance_reported.get(site.id) == slot:
            return
        self._compliance_reported[site.id] = slot
        message = ("minimum currents of cars that cannot be paused exceed the capacity" if infeasible
                   else f"measured draw exceeds capacity by {over:.1f} A")
        log.warning("site %s: cannot comply: %s", site.id, message)
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
        for c in status.chargers:
            points.append(charger_point(
                site.id, c["id"], now, protocol=c["protocol"] or "", limit_a=c["limit_a"],
                measured_a=c["measured_a"], power_w=c["power_w"], energy_wh=c["energy_wh"],
                soc_pct=c["soc_pct"], state=c["state"], connected=c["connected"], obeys=c["obeys"],
            ))
        self.influx.write(points)

    def _persist(self) -> None:
        for site_id, controller in self.controllers.items():
            self.store.put_json(f"controller:{site_id}", controller.snapshot())

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
            return False
        if {s.id for s in new.sites} != set(self.controllers) or new.state_dir != self.config.state_dir \
                or new.ocpp.port != self.config.ocpp.port or new.http.port != self.config.http.port:
            self.counters["config_rejected"] += 1
            log.error("config reload refused: sites, ports and state_dir need a restart")
            return False
        for site in new.sites:
            self.controllers[site.id].reconfigure(site)
        self.ocpp.update_config(new)
        self.fp.update_config(new)
        self.config = new
        self.counters["config_reloads"] += 1
        log.info("config reloaded from %s", self.config_path)
        self._wake.set()
        return True

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
                             "capabilities": live.get("capabilities")})
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
                  max_current_a: float | None, phases: int | None) -> None:
        site_id = self._site_of(charger_id)
        if not site_id:
            raise KeyError(charger_id)
        state = self.controllers[site_id].states[charger_id]
        if state.transaction_id is None:
            raise ValueError(f"charger {charger_id!r} has no running session")
        self._on_event(NeedsUpdated(charger_id=charger_id, at=self.now(), energy_wh=energy_wh,
                                    departure=departure, max_current_a=max_current_a, phases=phases,
                                    source="api"))

    def health(self) -> dict[str, Any]:
        return {"status": "ok", "uptime_s": round(time.monotonic() - self._started_at, 1),
                "sites": len(self.controllers)}

    def metrics_text(self) -> str:
        lines: list[str] = []

        def gauge(name: str, help_text: str, samples: list[tuple[dict[str, str], float]]) -> None:
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} gauge")
            for labels, value in samples:
                label = ",".join(f'{k}="{v}"' for k, v in labels.items())
                lines.append(f"{name}{{{label}}} {value}" if label else f"{name} {value}")

        now = self.now()
        cap, alloc, meas, online, connected, limits, obeys = [], [], [], [], [], [], []
        for site_id, controller in self.controllers.items():
            status = controller.status(now)
            for k, phase in enumerate(("L1", "L2", "L3")):
                cap.append(({"site": site_id, "phase": phase, "source": status.capacity_source},
                            status.capacity_a[k]))
                alloc.append(({"site": site_id, "phase": phase}, status.allocated_a[k]))
                meas.append(({"site": site_id, "phase": phase}, status.measured_a[k]))
            online.append(({"site": site_id}, 1.0 if self.fp.is_online(site_id) else 0.0))
            for c in status.chargers:
                connected.append(({"site": site_id, "charger": c["id"]}, 1.0 if c["connected"] else 0.0))
                limits.append(({"site": site_id, "charger": c["id"]}, c["limit_a"]))
                obeys.append(({"site": site_id, "charger": c["id"]}, 1.0 if c["obeys"] else 0.0))
        gauge("balancer_capacity_amperes", "Capacity in force per phase", cap)
        gauge("balancer_allocated_amperes", "Sum of charger limits per phase", alloc)
        gauge("balancer_measured_amperes", "Sum of measured charger currents per phase", meas)
        gauge("balancer_grid_operator_online", "1 when the grid operator is online", online)
        gauge("balancer_charger_connected", "1 when the charger is connected", connected)
        gauge("balancer_charger_limit_amperes", "Current limit per charger", limits)
        gauge("balancer_charger_obeys", "0 when a charger does not follow its profile", obeys)
        for name, value in self.counters.items():
            lines.append(f"# TYPE balancer_{name}_total counter")
            lines.append(f"balancer_{name}_total {value}")
        for name, value in self.ocpp.counters.items():  # bad frames, rate-limited calls, implausible readings
            lines.append(f"# TYPE balancer_ocpp_{name}_total counter")
            lines.append(f"balancer_ocpp_{name}_total {value}")
        lines.append("# TYPE balancer_control_step_seconds gauge")
        lines.append(f"balancer_control_step_seconds {self.last_step_s:.6f}")
        if self.influx is not None:
            for name, value in self.influx.stats().items():
                lines.append(f"# TYPE balancer_influx_{name} gauge")
                lines.append(f"balancer_influx_{name} {value}")
        return "\n".join(lines) + "\n"


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
    """``balancer serve --config PATH``."""
    logging.basicConfig(level=logging.INFO,
                        format='{"t":"%(asctime)s","level":"%(levelname)s","logger":"%(name)s","msg":%(message)r}')
    logging.getLogger("ocpp").setLevel(logging.WARNING)  # it logs every frame at INFO
    path = Path(args.config)
    try:
        config = load_config(path)
    except InvalidInput as exc:
        print(f"{path}: {len(exc.problems)} problem(s)")
        for problem in exc.problems:
            print(f"  {problem}")
        return 2
    return asyncio.run(_serve(config, path))
