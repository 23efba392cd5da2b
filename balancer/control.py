"""The controller of one site: events in, charger schedules out. Sans-io.

The service feeds it events (``balancer.events``), the capacity in force (``set_capacity``) and
the clock; it answers with a ``ChargerSchedule`` per charger. The LP is not run here: the
controller says when a replan is due and builds the planner's input (``plan_request``); the
service runs the planner off the event loop and hands the outcome back (``accept_plan``). When
there is no usable plan, the allocator alone decides and ``plan_status`` says why.

Safety bookkeeping (DESIGN 4):
- a charger that is offline keeps what it may still draw (its last held limit: in a transaction
  its TxProfile, else its idle limit; its failsafe once that schedule ends or when nothing is
  known) reserved at every node above it until it reconnects;
- a charger flagged as not obeying is reserved at what it really draws;
- every charger's failsafe (TxDefaultProfile) is its share of ``fallback_kw`` found by the
  allocator itself, so all failsafes together respect ``fallback_kw``, the connection and fuses;
- a connected charger without a transaction ("idle") may still see a car plug in, which then draws
  at once whatever default the charger holds, before any TxProfile arrives. So idle chargers get an
  *idle limit*: a share of what the chargers in a transaction leave over, never more than their
  failsafe. The sum of the limits of chargers in a transaction and the idle limits stays within
  every node and phase, now and in every slot ahead (``_idle_limits``, ``_schedule``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import numpy.typing as npt

from balancer.allocate import Allocation, AllocationRequest, allocate, code_number, node_load_a
from balancer.churn import ChurnGuard, allocate_holding
from balancer.events import (
    ChargerOffline,
    ChargerOnline,
    ChargerSchedule,
    ChargerStatus,
    Event,
    ExternalCapSet,
    MeterSample,
    NeedsUpdated,
    ObedienceChanged,
    ProfileResult,
    SessionStarted,
    SessionStopped,
    SiteMeterReading,
    Tick,
)
from balancer.external_cap import cap_at, capped_periods
from balancer.model import CapacitySource, ControlSettings, Limit, LimitCode, Site
from balancer.plan import Plan, PlanSession, SolveOutcome
from balancer.reasons import charger_limits
from balancer.site_meter import CHARGER_MEASUREMENT_MAX_AGE_S, MeterTracker, MeterView, charger_draw_a
from balancer.topology import Topology, phase_mask
from balancer.v2x import discharge_draw_limits, discharge_inputs, plan_deficit, plan_discharge_fields

__all__ = ["ChargerState", "Controller", "PlanRequest", "SiteStatus"]

FloatArray = npt.NDArray[np.float64]

SLOT_S = 900
Ahead = tuple[list[datetime], FloatArray, dict[str, FloatArray]]
"""What every schedule of one decision shares (``Controller._ahead``)."""
MEASUREMENT_FRESH_S = 120.0
"""A meter sample older than this (in the controller's clock) no longer caps a car's allowance."""
INCREASE_LAG = timedelta(seconds=60)
"""How long after a slot boundary a rise in a schedule ahead starts (see ``Controller._schedule``)."""
IDLE_DRAW_A = 0.5
"""Below this a car counts as not drawing (full, or waiting)."""
_CHARGER_MAX, _CAR_MAX, _NOT_DRAWING, _EXTERNAL_CAP = (
    code_number(c) for c in (LimitCode.CHARGER_MAX, LimitCode.CAR_MAX, LimitCode.NOT_DRAWING, LimitCode.EXTERNAL_CAP))
ReasonKey = tuple[LimitCode, str | None, str | None]


def slot_floor(t: datetime, slot_s: int = SLOT_S) -> datetime:
    """The start of the 15-minute slot holding ``t`` (aligned to the quarter hour, UTC)."""
    epoch = int(t.timestamp())
    return datetime.fromtimestamp(epoch - epoch % slot_s, tz=t.tzinfo)


@dataclass
class ChargerState:
    """What the controller knows about one charger. Mutable, owned by the controller."""

    connected: bool = False
    protocol: str | None = None
    status: str = "unknown"
    transaction_id: str | None = None
    session_start: datetime | None = None
    energy_wh: float | None = None
    session_energy_start_wh: float | None = None
    need_wh: float | None = None
    need_at_energy_wh: float | None = None
    departure: datetime | None = None
    car_max_a: float | None = None
    car_min_a: float | None = None
    car_phases: int | None = None
    measured_a: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    measured_at: datetime | None = None
    prev_measured_a: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    """The measurement before ``measured_a``: with a site meter, what a charger drew before a meter
    reading that is older than its last measurement is at most the lower of the two."""
    power_w: float | None = None
    soc_pct: float | None = None
    held_a: float = 0.0
    """The limit of the last accepted stack-1 profile (TxProfile, or TxDefault / Max) [A]."""
    held_idle_a: float | None = None
    """The last accepted idle default of its own (TxProfile strategy) [A]; None: none known."""
    held_known: bool = False
    """True once a limit was accepted: until then an offline charger without a transaction is
    reserved at its failsafe (``_offline_reserve_a``)."""
    held_until: datetime | None = None
    limit_a: float = 0.0
    idle_limit_a: float = 0.0
    limit_changed_at: datetime | None = None
    obeys: bool = True
    draw_a: float | None = None
    last_push: dict[str, Any] | None = None
    external_cap: list[list[float]] | None = None
    """A cap set by another party (``ExternalCapSet``): [[start epoch s, limit A], ...]."""
    external_cap_until: float | None = None
    """When the external cap ends [epoch s]; None: with its session."""
    car_v2x: bool = False
    """The car offers V2X (``balancer.v2x``)."""
    prev_limit_a: float = 0.0
    """The limit before the last change (``limit_changed_at``): what a discharge may still be."""
    car_discharge_max_a: float | None = None
    car_spare_wh: float | None = None

    def external_cap_a(self, t: float) -> float | None:
        """The external cap in force at ``t`` [epoch s] [A], or None when there is none."""
        return cap_at(self.external_cap or (), self.external_cap_until, t)

    def remaining_wh(self) -> float | None:
        """Energy the car still needs [Wh], or None when unknown."""
        if self.need_wh is None:
            return None
        delivered = 0.0
        if self.energy_wh is not None and self.need_at_energy_wh is not None:
            delivered = max(0.0, self.energy_wh - self.need_at_energy_wh)
        return max(0.0, self.need_wh - delivered)

    def session_delivered_wh(self) -> float:
        if self.energy_wh is None or self.session_energy_start_wh is None:
            return 0.0
        return max(0.0, self.energy_wh - self.session_energy_start_wh)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in self.__dict__.items():
            out[key] = value.isoformat() if isinstance(value, datetime) else value
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ChargerState:
        state = cls()
        for key, value in data.items():
            if not hasattr(state, key):
                continue
            if key in ("session_start", "departure", "measured_at", "held_until", "limit_changed_at"):
                value = datetime.fromisoformat(value) if value else None
            setattr(state, key, value)
        # After a restart nobody is connected until it says so.
        state.connected = False
        return state


@dataclass(frozen=True)
class PlanRequest:
    """Everything the planner needs, computed from the controller's state at ``start``."""

    topology: Topology
    capacity_a: FloatArray
    sessions: tuple[PlanSession, ...]
    start: datetime
    budget_s: float
    fine_slots: int
    deficit_a: FloatArray | None = None
    """(n_slots, 3) [A] V2X: how far the non-EV load forecast exceeds the capacity (``balancer.plan_v2x``)."""
    export_room_a: FloatArray | None = None


@dataclass(frozen=True)
class SiteStatus:
    """A snapshot for the admin API, metrics and the grid-operator reports."""

    site_id: str
    at: datetime
    capacity_a: tuple[float, float, float]
    capacity_w: float
    capacity_source: str
    allocated_a: tuple[float, float, float]
    measured_a: tuple[float, float, float]
    allocation_status: str
    plan_status: str
    chargers: tuple[dict[str, Any], ...]
    idle_allocated_a: tuple[float, float, float] = (0.0, 0.0, 0.0)
    """Per-phase sum of the idle limits [A]: what cars plugging into idle chargers may draw."""
    meter: MeterView | None = None
    """The site meter as control used it (DESIGN 3.8); None without a meter."""
    discharge_a: tuple[float, float, float] = (0.0, 0.0, 0.0)
    """Per-phase sum of what V2X chargers are told to discharge [A] (DESIGN 3.9)."""
    allocation_message: str = ""
    """Why the allocation is infeasible (for the compliance error), else empty."""


class Controller:
    """Turns events and the capacity in force into one schedule per charger, for one site."""

    def __init__(self, site: Site, settings: ControlSettings | None = None) -> None:
        self.site = site
        self.settings = settings or ControlSettings()
        self.topology = Topology.from_site(site)
        self.states: dict[str, ChargerState] = {cid: ChargerState() for cid in self.topology.charger_ids}
        self.failsafe_a = self._failsafe_limits()
        self._cap_start: datetime | None = None
        self._cap_a: FloatArray = np.zeros((0, 3))
        self._cap_sources: list[str] = []
        self.plan: Plan | None = None
        self.plan_status = "no_plan"
        self.plan_message = ""
        self._replan_due = True
        self._last_slot: datetime | None = None
        self.last_allocation: Allocation | None = None
        self.allocated_ids: tuple[str, ...] = ()
        """The chargers ``last_allocation`` is for (its arrays follow this topology's order)."""
        self._reason_keys: dict[str, ReasonKey] = {}
        self._reason_changes: dict[str, tuple[ReasonKey, Limit]] = {}
        self.last_schedules: dict[str, ChargerSchedule] = {}
        self._last_at: datetime | None = None
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

    # ----------------------------------------------------------------- configuration
    def _churn_guard(self) -> ChurnGuard:
        return ChurnGuard(self.topology.n_chargers, self.settings.min_pause_s, self.settings.min_charge_s)

    def _failsafe_limits(self) -> FloatArray:
        """Each charger's share of ``fallback_kw`` (DESIGN 4), for every charger loaded at its max
        on all its phases; the allocator guarantees the sum respects fallback, connection, fuses.
        With a site meter the building keeps drawing when the balancer is gone: its
        ``fallback_base_load_a`` (and the margin) come off the connection first (DESIGN 3.8)."""
        topo = self.topology
        if topo.n_chargers == 0:
            return np.zeros(0)
        capacity = np.repeat(topo.node_limit_a[:, None], 3, axis=1).astype(np.float64)
        capacity[0, :] = np.minimum(capacity[0, :], self.site.fallback_a)
        meter = self.site.meter
        if meter is not None:
            base = np.asarray(meter.fallback_base_load_a, dtype=np.float64) + meter.margin_a
            capacity[0, :] = np.maximum(capacity[0, :] - base, 0.0)
        request = AllocationRequest(
            topology=topo,
            capacity_a=capacity,
            phase_mask=topo.charger_phase_mask,
            min_a=topo.min_current_a,
            max_a=topo.max_current_a,
        )
        return np.asarray(allocate(request).limit_a, dtype=np.float64)

    def reconfigure(self, site: Site) -> None:
        """Take a new config for this site: keeps the state of chargers that still exist."""
        old = self.states
        self.site = site
        self.topology = Topology.from_site(site)
        self.states = {cid: old.get(cid, ChargerState()) for cid in self.topology.charger_ids}
        self.failsafe_a = self._failsafe_limits()
        self.plan = None
        self._replan_due = True
        tracker = self.meter
        self.meter = None if site.meter is None else MeterTracker(site.meter, site.grid_limit_a)
        if tracker is not None and self.meter is not None:
            self.meter.last_a, self.meter.last_at = tracker.last_a, tracker.last_at
        self._churn = self._churn_guard()

    # ----------------------------------------------------------------- capacity
    def set_capacity(self, start: datetime, capacity_a: FloatArray, sources: list[str]) -> None:
        """The capacity in force per slot from ``start`` (n_slots, 3) [A], with its source per slot."""
        capacity = np.nan_to_num(np.asarray(capacity_a, dtype=np.float64), nan=0.0)
        capacity = np.clip(capacity, 0.0, self.site.grid_limit_a)
        changed = (
            self._cap_start != start
            or capacity.shape != self._cap_a.shape
            or not np.array_equal(capacity, self._cap_a)
        )
        if changed and (self._cap_a.size == 0 or not self._same_ahead(start, capacity)):
            self._replan_due = True
        self._cap_start, self._cap_a, self._cap_sources = start, capacity, list(sources)

    def _same_ahead(self, start: datetime, capacity: FloatArray) -> bool:
        """True when the new capacity array is the old one shifted in time (no real change)."""
        if self._cap_start is None:
            return False
        shift = int((start - self._cap_start).total_seconds() // SLOT_S)
        if shift < 0 or shift >= len(self._cap_a):
            return False
        old = self._cap_a[shift:]
        n = min(len(old), len(capacity))
        return bool(np.array_equal(old[:n], capacity[:n]))

    def capacity_now(self, now: datetime) -> tuple[FloatArray, str]:
        """Per-phase capacity in force at ``now`` [A] and its source; fallback_kw when unknown."""
        if self._cap_start is not None and len(self._cap_a):
            k = int((now - self._cap_start).total_seconds() // SLOT_S)
            if 0 <= k < len(self._cap_a):
                return self._cap_a[k].copy(), self._cap_sources[k]
        return np.full(3, self.site.fallback_a), CapacitySource.FALLBACK_CONFIG.value

    def capacity_ahead(self, start: datetime, n_slots: int) -> FloatArray:
        """(n_slots, 3) capacity from ``start`` [A]; slots not known get the fallback_kw share."""
        out = np.full((n_slots, 3), self.site.fallback_a)
        if self._cap_start is not None and len(self._cap_a):
            offset = int((start - self._cap_start).total_seconds() // SLOT_S)
            for k in range(n_slots):
                j = offset + k
                if 0 <= j < len(self._cap_a):
                    out[k] = self._cap_a[j]
        return out

    # ----------------------------------------------------------------- events
    def handle(self, event: Event) -> None:
        """Update the state from one event. Unknown chargers are ignored (the adapter refuses them)."""
        if isinstance(event, Tick):
            return
        if isinstance(event, SiteMeterReading):
            if event.site_id == self.site.id and self.meter is not None:
                self.meter.update(event.current_a, event.at)
            return
        state = self.states.get(event.charger_id)
        if state is None:
            return
        if isinstance(event, ChargerOnline):
            state.connected, state.protocol = True, event.protocol
        elif isinstance(event, ChargerOffline):
            state.connected = False
        elif isinstance(event, ChargerStatus):
            state.status = event.status
        elif isinstance(event, SessionStarted):
            self._start_session(state, event)
        elif isinstance(event, SessionStopped):
            if state.transaction_id in (None, event.transaction_id):
                self._end_session(state, event)
        elif isinstance(event, NeedsUpdated):
            self._update_needs(state, event)
        elif isinstance(event, MeterSample):
            self._meter(event.charger_id, state, event)
        elif isinstance(event, ProfileResult):
            self._profile_result(state, event)
        elif isinstance(event, ObedienceChanged):
            state.obeys = event.obeys
            state.draw_a = event.draw_a
        elif isinstance(event, ExternalCapSet):
            if event.transaction_id is not None and event.transaction_id != state.transaction_id:
                return  # a cap for a session that has ended
            state.external_cap = [[t.timestamp(), max(0.0, a)] for t, a in event.periods] or None
            state.external_cap_until = event.until.timestamp() if event.until and event.periods else None

    def _start_session(self, state: ChargerState, event: SessionStarted) -> None:
        if state.transaction_id == event.transaction_id:
            return  # a repeated start after a reconnect is the same session
        state.transaction_id = event.transaction_id
        state.session_start = event.at
        state.session_energy_start_wh = event.meter_start_wh if event.meter_start_wh is not None \
            else state.energy_wh
        state.need_wh = state.need_at_energy_wh = state.departure = None
        state.car_max_a = state.car_min_a = state.car_phases = None
        state.external_cap = state.external_cap_until = None
        state.car_v2x, state.car_discharge_max_a, state.car_spare_wh = False, None, None
        # Until its TxProfile is held the car draws by the idle default: that is what it holds.
        state.held_a = state.idle_limit_a
        if state.status in ("unknown", "Available", "Preparing"):
            state.status = "Charging"
        self._replan_due = True

    def _end_session(self, state: ChargerState, event: SessionStopped) -> None:
        state.transaction_id = None
        state.session_start = None
        state.need_wh = state.need_at_energy_wh = state.departure = None
        state.car_max_a = state.car_min_a = state.car_phases = None
        state.external_cap = state.external_cap_until = None
        state.car_v2x, state.car_discharge_max_a, state.car_spare_wh = False, None, None
        if event.meter_stop_wh is not None:
            state.energy_wh = event.meter_stop_wh
        state.status = "Finishing" if state.status == "Charging" else state.status
        self._replan_due = True

    def _update_needs(self, state: ChargerState, event: NeedsUpdated) -> None:
        if event.energy_wh is not None:
            state.need_wh = max(0.0, event.energy_wh)
            state.need_at_energy_wh = state.energy_wh if state.energy_wh is not None else 0.0
        if event.departure is not None:
            state.departure = event.departure
        if event.max_current_a is not None:
            state.car_max_a = max(0.0, event.max_current_a)
        if event.min_current_a is not None:
            state.car_min_a = max(0.0, event.min_current_a)
        if event.phases in (1, 2, 3):
            state.car_phases = event.phases
        if event.v2x is not None:
            state.car_v2x = event.v2x
            state.car_discharge_max_a = None if event.discharge_max_a is None else max(0.0, event.discharge_max_a)
            state.car_spare_wh = event.spare_wh
        self._replan_due = True

    def _meter(self, charger_id: str, state: ChargerState, event: MeterSample) -> None:
        charger = self.site.chargers[self.topology.index(charger_id)]
        if any(c is not None for c in event.current_a):
            grid = [0.0, 0.0, 0.0]
            if charger.phases == 1:
                grid[["L1", "L2", "L3"].index(charger.phase)] = max(
                    (c for c in event.current_a if c is not None), default=0.0)
            else:
                for k, current in enumerate(event.current_a):
                    if current is not None:
                        grid["RST".index(charger.phase_rotation[k])] = max(0.0, current)
            state.prev_measured_a, state.measured_a = state.measured_a, grid
            state.measured_at = event.at
            if charger.phases == 3 and state.car_phases is None:
                drawing = [c for c in event.current_a if c is not None and c > 1.0]
                if len(drawing) == 1 and (event.current_a[0] or 0.0) > 1.0:
                    state.car_phases = 1
        if event.energy_wh is not None:
            state.energy_wh = event.energy_wh
            if state.transaction_id is not None and state.session_energy_start_wh is None:
                state.session_energy_start_wh = event.energy_wh
        if event.power_w is not None:
            state.power_w = event.power_w
        if event.soc_pct is not None:
            state.soc_pct = event.soc_pct

    def _profile_result(self, state: ChargerState, event: ProfileResult) -> None:
        state.last_push = {"at": event.at.isoformat(), "limit_a": event.limit_a,
                           "result": event.result, "detail": event.detail}
        if event.result != "Accepted" or event.detail.startswith("failsafe"):
            return  # the stack-0 failsafe says nothing of the stack-1 profile above it
        if event.idle:
            state.held_idle_a = event.limit_a
        else:
            state.held_a = event.limit_a
        state.held_known = True

    # ----------------------------------------------------------------- planning
    @property
    def replan_due(self) -> bool:
        return self._replan_due

    def plan_request(self, now: datetime) -> PlanRequest:
        """The planner's input for the sessions present now (clears the replan flag)."""
        self._replan_due = False
        start = slot_floor(now)
        horizon = self.settings.plan_horizon_h * 3600 // SLOT_S
        end = start + timedelta(seconds=horizon * SLOT_S)
        sessions: list[PlanSession] = []
        topo = self.topology
        for i, cid in enumerate(topo.charger_ids):
            state = self.states[cid]
            if state.transaction_id is None or not self._wants_current(state):
                continue
            charger = self.site.chargers[i]
            remaining = state.remaining_wh()
            max_a = charger.max_current_a if state.car_max_a is None else min(charger.max_current_a, state.car_max_a)
            if max_a <= 0:
                continue  # a car that says it takes 0 A holds no capacity in anyone's plan
            phases = charger.phases if state.car_phases is None else min(state.car_phases, charger.phases)
            if remaining is None:
                # Unknown needs: the car wants its maximum until the horizon (DESIGN 4).
                remaining = max_a * phases * self.site.voltage_v * (end - now).total_seconds() / 3600.0
            departure = min(state.departure or end, end)
            if departure <= now or remaining <= 0:
                continue
            sessions.append(PlanSession(
                charger_id=cid, arrival=now, departure=departure, energy_wh=remaining,
                max_current_a=max_a, min_current_a=max(charger.min_current_a, state.car_min_a or 0.0),
                phases=phases, weight=float(topo.priority[i]) or 1.0, **plan_discharge_fields(self, i, state),
            ))
        capacity = self.capacity_ahead(start, horizon)
        non_ev = None
        if self.meter is not None:
            non_ev = self._non_ev_ahead(start, horizon, now, export=True)
            capacity = capacity - non_ev
        capacity = capacity - self._reserved_load_a(now)[None, :]
        deficit, export = plan_deficit(self, capacity, non_ev)
        return PlanRequest(topology=topo, capacity_a=np.maximum(capacity, 0.0), sessions=tuple(sessions), start=start,
                           budget_s=self.settings.planner_budget_s,
                           fine_slots=self.settings.plan_fine_slots, deficit_a=deficit, export_room_a=export)

    def _non_ev_ahead(self, start: datetime, n_slots: int, now: datetime, *, export: bool) -> FloatArray:
        """Non-EV load plus margin per slot from ``start`` (n_slots, 3) [A]: the forecast where known
        (``non_ev_forecast``), at least the non-EV load of now in the current slot, else now's.
        ``export`` False counts no PV export (negative non-EV load) in the slots after this one."""
        assert self.meter is not None
        cap_now, _ = self.capacity_now(now)
        view = self.meter_view if self.meter_view is not None else self.meter_now(now, cap_now)
        assert view is not None
        out = np.repeat(view.non_ev_load_a[None, :], n_slots, axis=0)
        if self.non_ev_forecast is not None:
            f_start, values = self.non_ev_forecast
            offset = int((start - f_start).total_seconds() // SLOT_S)
            index = offset + np.arange(n_slots)
            valid = (index >= 0) & (index < len(values))
            out[valid] = values[index[valid]]
            if n_slots:
                out[0] = np.maximum(out[0], view.non_ev_load_a)
        if not export:
            out[1:] = np.maximum(out[1:], 0.0)
        return np.asarray(out + self.meter.settings.margin_a, dtype=np.float64)

    def accept_plan(self, outcome: SolveOutcome) -> None:
        """Keep a plan from the planner; any status other than optimal leaves the allocator alone."""
        self.plan_status = outcome.status
        self.plan_message = outcome.message
        self.plan = outcome.plan if outcome.status in ("optimal", "no_sessions") else None

    # ----------------------------------------------------------------- allocation
    def _wants_current(self, state: ChargerState) -> bool:
        return state.connected and state.transaction_id is not None and state.obeys

    @staticmethod
    def _is_idle(state: ChargerState) -> bool:
        """Connected, following its profiles, and no transaction: a car may plug in any moment."""
        return state.connected and state.transaction_id is None and state.obeys

    def _idle_limits(self, capacity: FloatArray, active_a: FloatArray,
                     active_mask: npt.NDArray[np.bool_]) -> FloatArray:
        """Idle limit per charger [A], shape (n_chargers,); 0 for chargers that are not idle.

        An idle charger holds its idle limit as its default profile, so a car that plugs in draws
        at most that until the balancer's TxProfile arrives (and for ever if the balancer is gone).
        It is what is *left over* at every node and phase once the chargers in a transaction have
        their limits, so an idle charger never takes anything from a charging car (work-conserving
        for real cars is unchanged). At most the charger's failsafe: that is what a car may draw
        when the balancer is gone and what an offline charger is reserved at. The full phase mask
        of the charger is loaded, since nothing is known about the next car; 0 or at least the
        charger's minimum, as for every limit.

        capacity : (n_nodes, 3) [A] node capacity now, less reserved loads (``_node_capacity``)
        active_a, active_mask : (n,) [A] and (n, 3) bool, the limits of the first allocation
        """
        topo = self.topology
        n = topo.n_chargers
        idle = np.array([self._is_idle(self.states[cid]) for cid in topo.charger_ids], dtype=bool)
        if n == 0 or not idle.any():
            return np.zeros(n)
        left = np.maximum(capacity - node_load_a(topo, active_a, active_mask), 0.0)
        request = AllocationRequest(
            topology=topo, capacity_a=left, phase_mask=topo.charger_phase_mask,
            min_a=topo.min_current_a, max_a=np.where(idle, self.failsafe_a, 0.0),
            # No rotation: an idle limit that moves every period only costs pushes.
            can_pause=topo.can_pause | ~idle,
        )
        return np.asarray(allocate(request).limit_a, dtype=np.float64)

    def _reserved_a(self, now: datetime) -> tuple[FloatArray, FloatArray]:
        """Per-charger current that is not ours to move (offline, disobedient) and its phase mask."""
        topo = self.topology
        reserve = np.zeros(topo.n_chargers)
        for i, cid in enumerate(topo.charger_ids):
            state = self.states[cid]
            if not state.connected:
                reserve[i] = self._offline_reserve_a(i, state, now)
            elif not state.obeys:
                reserve[i] = max(state.draw_a or 0.0, max(state.measured_a))
        return reserve, topo.charger_phase_mask.astype(np.float64)

    def _offline_reserve_a(self, i: int, state: ChargerState, now: datetime) -> float:
        """What an offline charger may still draw [A] while the schedule it holds runs: in a
        transaction its TxProfile, or the limit last sent if higher (it may have landed unseen),
        or its idle default (no TxProfile held yet); without one what it held after the session
        (a TxProfile-strategy charger drops its TxProfile and falls to its idle default, the
        others keep their stack-1 profile). Its failsafe once that schedule ends, or when nothing
        is known."""
        failsafe = max(float(self.failsafe_a[i]), 0.0)
        if state.held_until is not None and now >= state.held_until:
            return failsafe
        if state.transaction_id is not None:
            return max(state.held_a, state.limit_a, state.held_idle_a or 0.0)
        if not state.held_known:
            return failsafe
        if self.site.chargers[i].profile_strategy == "TxProfile":
            return failsafe if state.held_idle_a is None else state.held_idle_a
        return state.held_a

    def _reserved_load_a(self, now: datetime) -> FloatArray:
        """Per-phase sum of the reserved loads at the connection, (3,) [A]."""
        reserve, mask = self._reserved_a(now)
        return np.asarray(reserve @ mask, dtype=np.float64) if len(reserve) else np.zeros(3)

    def meter_now(self, now: datetime, cap_now: FloatArray) -> MeterView | None:
        """The site meter's non-EV load and the chargers' share of ``cap_now`` (None: no meter)."""
        if self.meter is None:
            return None
        topo = self.topology
        measured = np.array([self.states[cid].measured_a for cid in topo.charger_ids],
                            dtype=np.float64).reshape(-1, 3)
        meter_at = self.meter.last_at
        newer = np.array([meter_at is not None and s.measured_at is not None and s.measured_at > meter_at
                          for s in (self.states[cid] for cid in topo.charger_ids)], dtype=bool)
        if newer.any():
            # A car may have ramped up after the meter reading: subtract no more than it drew before.
            previous = np.array([self.states[cid].prev_measured_a for cid in topo.charger_ids],
                                dtype=np.float64).reshape(-1, 3)
            measured = np.where(newer[:, None], np.minimum(measured, previous), measured)
        limits = np.array([self.states[cid].limit_a for cid in topo.charger_ids], dtype=np.float64)
        states = [self.states[cid] for cid in topo.charger_ids]
        usable = np.array([s.connected and s.measured_at is not None
                           and abs((now - s.measured_at).total_seconds()) <= CHARGER_MEASUREMENT_MAX_AGE_S
                           for s in states], dtype=bool)
        capped = np.array([s.obeys for s in states], dtype=bool)
        loaded = phase_mask(topo, np.array([s.car_phases or 3 for s in states], dtype=np.int64))
        limits = discharge_draw_limits(limits, states, meter_at)
        return self.meter.view(now, cap_now, charger_draw_a(measured, limits, usable, capped, loaded))

    def _node_capacity(self, now: datetime) -> tuple[FloatArray, FloatArray, str]:
        topo = self.topology
        cap_now, source = self.capacity_now(now)
        capacity = np.repeat(topo.node_limit_a[:, None], 3, axis=1).astype(np.float64)
        capacity[0, :] = np.minimum(capacity[0, :], cap_now)
        self.meter_view = self.meter_now(now, cap_now)
        if self.meter_view is not None:
            # The chargers share what the non-EV load leaves of the connection (DESIGN 3.8).
            capacity[0, :] = np.minimum(topo.node_limit_a[0], cap_now - self.meter_view.cut_a)
        reserve, mask = self._reserved_a(now)
        reserved = np.asarray(topo.ancestors @ (reserve[:, None] * mask)) if topo.n_chargers else np.zeros((1, 3))
        capacity -= reserved
        # What the connection lacks with no charger drawing, for V2X discharge (balancer.v2x).
        root = capacity[0]
        if self.meter_view is not None and self.meter is not None:
            raw = cap_now - self.meter_view.non_ev_load_a - self.meter.settings.margin_a
            root = np.minimum(topo.node_limit_a[0], raw) - reserved[0]
        self.deficit_a = np.asarray(np.maximum(-root, 0.0), dtype=np.float64)
        return np.maximum(capacity, 0.0), cap_now, source

    def _allowance(self, now: datetime) -> tuple[FloatArray, FloatArray, FloatArray, npt.NDArray[np.bool_],
                                                 npt.NDArray[np.int8]]:
        """Per-charger min, max [A] and urgency, the phase mask of the cars, and what set each max
        (``code_number`` of charger_max, car_max or not_drawing)."""
        topo = self.topology
        n = topo.n_chargers
        min_a = topo.min_current_a.copy()
        max_a = np.zeros(n)
        urgency = np.zeros(n)
        max_code = np.full(n, _CHARGER_MAX, dtype=np.int8)
        car_phases = np.full(n, 3, dtype=np.int64)
        headroom = self.site.headroom_a
        for i, cid in enumerate(topo.charger_ids):
            state = self.states[cid]
            if state.car_phases is not None:
                car_phases[i] = state.car_phases
            if not self._wants_current(state):
                continue
            cap = topo.max_current_a[i]
            if state.car_max_a is not None and state.car_max_a < cap:
                cap, max_code[i] = state.car_max_a, _CAR_MAX
            external = state.external_cap_a(now.timestamp())
            if external is not None and external < cap:  # another party's cap only ever lowers the limit
                cap, max_code[i] = external, _EXTERNAL_CAP
            if state.car_min_a is not None:
                min_a[i] = max(min_a[i], state.car_min_a)
            drawn = max(state.measured_a)
            fresh = state.measured_at is not None and (now - state.measured_at).total_seconds() <= \
                MEASUREMENT_FRESH_S
            settled = state.limit_changed_at is None or state.measured_at is None or \
                state.measured_at > state.limit_changed_at
            taken = max(drawn + headroom, min_a[i])
            if fresh and settled and state.limit_a > 0 and drawn < state.limit_a - headroom and taken < cap:
                # The car takes less than it may: free the rest, keep a headroom to ramp back.
                cap, max_code[i] = taken, _NOT_DRAWING
            remaining = state.remaining_wh()
            if remaining is not None and remaining <= 0 and min_a[i] < cap:
                cap, max_code[i] = min_a[i], _NOT_DRAWING
            max_a[i] = cap if cap >= min_a[i] else 0.0
            if state.departure is not None and remaining is not None and cap > 0:
                power_w = cap * min(car_phases[i], 3) * self.site.voltage_v
                laxity_s = (state.departure - now).total_seconds() - remaining / power_w * 3600.0
                urgency[i] = -laxity_s
            else:
                urgency[i] = -1e9
        mask = phase_mask(topo, car_phases)
        return min_a, max_a, urgency, mask, max_code

    def decide(self, now: datetime) -> list[ChargerSchedule]:
        """Allocate the capacity of the moment and build every charger's schedule."""
        topo = self.topology
        self._last_at = now
        slot = slot_floor(now)
        if self._last_slot != slot:
            self._last_slot = slot
            self._replan_due = True
        capacity, _, _ = self._node_capacity(now)
        min_a, max_a, urgency, mask, max_code = self._allowance(now)
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
        request = AllocationRequest(
            topology=topo, capacity_a=capacity, phase_mask=mask, min_a=min_a, max_a=max_a,
            target_a=target, urgency=urgency, can_pause=topo.can_pause | (max_a <= 0),
            now_s=now.timestamp(), rotation_period_s=self.site.rotation_period_s, max_code=max_code,
            **discharge_inputs(self, now),
        )
        allocation = allocate_holding(request, self._churn, now.timestamp())  # min_pause_s / min_charge_s
        self.last_allocation, self.allocated_ids = allocation, topo.charger_ids
        idle_limit = self._idle_limits(capacity, allocation.limit_a, mask)
        schedules: list[ChargerSchedule] = []
        shared = self._ahead(now)
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
            if self._is_idle(state):
                schedule = self._schedule(i, cid, now, state.idle_limit_a, shared, idle=True)
            else:
                schedule = self._schedule(i, cid, now, limit, shared)
            state.held_until = schedule.periods[-1][0] if len(schedule.periods) > 1 else None
            schedules.append(schedule)
            self.last_schedules[cid] = schedule
        return schedules

    def _ahead(self, now: datetime) -> Ahead:
        """What every schedule of this decision shares: the start of each slot ahead, the capacity
        ratio of each slot ahead to now (lowest phase), and the plan's rows aligned to those slots.

        The ratio is taken on the capacity *less the reserved loads* (offline, disobedient
        chargers), which do not shrink with it: the limits handed out share ``cap_now - reserved``,
        so scaled by this ratio they fit ``cap_ahead - reserved`` in every slot.
        """
        horizon = self.settings.plan_horizon_h * 3600 // SLOT_S
        start = slot_floor(now)
        cap_now, _ = self.capacity_now(now)
        ahead = self.capacity_ahead(start, horizon)
        load = self._reserved_load_a(now)
        if self.meter_view is not None:
            # Ahead, the non-EV load of now is assumed to stay, and PV export to stop.
            cap_now = cap_now - self.meter_view.cut_a
            now_load = self.meter_view.non_ev_load_a + self.meter.settings.margin_a if self.meter else 0.0
            ahead = ahead - np.maximum(self._non_ev_ahead(start, horizon, now, export=False), now_load)
        net_now = np.maximum(cap_now - load, 1e-9)
        ratio = np.clip(np.min((ahead - load[None, :]) / net_now[None, :], axis=1), 0.0, 1.0)
        rows: dict[str, FloatArray] = {}
        if self.plan is not None:
            offset = int((start - self.plan.start).total_seconds() // self.plan.slot_s)
            index = offset + np.arange(horizon)
            valid = (index >= 0) & (index < self.plan.limit_a.shape[1])
            for j, cid in enumerate(self.plan.charger_ids):
                row = np.zeros(horizon)
                row[valid] = self.plan.limit_a[j, index[valid]]
                rows[cid] = row
        times = [start + timedelta(seconds=k * SLOT_S) for k in range(horizon + 1)]
        return times, ratio, rows

    def _schedule(self, i: int, cid: str, now: datetime, limit_a: float,
                  shared: Ahead, *, idle: bool = False) -> ChargerSchedule:
        """The limit now, then the planned limits of the slots ahead, then the failsafe.

        Ahead, a charger never goes above today's limit scaled by how much the capacity shrinks:
        summed over chargers that stays within every future slot's capacity even when plans are
        stale or the balancer vanishes. The plan may only lower it further. An idle charger's
        schedule (``idle``) follows the same rule with its idle limit (no plan row: no session),
        and always ends in the failsafe at the horizon like the others, even at 0 A now.

        ``idle_periods`` is the stack-1 default an idle-limit profile should hold: the schedule
        itself for an idle charger; for a charger in a transaction 0 A until the horizon, then the
        failsafe, so that an idle limit from before the session never applies to the next car
        (the adapter pushes it once the session's TxProfile is held).
        """
        state = self.states[cid]
        charger = self.site.chargers[i]  # the topology keeps the site's order
        times, ratio, rows = shared
        end = times[len(ratio)]
        failsafe = float(self.failsafe_a[i])
        periods: list[tuple[datetime, float]] = [(now, limit_a)]
        if idle or (state.transaction_id is not None and limit_a > 0):
            values = limit_a * ratio
            row = None if idle else rows.get(cid)
            if row is not None:
                values = np.minimum(values, row)
            step = charger.granularity_a
            values = np.floor(values / step + 1e-9) * step
            values = np.where(values >= charger.min_current_a, values, 0.0)
            values[0] = limit_a
            changes = np.flatnonzero(values[1:] != values[:-1]) + 1
            # A rise starts INCREASE_LAG after the slot boundary, a fall on it: chargers' clocks
            # differ by a few seconds, and one charger rising before another falls would overload
            # the site for that moment (decreases before increases, within the schedules too).
            rises = values[changes] > values[changes - 1]
            periods.extend((times[k] + INCREASE_LAG if up else times[k], float(values[k]))
                           for k, up in zip(changes.tolist(), rises.tolist(), strict=True))
            periods.append((end + INCREASE_LAG if failsafe > values[-1] else end, failsafe))
        elif limit_a < 0:  # V2X discharge: until the end of this slot at most (balancer.v2x)
            periods.extend(((times[1], 0.0), (end + INCREASE_LAG, failsafe)))
        if not idle and state.external_cap:  # another party's cap, from the moment it changes
            periods = capped_periods(periods, state.external_cap, state.external_cap_until,
                                     charger.min_current_a, charger.granularity_a)
        idle_periods = tuple(periods) if idle else ((now, 0.0), (end + INCREASE_LAG, failsafe))
        return ChargerSchedule(
            charger_id=cid, at=now, limit_a=limit_a, periods=tuple(periods),
            failsafe_a=failsafe, transaction_id=state.transaction_id,
            phases=charger.phases if state.car_phases is None else min(state.car_phases, charger.phases),
            idle_periods=idle_periods,
        )

    # ----------------------------------------------------------------- reporting
    def _limits(self, now: datetime) -> dict[str, Limit]:
        """Every charger's limit with its reason (DESIGN 3.6; ``balancer.reasons``)."""
        return charger_limits(self, now)

    def offline_reserve_a(self, i: int, now: datetime) -> float:
        """What offline charger ``i`` is reserved at now [A] (``_offline_reserve_a``)."""
        return self._offline_reserve_a(i, self.states[self.topology.charger_ids[i]], now)

    def _note_reasons(self, limits: dict[str, Limit]) -> None:
        """Remember whose reason (code, node, phase) changed since the last status."""
        for cid, limit in limits.items():
            key = (limit.code, limit.node, limit.phase)
            old = self._reason_keys.get(cid)
            if old is not None and old != key:
                self._reason_changes[cid] = (self._reason_changes.get(cid, (old, limit))[0], limit)
            self._reason_keys[cid] = key

    def take_reason_changes(self) -> list[tuple[str, ReasonKey, Limit]]:
        """The chargers whose reason changed between the statuses taken since the last call
        (``status`` notices): (id, the reason before, the limit now with its reason)."""
        changed, self._reason_changes = self._reason_changes, {}
        return [(cid, old, limit) for cid, (old, limit) in changed.items() if old != (limit.code, limit.node,
                                                                                        limit.phase)]

    def status(self, now: datetime) -> SiteStatus:
        topo = self.topology
        cap_now, source = self.capacity_now(now)
        limits = self._limits(now)
        self._note_reasons(limits)
        allocated = np.zeros(3)
        idle_allocated = np.zeros(3)
        measured = np.zeros(3)
        discharge = np.zeros(3)
        chargers: list[dict[str, Any]] = []
        for i, cid in enumerate(topo.charger_ids):
            state = self.states[cid]
            mask = topo.charger_phase_mask[i]
            if state.car_phases == 1:
                mask = np.zeros(3, dtype=bool)
                mask[topo.single_phase_grid[i]] = True
            # What is counted for it: a charger that does not obey (or refuses its limits) at its real draw.
            counted = state.limit_a if state.obeys else max(state.draw_a or 0.0, max(state.measured_a))
            allocated += mask * (counted if state.connected else self._offline_reserve_a(i, state, now))
            measured += np.asarray(state.measured_a)
            if state.connected and state.limit_a < 0:
                discharge -= mask * state.limit_a
            idle_limit = state.idle_limit_a if self._is_idle(state) else 0.0
            idle_allocated += topo.charger_phase_mask[i] * idle_limit
            chargers.append({
                "id": cid,
                "connected": state.connected,
                "protocol": state.protocol,
                "limit_a": round(state.limit_a, 3),
                "limit_reason": limits[cid].to_json(),
                "failsafe_a": round(float(self.failsafe_a[i]), 3),
                "idle_limit_a": round(idle_limit, 3),
                "measured_a": [round(x, 2) for x in state.measured_a],
                "state": _state_name(state),
                "transaction_id": state.transaction_id,
                "obeys": state.obeys,
                "energy_wh": state.energy_wh,
                "session_delivered_wh": round(state.session_delivered_wh(), 1),
                "remaining_wh": state.remaining_wh(),
                "departure": state.departure.isoformat() if state.departure else None,
                "soc_pct": state.soc_pct,
                "power_w": state.power_w,
                "last_push": state.last_push,
                "external_cap_a": state.external_cap_a(now.timestamp()),
            })
        return SiteStatus(
            site_id=self.site.id, at=now,
            capacity_a=(float(cap_now[0]), float(cap_now[1]), float(cap_now[2])),
            capacity_w=float(cap_now.sum() * self.site.voltage_v),
            capacity_source=source,
            allocated_a=(float(allocated[0]), float(allocated[1]), float(allocated[2])),
            measured_a=(float(measured[0]), float(measured[1]), float(measured[2])),
            allocation_status=self.last_allocation.status if self.last_allocation else "none",
            plan_status=self.plan_status,
            chargers=tuple(chargers),
            idle_allocated_a=(float(idle_allocated[0]), float(idle_allocated[1]), float(idle_allocated[2])),
            meter=self.meter_now(now, cap_now),
            discharge_a=(float(discharge[0]), float(discharge[1]), float(discharge[2])),
            allocation_message=self.last_allocation.message if self.last_allocation else "",
        )

    def snapshot(self) -> dict[str, Any]:
        """State to persist so a restart keeps sessions, needs and the limits chargers hold."""
        return {cid: s.to_json() for cid, s in self.states.items()}

    def restore(self, data: dict[str, Any]) -> None:
        for cid, raw in data.items():
            if cid in self.states and isinstance(raw, dict):
                self.states[cid] = ChargerState.from_json(raw)
        self._replan_due = True


def _state_name(state: ChargerState) -> str:
    if not state.connected:
        return "offline"
    if state.transaction_id is None:
        return "idle"
    if not state.obeys:
        return "not_obeying"
    if state.limit_a <= 0:
        return "paused"
    return "charging" if max(state.measured_a) > IDLE_DRAW_A else "waiting"

