"""What the controller knows about one charger, and how each event about it changes that. Pure.

A ``ChargerState`` is mutable and owned by the controller; ``apply_event`` is the one place a
charger event (``balancer.events``) changes it, and says whether a replan is due.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from balancer.events import (
    ChargerOffline,
    ChargerOnline,
    ChargerStatus,
    ExternalCapSet,
    LimitConfirmed,
    MeterSample,
    NeedsUpdated,
    ObedienceChanged,
    ProfileResult,
    ReadingDue,
    SessionStarted,
    SessionStopped,
)
from balancer.external_cap import cap_at
from balancer.model import Charger

__all__ = ["IDLE_DRAW_A", "ChargerEvent", "ChargerState", "apply_event", "is_idle", "state_name", "unverified",
           "wants_current"]

IDLE_DRAW_A = 0.5
"""Below this a car counts as not drawing (full, or waiting)."""

ChargerEvent = (ChargerOnline | ChargerOffline | ChargerStatus | SessionStarted | SessionStopped | NeedsUpdated
                | MeterSample | ProfileResult | LimitConfirmed | ObedienceChanged | ExternalCapSet | ReadingDue)
"""The events about one charger (``LimitConfirmed`` changes nothing here)."""


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
    held_at: datetime | None = None
    """When ``held_a`` was accepted (None: not in this session): a reading taken before a raise
    landed shows the car under the old limit (``allocation_inputs.judged_limit_a``)."""
    held_before_a: float = 0.0
    held_before_at: datetime | None = None
    """The accepted limit before ``held_a`` and when it was accepted: what a reading taken between
    the two acceptances was drawn under (at least the lower of the two)."""
    reading_due_at: datetime | None = None
    """When fresh readings were asked for after a limit it accepted (``ReadingDue``; None: none)."""
    reading_asked_at: datetime | None = None
    """When the change that opened the wait for ``reading_due_at`` landed: changes landing before
    the reading they wait for was due keep the first one's (its ramp is still unseen)."""
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
    seen: bool = False
    """Connected since this process started (not persisted). Until then the persisted limits may
    lag what the previous process pushed (its snapshot is up to ``PERSIST_EVERY_S`` old: a kill -9
    0.3 s after a raise from 0 to 6.1 A left 0 A persisted), so a session of it is reserved at the
    charger's maximum (``allocation_inputs.reserved_a``)."""
    verified: bool = False
    """A reading has shown it keeps a limit it was sent (``ObedienceChanged`` with obeys): until
    then a new session of it is reserved at the charger's maximum (``unverified``). Persisted."""
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
            if key in ("session_start", "departure", "measured_at", "held_until", "limit_changed_at",
                       "held_at", "held_before_at", "reading_due_at", "reading_asked_at"):
                value = datetime.fromisoformat(value) if value else None
            setattr(state, key, value)
        # After a restart nobody is connected until it says so.
        state.connected = state.seen = False
        return state


def apply_event(state: ChargerState, charger: Charger, event: ChargerEvent) -> bool:
    """Update ``state`` from one event about its charger; True when a replan is due."""
    if isinstance(event, ChargerOnline):
        state.connected, state.seen, state.protocol = True, True, event.protocol
    elif isinstance(event, ChargerOffline):
        state.connected = False
    elif isinstance(event, ChargerStatus):
        state.status = event.status
    elif isinstance(event, SessionStarted):
        return start_session(state, event)
    elif isinstance(event, SessionStopped):
        if state.transaction_id in (None, event.transaction_id):
            return end_session(state, event)
    elif isinstance(event, NeedsUpdated):
        return update_needs(state, event)
    elif isinstance(event, MeterSample):
        take_meter_sample(state, charger, event)
    elif isinstance(event, ProfileResult):
        take_profile_result(state, event)
    elif isinstance(event, ObedienceChanged):
        verified = event.obeys and event.verified and not state.verified
        state.obeys = event.obeys
        state.verified = state.verified or verified
        state.draw_a = event.draw_a
        return verified  # its reserve at its maximum ends: the plan had that capacity taken off
    elif isinstance(event, ReadingDue):
        if state.reading_due_at is None or state.reading_asked_at is None or event.at > state.reading_due_at:
            state.reading_asked_at = event.at
        state.reading_due_at = event.due_at
    elif isinstance(event, ExternalCapSet):
        if event.transaction_id is not None and event.transaction_id != state.transaction_id:
            return False  # a cap for a session that has ended
        state.external_cap = [[t.timestamp(), max(0.0, a)] for t, a in event.periods] or None
        state.external_cap_until = event.until.timestamp() if event.until and event.periods else None
    return False


def start_session(state: ChargerState, event: SessionStarted) -> bool:
    """A session starts (True: a new one, so a replan is due)."""
    if state.transaction_id == event.transaction_id:
        return False  # a repeated start after a reconnect is the same session
    state.transaction_id = event.transaction_id
    state.session_start = event.at
    state.session_energy_start_wh = event.meter_start_wh if event.meter_start_wh is not None \
        else state.energy_wh
    state.need_wh = state.need_at_energy_wh = state.departure = None
    state.car_max_a = state.car_min_a = state.car_phases = None
    state.external_cap = state.external_cap_until = None
    state.car_v2x, state.car_discharge_max_a, state.car_spare_wh = False, None, None
    # Until its TxProfile is held the car draws by the idle default: that is what it holds.
    state.held_a, state.held_at, state.held_before_at = state.idle_limit_a, None, None
    if state.status in ("unknown", "Available", "Preparing"):
        state.status = "Charging"
    return True


def end_session(state: ChargerState, event: SessionStopped) -> bool:
    """The session ends (True: a replan is due)."""
    state.transaction_id = None
    state.session_start = None
    state.need_wh = state.need_at_energy_wh = state.departure = None
    state.car_max_a = state.car_min_a = state.car_phases = None
    state.external_cap = state.external_cap_until = None
    state.car_v2x, state.car_discharge_max_a, state.car_spare_wh = False, None, None
    if event.meter_stop_wh is not None:
        state.energy_wh = event.meter_stop_wh
    state.status = "Finishing" if state.status == "Charging" else state.status
    return True


def update_needs(state: ChargerState, event: NeedsUpdated) -> bool:
    """What the car says it needs (True: a replan is due)."""
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
    return True


def take_meter_sample(state: ChargerState, charger: Charger, event: MeterSample) -> None:
    """A charger's MeterValues, its phases mapped to the grid's by its wiring."""
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


def take_profile_result(state: ChargerState, event: ProfileResult) -> None:
    """What a push did: an accepted stack-1 limit is what the charger holds now."""
    state.last_push = {"at": event.at.isoformat(), "limit_a": event.limit_a,
                       "result": event.result, "detail": event.detail}
    if event.result != "Accepted" or event.detail.startswith("failsafe"):
        return  # the stack-0 failsafe says nothing of the stack-1 profile above it
    if event.idle:
        state.held_idle_a = event.limit_a
    else:
        state.held_before_a, state.held_before_at = state.held_a, state.held_at
        state.held_a, state.held_at = event.limit_a, event.at
    state.held_known = True


def wants_current(state: ChargerState) -> bool:
    """Connected, in a transaction and following its profiles: the allocator serves it."""
    return state.connected and state.transaction_id is not None and state.obeys


def unverified(state: ChargerState) -> bool:
    """Connected, in a transaction, not flagged, and never seen keeping a limit: it may be a charger
    that accepts its limits and ignores them, found only at its first reading."""
    return state.connected and state.transaction_id is not None and state.obeys and not state.verified


def is_idle(state: ChargerState) -> bool:
    """Connected, following its profiles, and no transaction: a car may plug in any moment."""
    return state.connected and state.transaction_id is None and state.obeys


def state_name(state: ChargerState) -> str:
    """The ``state`` field of the site JSON."""
    if not state.connected:
        return "offline"
    if state.transaction_id is None:
        return "idle"
    if not state.obeys:
        return "not_obeying"
    if state.limit_a <= 0:
        return "paused"
    return "charging" if max(state.measured_a) > IDLE_DRAW_A else "waiting"

