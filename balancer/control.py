"""The controller of one site: events in, charger schedules out. Sans-io.

The service feeds it events (``balancer.events``), among them the capacity in force as a
``CapacityTimeline`` (``CapacityUpdated``, made by ``forecast.timeline``), and the clock; it
answers with a ``ChargerSchedule`` per charger. The LP is not run here: the controller says when a
replan is due and builds the planner's input (``plan_request``); the service runs the planner off
the event loop and hands the outcome back (``accept_plan``). When there is no usable plan, the
allocator alone decides and ``plan_status`` says why.

The controller only coordinates; each job has its own module:
- ``charger_state``: what is known of each charger and how events change it;
- ``timeline``: the capacity in force (and the slot);
- ``planning``: the planner's input;
- ``allocation_inputs``: node capacity less reserved loads, allowances, failsafes, idle limits
  (the safety bookkeeping of DESIGN 4 is described there);
- ``schedule``: a limit now shaped into a schedule ahead;
- ``status`` and ``reasons``: the site status and every limit's reason.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Any

import numpy as np
import numpy.typing as npt

from balancer import allocation_inputs as inputs
from balancer.allocate import Allocation, AllocationRequest, allocate, code_number
from balancer.charger_state import IDLE_DRAW_A, ChargerState, apply_event, is_idle, wants_current
from balancer.churn import ChurnGuard, allocate_holding
from balancer.events import CapacityUpdated, ChargerSchedule, Event, SessionStopped, SiteMeterReading, Tick
from balancer.model import CapacitySource, ControlSettings, Limit, LimitCode, Site
from balancer.plan import Plan, SolveOutcome
from balancer.planning import PlanRequest, plan_request
from balancer.reasons import charger_limits
from balancer.schedule import INCREASE_LAG, ahead, charger_schedule
from balancer.site_meter import MeterTracker, MeterView
from balancer.sleep import SleepWatch
from balancer.status import ReasonKey, ReasonLog, SiteStatus, site_status
from balancer.timeline import SLOT_S, CapacityTimeline, slot_floor
from balancer.topology import Topology, phase_mask
from balancer.v2x import discharge_inputs
from forecast.arrivals import PastSession, SessionHistory

__all__ = ["INCREASE_LAG", "SLOT_S", "ChargerState", "Controller", "PlanRequest", "SiteStatus", "slot_floor"]

FloatArray = npt.NDArray[np.float64]
_CAR_ASLEEP = code_number(LimitCode.CAR_ASLEEP)
VERIFY_FIRST = 1e15
"""Urgency of a never-verified session in the allocation of its own share (above any laxity)."""


def _merge(allocation: Allocation, first: Allocation, take_first: npt.NDArray[np.bool_]) -> Allocation:
    """``allocation`` with the limits and reasons of ``first`` where ``take_first``."""
    return replace(allocation, limit_a=np.where(take_first, first.limit_a, allocation.limit_a),
                   paused=np.where(take_first, first.paused, allocation.paused),
                   reason=np.where(take_first, first.reason, allocation.reason),
                   reason_node=np.where(take_first, first.reason_node, allocation.reason_node),
                   reason_phase=np.where(take_first, first.reason_phase, allocation.reason_phase))


class Controller:
    """Turns events and the capacity in force into one schedule per charger, for one site."""

    def __init__(self, site: Site, settings: ControlSettings | None = None) -> None:
        self.site = site
        self.settings = settings or ControlSettings()
        self.topology = Topology.from_site(site)
        self.states: dict[str, ChargerState] = {cid: ChargerState() for cid in self.topology.charger_ids}
        self.failsafe_a = inputs.failsafe_limits(site, self.topology)
        self.timeline: CapacityTimeline | None = None
        """The capacity in force (``CapacityUpdated``); None: ``fallback_kw`` until one arrives."""
        self.plan: Plan | None = None
        self.plan_status = "no_plan"
        self.plan_message = ""
        self._replan_due = True
        self._last_slot: datetime | None = None
        self.last_allocation: Allocation | None = None
        self.allocated_ids: tuple[str, ...] = ()
        """The chargers ``last_allocation`` is for (its arrays follow this topology's order)."""
        self._reasons = ReasonLog()
        self.last_schedules: dict[str, ChargerSchedule] = {}
        self.meter = MeterTracker(site.meter, site.grid_limit_a) if site.meter is not None else None
        self.meter_view: MeterView | None = None
        self.export_cap_a: FloatArray | None = None
        """(3,) [A] the grid operator's GENERATION forecast in force (None: none): caps V2X export."""
        self.deficit_a: FloatArray = np.zeros(3)
        """(3,) [A] how far non-EV and reserved loads exceed the capacity in force at the connection
        (the last decision's): what V2X discharge carries (``balancer.v2x``)."""
        self.non_ev_forecast: tuple[datetime, FloatArray] | None = None
        """Non-EV load per slot from a start (n_slots, 3) [A], for the planner (``forecast.non_ev``)."""
        self._churn = self._churn_guard()
        self.sleep = self._sleep_watch()
        self.history = SessionHistory(max(28.0, self.settings.arrival_forecast_days))
        """Finished sessions, for the arrival forecast (``forecast.arrivals``); the service persists it."""

    # ----------------------------------------------------------------- configuration
    def _churn_guard(self) -> ChurnGuard:
        return ChurnGuard(self.topology.n_chargers, self.settings.min_pause_s, self.settings.min_charge_s)

    def _sleep_watch(self) -> SleepWatch:
        return SleepWatch(self.topology.n_chargers, self.settings.car_asleep_after_s, self.settings.car_wake_retry_s)

    def _watch_sleep(self, now: datetime) -> None:
        """Tell ``self.sleep`` what every charger says now (``balancer.sleep``)."""
        n = self.topology.n_chargers
        wants, drawing, idle, ready = (np.zeros(n, dtype=bool) for _ in range(4))
        for i, cid in enumerate(self.topology.charger_ids):
            state = self.states[cid]
            remaining = state.remaining_wh()
            wants[i] = wants_current(state) and (remaining is None or remaining > 0)
            fresh = state.measured_at is not None and \
                (now - state.measured_at).total_seconds() <= inputs.MEASUREMENT_FRESH_S
            drawing[i] = fresh and max(state.measured_a) > IDLE_DRAW_A
            # SuspendedEVSE: the car asks for current (at 0 A the meter reads 0 whether it sleeps or not).
            asks = state.status == "SuspendedEVSE"
            idle[i] = not asks and ((fresh and not drawing[i]) or state.status == "SuspendedEV")
            ready[i] = asks or (state.status == "Charging" and not fresh)
        self.sleep.observe(now.timestamp(), wants, drawing, idle, ready)

    def reconfigure(self, site: Site) -> None:
        """Take a new config for this site: keeps the state of chargers that still exist."""
        old = self.states
        self.site = site
        self.topology = Topology.from_site(site)
        self.states = {cid: old.get(cid, ChargerState()) for cid in self.topology.charger_ids}
        self.failsafe_a = inputs.failsafe_limits(site, self.topology)
        self.plan = None
        self._replan_due = True
        tracker = self.meter
        self.meter = None if site.meter is None else MeterTracker(site.meter, site.grid_limit_a)
        if tracker is not None and self.meter is not None:
            self.meter.last_a, self.meter.last_at = tracker.last_a, tracker.last_at
        self._churn = self._churn_guard()
        self.sleep = self._sleep_watch()

    # ----------------------------------------------------------------- capacity
    def take_timeline(self, timeline: CapacityTimeline) -> None:
        """The capacity in force from now on. A new revision is a change (a replan is due); the
        same revision is the same forecasts one slot on (the slot boundary replans anyway)."""
        if self.timeline is None or timeline.revision != self.timeline.revision:
            self._replan_due = True
        self.timeline = timeline

    def set_capacity(self, start: datetime, capacity_a: FloatArray, sources: list[str]) -> None:
        """The capacity in force per slot from ``start`` (n_slots, 3) [A], with its source per slot,
        as a new timeline (a change: for callers without a ``forecast`` book, e.g. tests)."""
        revision = 0 if self.timeline is None else self.timeline.revision + 1
        self.take_timeline(CapacityTimeline.of(start, capacity_a, sources, grid_limit_a=self.site.grid_limit_a,
                                               revision=revision))

    def capacity_now(self, now: datetime) -> tuple[FloatArray, str]:
        """Per-phase capacity in force at ``now`` [A] and its source; fallback_kw when unknown."""
        found = self.timeline.at(now) if self.timeline is not None else None
        if found is not None:
            return found
        return np.full(3, self.site.fallback_a), CapacitySource.FALLBACK_CONFIG.value

    def capacity_ahead(self, start: datetime, n_slots: int) -> FloatArray:
        """(n_slots, 3) capacity from ``start`` [A]; slots not known get the fallback_kw share."""
        if self.timeline is None:
            return np.full((n_slots, 3), self.site.fallback_a)
        return self.timeline.window(start, n_slots, self.site.fallback_a)

    # ----------------------------------------------------------------- events
    def handle(self, event: Event) -> None:
        """Update the state from one event. Unknown chargers are ignored (the adapter refuses them)."""
        if isinstance(event, Tick):
            return
        if isinstance(event, CapacityUpdated):
            if event.site_id == self.site.id:
                self.take_timeline(event.timeline)
            return
        if isinstance(event, SiteMeterReading):
            if event.site_id == self.site.id and self.meter is not None:
                self.meter.update(event.current_a, event.at)
            return
        state = self.states.get(event.charger_id)
        if state is None:
            return
        charger = self.site.chargers[self.topology.index(event.charger_id)]
        if isinstance(event, SessionStopped) and state.transaction_id in (None, event.transaction_id):
            self._remember_session(state, event)  # before ``apply_event`` forgets the session
        if apply_event(state, charger, event):
            self._replan_due = True

    def _remember_session(self, state: ChargerState, event: SessionStopped) -> None:
        """A finished session into ``history``: when, the energy it took (or asked for, if more), its phases."""
        if state.session_start is None or event.at <= state.session_start:
            return
        i = self.topology.index(event.charger_id)
        delivered = state.session_delivered_wh()
        if event.meter_stop_wh is not None and state.session_energy_start_wh is not None:
            delivered = max(delivered, event.meter_stop_wh - state.session_energy_start_wh)
        asked = None if state.need_wh is None else state.need_wh + max(
            0.0, (state.need_at_energy_wh or 0.0) - (state.session_energy_start_wh or 0.0))
        car_phases = np.full(self.topology.n_chargers, 3, dtype=np.int64)
        car_phases[i] = state.car_phases or 3
        mask = phase_mask(self.topology, car_phases)[i]
        car_max = self.site.chargers[i].max_current_a if state.car_max_a is None else state.car_max_a
        self.history.add(PastSession(state.session_start, event.at, max(delivered, asked or 0.0),
                                     (bool(mask[0]), bool(mask[1]), bool(mask[2])), car_max))

    # ----------------------------------------------------------------- planning
    @property
    def replan_due(self) -> bool:
        return self._replan_due

    def plan_request(self, now: datetime) -> PlanRequest:
        """The planner's input for the sessions present now (clears the replan flag)."""
        self._replan_due = False
        return plan_request(self, now)

    def accept_plan(self, outcome: SolveOutcome) -> None:
        """Keep a plan from the planner; any status other than optimal leaves the allocator alone."""
        self.plan_status = outcome.status
        self.plan_message = outcome.message
        self.plan = outcome.plan if outcome.status in ("optimal", "no_sessions") else None

    # ----------------------------------------------------------------- allocation
    def _reserved_a(self, now: datetime) -> tuple[FloatArray, FloatArray]:
        """Per-charger current that is not ours to move (offline, disobedient) and its phase mask."""
        return inputs.reserved_a(self, now)

    def offline_reserve_a(self, i: int, now: datetime) -> float:
        """What offline charger ``i`` is reserved at now [A] (``allocation_inputs.offline_reserve_a``)."""
        return inputs.offline_reserve_a(self, i, self.states[self.topology.charger_ids[i]], now)

    def meter_now(self, now: datetime, cap_now: FloatArray) -> MeterView | None:
        """The site meter's non-EV load and the chargers' share of ``cap_now`` (None: no meter)."""
        return inputs.meter_now(self, now, cap_now)

    def _plan_targets(self, now: datetime, max_a: FloatArray) -> FloatArray:
        """The plan's limit of this slot per charger [A]; NaN where the plan does not steer."""
        topo = self.topology
        target = np.full(topo.n_chargers, np.nan)
        if self.plan is not None and self.plan.start <= now:
            k = int((now - self.plan.start).total_seconds() // self.plan.slot_s)
            if 0 <= k < self.plan.limit_a.shape[1]:
                index = {cid: j for j, cid in enumerate(self.plan.charger_ids)}
                for i, cid in enumerate(topo.charger_ids):
                    j = index.get(cid)
                    # Only known needs are steered by the plan: the allocator serves planned cars
                    # first, and a car with unknown needs is planned as wanting its maximum all
                    # day, so where a phase is short the LP would give every ampere to 3-phase
                    # cars of unknown need (three times the "energy") and starve the others.
                    # Cars of unknown need share, fairly, what the planned cars leave.
                    if j is not None and max_a[i] > 0 and self.states[cid].remaining_wh() is not None:
                        target[i] = self.plan.limit_a[j, k]
        return target

    def decide(self, now: datetime) -> list[ChargerSchedule]:
        """Allocate the capacity of the moment and build every charger's schedule."""
        topo = self.topology
        slot = slot_floor(now)
        if self._last_slot != slot:
            self._last_slot = slot
            self._replan_due = True
        self._watch_sleep(now)
        sleeping = self.sleep.sleeping(now.timestamp())  # its capacity goes to the others
        # A session on a charger never seen keeping a limit is reserved at its maximum (not while
        # its car is found asleep: that draws nothing, and the others would wait for it).
        unverified = inputs.unverified_mask(self) & ~sleeping
        open_capacity = None
        if unverified.any():
            open_capacity = inputs.node_capacity(self, now, at_max=np.zeros_like(unverified))[0]
        capacity, _, _ = inputs.node_capacity(self, now, at_max=unverified)
        min_a, max_a, urgency, mask, max_code = inputs.allowance(self, now)
        max_a, max_code = np.where(sleeping, 0.0, max_a), np.where(sleeping, _CAR_ASLEEP, max_code)
        targets = self._plan_targets(now, max_a)
        request = AllocationRequest(
            topology=topo, capacity_a=capacity, phase_mask=mask, min_a=min_a, max_a=max_a,
            target_a=targets, urgency=urgency, can_pause=topo.can_pause | (max_a <= 0),
            now_s=now.timestamp(), rotation_period_s=self.site.rotation_period_s, max_code=max_code,
            **discharge_inputs(self, now),
        )
        first = None
        if open_capacity is not None:
            # A session on a charger never seen keeping a limit: its maximum is reserved against
            # the others (``capacity``); itself it gets, before anyone else, its share of what all
            # would share, at most its failsafe, so a first reading shows whether it keeps its
            # limit, and many such sessions starting at once still fit in the capacity together.
            # A turn for it costs less than its wait: paused by the plan or by its turn, it was
            # never verified, and its held-back maximum starved the site (issue 11).
            cap_u = np.minimum(max_a, np.maximum(self.failsafe_a, min_a))
            urgency_u = np.where(unverified, VERIFY_FIRST, np.asarray(urgency, dtype=np.float64))
            target_u = np.where(unverified, cap_u, targets)
            first = allocate(replace(request, capacity_a=open_capacity, max_a=np.where(unverified, cap_u, max_a),
                                     urgency=urgency_u, target_a=target_u))
            can_pause = topo.can_pause | (max_a <= 0) | unverified
            request = replace(request, max_a=np.where(unverified, 0.0, max_a), can_pause=can_pause)
        allocation = allocate_holding(request, self._churn, now.timestamp())  # min_pause_s / min_charge_s
        if first is not None:
            allocation = _merge(allocation, first, unverified)
        before = np.array([self.states[cid].limit_a for cid in topo.charger_ids], dtype=np.float64)
        self.sleep.record(now.timestamp(), before, allocation.limit_a, min_a)
        self.last_allocation, self.allocated_ids = allocation, topo.charger_ids
        # The unverified chargers' maxima are taken off ``capacity`` already.
        counted = allocation.limit_a if first is None else np.where(unverified, 0.0, allocation.limit_a)
        idle_limit = inputs.idle_limits(self, capacity, counted, mask)
        schedules: list[ChargerSchedule] = []
        shared = ahead(self, now)
        for i, cid in enumerate(topo.charger_ids):
            state = self.states[cid]
            limit = float(allocation.limit_a[i])
            if not state.obeys and state.connected:
                limit = state.limit_a  # keep what it was told; its real draw is reserved above
            if not state.connected:
                continue
            if limit != state.limit_a:
                state.limit_changed_at, state.prev_limit_a = now, state.limit_a
            state.limit_a = limit
            state.idle_limit_a = float(idle_limit[i])
            if is_idle(state):
                schedule = charger_schedule(self, i, cid, now, state.idle_limit_a, shared, idle=True)
            else:
                schedule = charger_schedule(self, i, cid, now, limit, shared)
            state.held_until = schedule.periods[-1][0] if len(schedule.periods) > 1 else None
            schedules.append(schedule)
            self.last_schedules[cid] = schedule
        return schedules

    # ----------------------------------------------------------------- reporting
    def take_reason_changes(self) -> list[tuple[str, ReasonKey, Limit]]:
        """The chargers whose reason changed between the statuses taken since the last call
        (``status`` notices): (id, the reason before, the limit now with its reason)."""
        return self._reasons.take()

    def status(self, now: datetime) -> SiteStatus:
        """The site status at ``now`` (DESIGN 3.5), every limit with its reason (DESIGN 3.6)."""
        limits = charger_limits(self, now)
        self._reasons.note(limits)
        return site_status(self, now, limits)

    def snapshot(self) -> dict[str, Any]:
        """State to persist so a restart keeps sessions, needs and the limits chargers hold."""
        return {cid: s.to_json() for cid, s in self.states.items()}

    def restore(self, data: dict[str, Any]) -> None:
        for cid, raw in data.items():
            if cid in self.states and isinstance(raw, dict):
                self.states[cid] = ChargerState.from_json(raw)
        self._replan_due = True
