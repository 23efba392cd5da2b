"""What the service tells the grid operator and the dashboard about a site after each step.

AdjustGroupCapacityForecast when a plan cannot meet the known needs, a compliance error when the
site cannot keep within its capacity (at most once per slot), the capacity source switching
between forecast and fallback. The decisions are the core's (``balancer.grid_reports``); this
module holds what was sent when and sends it.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import TYPE_CHECKING

from adapters.metrics import event_point
from balancer.control import Controller, PlanRequest, SiteStatus
from balancer.grid_reports import adjust_blocks, compliance_problem, known_needs_wh
from balancer.plan import SolveOutcome
from balancer.timeline import SLOT, slot_floor

if TYPE_CHECKING:
    from adapters.app import Service

__all__ = ["GridReporting"]

log = logging.getLogger("balancer.service")


class GridReporting:
    """One per service; remembers per site what was last reported."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self._last_fallback: dict[str, bool] = {}
        self._adjusted: dict[str, datetime] = {}

    def maybe_adjust(self, site_id: str, controller: Controller, request: PlanRequest,
                     outcome: SolveOutcome) -> None:
        """AdjustGroupCapacityForecast (when enabled) when the plan cannot meet the known needs."""
        service = self.service
        if service.oscp_client is None or not service.config.oscp.adjust_forecast or outcome.plan is None:
            return
        known = {cid for cid, s in controller.states.items() if s.need_wh is not None and s.transaction_id}
        requested, planned = known_needs_wh(((s.charger_id, s.energy_wh) for s in request.sessions),
                                            outcome.plan.planned_wh, known)
        now = service.now()
        blocks = adjust_blocks(requested_wh=requested, planned_wh=planned, capacity_a=request.capacity_a,
                               planned_load_a=outcome.plan.limit_a.sum(axis=0), start=request.start,
                               slot=SLOT, grid_limit_a=controller.site.grid_limit_a,
                               last_sent=self._adjusted.get(site_id), now=now)
        if blocks:
            self._adjusted[site_id] = now
            service.oscp_client.adjust_forecast(site_id, blocks)
            log.info("site %s: asked the grid operator for more capacity in %d slots (short %.1f kWh)",
                     site_id, len(blocks), (requested - planned) / 1000)

    def _reported_slot(self, site_id: str) -> datetime | None:
        raw = self.service.store.get_json(f"compliance_reported:{site_id}")
        return datetime.fromisoformat(raw) if isinstance(raw, str) else None

    def report(self, controller: Controller, status: SiteStatus, now: datetime) -> None:
        """Tell the grid operator when the site cannot comply (at most once per slot)."""
        service = self.service
        site = controller.site
        fallback = status.capacity_source != "forecast"
        if self._last_fallback.get(site.id) != fallback:
            self._last_fallback[site.id] = fallback
            if service.influx is not None:
                service.influx.write([event_point(site.id, now, kind="fallback_on" if fallback else "fallback_off",
                                                  ok=True, result=status.capacity_source)])
            log.info("site %s: capacity source %s", site.id, status.capacity_source)
        slot = slot_floor(now)
        message = compliance_problem(measured_a=status.measured_a, capacity_a=status.capacity_a,
                                     allocation_status=status.allocation_status, slot=slot,
                                     allocation_message=status.allocation_message,
                                     last_reported_slot=self._reported_slot(site.id))
        if message is None:
            return
        # In the store, written with the message: a new owner of the site (a cluster's take-over)
        # or a restart does not report the same slot again.
        service.store.put_json(f"compliance_reported:{site.id}", slot.isoformat(), flush=False)
        log.warning("site %s: cannot comply: %s", site.id, message)
        service.counters["compliance_errors"] += 1
        if service.influx is not None:
            service.influx.write([event_point(site.id, now, kind="compliance_error", ok=False, result=message)])
        if service.oscp_client is not None:
            service.oscp_client.compliance_error(site.id, message, slot, slot + SLOT,
                                                 status.capacity_a)
