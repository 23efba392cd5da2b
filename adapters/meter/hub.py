"""The site meters of a service: Modbus pollers, HTTP pushes, history and forecast, counters.

Every reading goes to its site's controller as a ``SiteMeterReading``. A reading that lowers what
the chargers may draw by ``STEP_A`` or more on a phase triggers an urgent control step (the same
path as a capacity change: decreases go out first); a rise of that size wakes the loop. Smaller
changes wait for the next interval. Refused readings (implausible) are logged (rate-limited) and
counted per reason; read failures are counted per kind. The non-EV load is kept per 15-minute slot
(mean over the slot) in the state store for ``HISTORY_DAYS`` and turned into the planner's
forecast (``forecast.non_ev``) at every slot boundary.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from adapters.meter.modbus import ModbusMeter
from adapters.meter.push import MeterPushRefused
from adapters.metrics import Point
from adapters.prometheus import Family
from adapters.store_port import Store
from balancer.control import Controller, SiteStatus
from balancer.events import SiteMeterReading
from balancer.model import Config, MeterSettings
from balancer.timeline import horizon_slots, slot_floor
from forecast.non_ev import forecast_non_ev

__all__ = ["HISTORY_DAYS", "STEP_A", "MeterHub", "meter_fields", "meter_point"]

log = logging.getLogger("balancer.meter")

STEP_A = 1.0
"""A change of the chargers' share by this much [A] on a phase acts at once, not at the next interval."""
HISTORY_DAYS = 28
LOG_EVERY = 100
"""After the first, one refused reading in this many is logged per site and reason."""

Currents = tuple[float | None, float | None, float | None]


def meter_fields(status: SiteStatus) -> dict[str, Any]:
    """The site JSON's meter fields (DESIGN 3.8): ``meter_a``, ``non_ev_load_a``, ``meter_fresh``;
    all None for a site without a meter."""
    view = status.meter
    discharge = [round(x, 2) for x in status.discharge_a]  # V2X (DESIGN 3.9), with or without a meter
    if view is None:
        return {"meter_a": None, "non_ev_load_a": None, "meter_fresh": None, "discharge_a": discharge}
    return {"meter_a": [None if np.isnan(x) else round(float(x), 2) for x in view.meter_a],
            "non_ev_load_a": [round(float(x), 2) for x in view.non_ev_load_a],
            "meter_fresh": bool(view.fresh), "discharge_a": discharge}


def meter_point(site_id: str, at: datetime, status: SiteStatus) -> Point | None:
    """The meter's fields of the InfluxDB ``site`` point (same series and time: InfluxDB merges them):
    ``net_import_a_l1..3`` (the meter), ``non_ev_load_a_l1..3`` and ``meter_fresh``; and V2X
    ``discharge_a_l1..3`` (what chargers are told to discharge), with or without a meter."""
    view = status.meter
    point = Point("site").tag("site", site_id).time(at)
    for k in range(3):
        point = point.field(f"discharge_a_l{k + 1}", float(status.discharge_a[k]))
    if view is None:
        return point
    point = point.field("meter_fresh", int(view.fresh))
    for k in range(3):
        if np.isfinite(view.meter_a[k]):
            point = point.field(f"net_import_a_l{k + 1}", float(view.meter_a[k]))
        point = point.field(f"non_ev_load_a_l{k + 1}", float(view.non_ev_load_a[k]))
    return point


class MeterHub:
    """Owns the meters of every site of a service."""

    def __init__(self, config: Config, controllers: Mapping[str, Controller], store: Store, *,
                 now: Callable[[], datetime], urgent: Callable[[str], None], wake: Callable[[], None],
                 controls: Callable[[str], bool] = lambda site_id: True) -> None:
        self.config = config
        self.controls = controls
        """Cluster mode: whether this instance controls a site (only the owner polls its meter)."""
        self.controllers = controllers
        self.store = store
        self.now = now
        self.urgent = urgent
        self.wake = wake
        self.pollers: dict[str, ModbusMeter] = {}
        self.readings: dict[str, int] = {}
        self.implausible: dict[tuple[str, str], int] = {}
        self.errors: dict[tuple[str, str], int] = {}
        self._slot: dict[str, tuple[datetime, np.ndarray, int]] = {}
        self.history: dict[str, dict[datetime, list[float]]] = {}
        self.import_wh: dict[str, float] = {}
        """Net energy imported at the connection since the first reading, per site [Wh] (a register)."""
        self._last: dict[str, tuple[datetime, np.ndarray]] = {}
        for site in config.sites:
            if site.meter is None:
                continue
            saved = store.get_json(f"meter_import_wh:{site.id}")
            self.import_wh[site.id] = float(saved) if isinstance(saved, (int, float)) else 0.0
            self.history[site.id] = self._load_history(site.id)
            if site.meter.source == "modbus":
                self.pollers[site.id] = self._poller(site.id, site.meter)

    # ----------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        for site_id in self.history:
            self._update_forecast(site_id, self.now())
        for poller in self.pollers.values():
            await poller.start()

    async def stop(self) -> None:
        for poller in self.pollers.values():
            await poller.stop()

    async def update_config(self, config: Config) -> None:
        """Restart the pollers whose settings changed (the controllers keep their last readings)."""
        self.config = config
        for site in config.sites:
            old = self.pollers.get(site.id)
            wanted = site.meter if site.meter is not None and site.meter.source == "modbus" else None
            if old is not None and (wanted is None or old.settings != wanted):
                await old.stop()
                del self.pollers[site.id]
            if wanted is not None and site.id not in self.pollers:
                poller = self._poller(site.id, wanted)
                self.pollers[site.id] = poller
                await poller.start()
            if site.meter is not None and site.id not in self.history:
                self.history[site.id] = self._load_history(site.id)

    def _poller(self, site_id: str, settings: MeterSettings) -> ModbusMeter:
        return ModbusMeter(site_id, settings, on_reading=self.on_reading, on_error=self._error_cb(site_id),
                           now=self.now, active=lambda: self.controls(site_id))

    # ----------------------------------------------------------------- readings in
    def _error_cb(self, site_id: str) -> Callable[[str, str], None]:
        def on_error(kind: str, message: str) -> None:
            n = self.errors[(site_id, kind)] = self.errors.get((site_id, kind), 0) + 1
            if n == 1 or n % LOG_EVERY == 0:
                log.warning("site %s: meter read failed (%s, %d so far): %s", site_id, kind, n, message)

        return on_error

    def on_reading(self, event: SiteMeterReading) -> str | None:
        """Hand a reading to its controller; returns why it was refused, or None."""
        controller = self.controllers.get(event.site_id)
        if controller is None or controller.meter is None:
            return "no_meter"
        before = controller.meter_view
        controller.handle(event)
        reason = controller.meter.last_rejection
        if reason is not None:
            key = (event.site_id, reason)
            n = self.implausible[key] = self.implausible.get(key, 0) + 1
            if n == 1 or n % LOG_EVERY == 0:
                log.warning("site %s: meter reading %s refused (%s, %d so far): stale until a plausible one",
                            event.site_id, list(event.current_a), reason, n)
            return reason
        self.readings[event.site_id] = self.readings.get(event.site_id, 0) + 1
        self._integrate(controller, event)
        cap_now, _ = controller.capacity_now(event.at)
        view = controller.meter_now(event.at, cap_now)
        if view is not None:
            self._record(event.site_id, event.at, view.non_ev_load_a)
            if before is None:
                self.wake()
            else:
                change = before.cut_a - view.cut_a  # negative: the chargers' share shrinks
                if np.any(change <= -STEP_A):
                    self.urgent(event.site_id)
                elif np.any(change >= STEP_A):
                    self.wake()
        return None

    def _integrate(self, controller: Controller, event: SiteMeterReading) -> None:
        """Add the imported energy since the previous reading (trapezoid, import only, a gap longer
        than ``stale_after_s`` adds nothing) to ``import_wh``."""
        site = controller.site
        assert site.meter is not None
        current = np.array([np.nan if c is None else max(c, 0.0) for c in event.current_a], dtype=np.float64)
        last = self._last.get(site.id)
        self._last[site.id] = (event.at, current)
        if last is None:
            return
        dt_s = (event.at - last[0]).total_seconds()
        if not 0 < dt_s <= site.meter.stale_after_s:
            return
        mean_a = np.nan_to_num((current + last[1]) / 2.0, nan=0.0)
        self.import_wh[site.id] = self.import_wh.get(site.id, 0.0) + float(mean_a.sum()) * site.voltage_v * dt_s / 3600
        self.store.put_json(f"meter_import_wh:{site.id}", round(self.import_wh[site.id], 3), flush=False)

    def energy_wh(self, site_id: str) -> float | None:
        """The net import register of a site with a meter [Wh]; None without a meter."""
        return self.import_wh.get(site_id)

    # ----------------------------------------------------------------- HTTP push (MeterSink)
    def push_settings(self, site_id: str) -> float:
        site = next((s for s in self.config.sites if s.id == site_id), None)
        if site is None:
            raise MeterPushRefused(404, f"unknown site {site_id!r}", "site_id")
        if site.meter is None or site.meter.source != "http":
            raise MeterPushRefused(409, f"site {site_id!r} has no meter with source http", "site_id")
        return site.meter.stale_after_s

    def push_reading(self, site_id: str, current_a: Currents, at: datetime) -> None:
        reason = self.on_reading(SiteMeterReading(site_id, at, current_a))
        if reason == "out_of_order":
            raise MeterPushRefused(400, "timestamp is older than the last reading taken", "timestamp")
        if reason is not None:
            raise MeterPushRefused(400, f"reading refused as implausible ({reason}); the meter counts as stale",
                                   "current_a")

    # ----------------------------------------------------------------- history and forecast
    def _load_history(self, site_id: str) -> dict[datetime, list[float]]:
        raw = self.store.get_json(f"meter_history:{site_id}")
        out: dict[datetime, list[float]] = {}
        if isinstance(raw, dict):
            for key, value in raw.items():
                try:
                    out[datetime.fromisoformat(key)] = [float(x) for x in value][:3]
                except (TypeError, ValueError):
                    continue
        return out

    def _record(self, site_id: str, at: datetime, non_ev: np.ndarray) -> None:
        slot = slot_floor(at)
        current = self._slot.get(site_id)
        if current is not None and current[0] != slot:
            start, total, n = current
            history = self.history.setdefault(site_id, {})
            history[start] = [round(float(x), 2) for x in total / n]
            cutoff = slot - timedelta(days=HISTORY_DAYS)
            for key in [k for k in history if k < cutoff]:
                del history[key]
            self.store.put_json(f"meter_history:{site_id}", {k.isoformat(): v for k, v in history.items()},
                                flush=False)
            self._update_forecast(site_id, at)
            current = None
        if current is None:
            self._slot[site_id] = (slot, np.array(non_ev, dtype=np.float64), 1)
        else:
            self._slot[site_id] = (slot, current[1] + non_ev, current[2] + 1)

    def _update_forecast(self, site_id: str, now: datetime) -> None:
        controller = self.controllers.get(site_id)
        if controller is None or controller.site.meter is None:
            return
        settings = controller.site.meter
        start = slot_floor(now)
        n_slots = horizon_slots(self.config.control.plan_horizon_h)
        last = None
        view = controller.meter_view
        if view is not None and view.fresh:
            last = [float(x) for x in view.non_ev_load_a]
        values = forecast_non_ev(self.history.get(site_id, {}), start, n_slots, last_a=last,
                                 fallback_a=settings.fallback_base_load_a)
        controller.non_ev_forecast = (start, values)

    # ----------------------------------------------------------------- metrics
    def families(self, now: datetime) -> list[Family]:
        net = Family("balancer_meter_amperes", "gauge", "Site meter: net current at the grid connection per phase")
        non_ev = Family("balancer_non_ev_load_amperes", "gauge",
                        "Non-EV load per phase assumed by control (measured, or the fallback while stale)")
        fresh = Family("balancer_meter_fresh", "gauge", "1 while the site meter's reading is fresh")
        for site_id, controller in self.controllers.items():
            if controller.meter is None:
                continue
            cap_now, _ = controller.capacity_now(now)
            view = controller.meter_now(now, cap_now)
            assert view is not None
            for k, phase in enumerate(("L1", "L2", "L3")):
                net.samples.append(({"site": site_id, "phase": phase}, float(view.meter_a[k])))
                non_ev.samples.append(({"site": site_id, "phase": phase}, float(view.non_ev_load_a[k])))
            fresh.samples.append(({"site": site_id}, 1.0 if view.fresh else 0.0))
        readings = Family("balancer_meter_readings_total", "counter", "Site meter readings taken",
                          [({"site": s}, float(n)) for s, n in sorted(self.readings.items())])
        implausible = Family("balancer_meter_implausible_total", "counter",
                             "Site meter readings refused as implausible (NaN, negative beyond the connection "
                             "limit, frozen, out of order); the meter counts as stale",
                             [({"site": s, "reason": r}, float(n)) for (s, r), n in sorted(self.implausible.items())])
        errors = Family("balancer_meter_errors_total", "counter",
                        "Site meter reads that failed (connect, timeout, exception_reply, connection, map)",
                        [({"site": s, "kind": k}, float(n)) for (s, k), n in sorted(self.errors.items())])
        return [net, non_ev, fresh, readings, implausible, errors]
