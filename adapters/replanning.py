"""Replanning a site in the planner worker process (the LP never runs on the event loop).

A plan is asked for when the controller says one is due, never while the limits of a capacity
change are still going out, and never twice at once for a site; its outcome goes back to the
controller (a failed or missing plan is data: the allocator then decides alone).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import TYPE_CHECKING

from adapters.metrics import plan_points, wired_phases
from adapters.planner_worker import planner_executor
from balancer.control import Controller, PlanRequest
from balancer.plan import SolveOutcome, plan

if TYPE_CHECKING:
    from adapters.app import Service

__all__ = ["maybe_replan", "solve"]

log = logging.getLogger("balancer.service")


def solve(request: PlanRequest) -> SolveOutcome:
    """Run the LP for a request; any failure comes back as data, never as an exception."""
    try:
        return plan(request.topology, request.capacity_a, list(request.sessions), request.start,
                    budget_s=request.budget_s, fine_slots=request.fine_slots,
                    deficit_a=request.deficit_a, export_room_a=request.export_room_a,
                    expected_a=request.expected_a)
    except Exception as exc:  # the planner must never leave chargers without limits
        log.exception("planner failed")
        return SolveOutcome(status="error", plan=None, solver="none", seconds=0.0, message=repr(exc))


def maybe_replan(service: Service, site_id: str, controller: Controller, now: datetime) -> None:
    pending = service._planning.get(site_id)
    if pending is not None and not pending.done():
        return
    if service._urgent:
        # The capacity just changed: the LP (a whole core on a large site) waits until the new
        # limits have gone out, so the change reaches the chargers first.
        return
    if not controller.replan_due:
        return
    request = controller.plan_request(now)
    loop = asyncio.get_running_loop()
    future = loop.run_in_executor(service._executor, solve, request)
    service._planning[site_id] = future

    def done(fut: asyncio.Future[SolveOutcome]) -> None:
        if fut.cancelled():
            return
        try:
            outcome = fut.result()
        except Exception as exc:  # the worker process died: the allocator decides alone
            outcome = SolveOutcome(status="error", plan=None, solver="none", seconds=0.0, message=repr(exc))
            service._executor = planner_executor()
        service.counters["plans"] += 1
        if outcome.status not in ("optimal", "no_sessions"):
            service.counters["plan_failures"] += 1
            log.warning("site %s: plan %s (%s); allocator alone decides", site_id, outcome.status,
                        outcome.message)
        controller.accept_plan(outcome)
        if service.influx is not None and outcome.plan is not None:
            car_phases = {cid: s.car_phases for cid, s in controller.states.items()}
            service.influx.write(plan_points(site_id, outcome.plan, request.capacity_a,
                                             wired_phases(controller.site, car_phases)))
        if outcome.plan is not None:
            service.grid_reporting.maybe_adjust(site_id, controller, request, outcome)
        service._wake.set()

    future.add_done_callback(done)
