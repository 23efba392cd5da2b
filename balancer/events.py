"""Typed events into the controller and commands out of it.

The adapters translate protocol messages (OCPP, OSCP, the admin API) into these events and carry
the commands out; the core never sees a frame or a socket. Times are aware UTC datetimes.
Currents in ``MeterSample`` are per *charger* phase (as the charger reports them, L1..L3 of its
own wiring); the controller maps them to grid phases with the charger's ``phase_rotation``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from balancer.timeline import CapacityTimeline

__all__ = [
    "CapacityUpdated",
    "ChargerOffline",
    "ChargerOnline",
    "ChargerSchedule",
    "ChargerStatus",
    "Event",
    "ExternalCapSet",
    "LimitConfirmed",
    "MeterSample",
    "NeedsUpdated",
    "ObedienceChanged",
    "ProfileResult",
    "ReadingDue",
    "SessionStarted",
    "SessionStopped",
    "SiteMeterReading",
    "Tick",
]


@dataclass(frozen=True, slots=True)
class ChargerOnline:
    """A charger connected (or reconnected) and booted; ``protocol`` is "ocpp1.6" or "ocpp2.0.1"."""

    charger_id: str
    at: datetime
    protocol: str


@dataclass(frozen=True, slots=True)
class ChargerOffline:
    """The websocket closed; the charger may still be drawing at its last limit."""

    charger_id: str
    at: datetime


@dataclass(frozen=True, slots=True)
class ChargerStatus:
    """StatusNotification (1.6 status, or 2.0.1 connectorStatus / TransactionEvent chargingState)."""

    charger_id: str
    at: datetime
    status: str


@dataclass(frozen=True, slots=True)
class SessionStarted:
    """StartTransaction (1.6) or TransactionEvent Started (2.0.1)."""

    charger_id: str
    at: datetime
    transaction_id: str
    meter_start_wh: float | None = None
    id_tag: str | None = None


@dataclass(frozen=True, slots=True)
class SessionStopped:
    """StopTransaction (1.6) or TransactionEvent Ended (2.0.1): the only thing that ends a session."""

    charger_id: str
    at: datetime
    transaction_id: str
    meter_stop_wh: float | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class NeedsUpdated:
    """What the car still needs: ISO 15118 NotifyEVChargingNeeds, or the admin API for other cars.

    ``None`` leaves a field unknown. ``source`` is "iso15118" or "api".
    """

    charger_id: str
    at: datetime
    energy_wh: float | None = None
    departure: datetime | None = None
    max_current_a: float | None = None
    min_current_a: float | None = None
    phases: int | None = None
    source: str = "api"
    v2x: bool | None = None
    """The car offers V2X (2.1 ``v2xChargingParameters``, or the needs API's ``discharge_allowed``)."""
    discharge_max_a: float | None = None
    """The car's discharge limit per phase [A] (V2X)."""
    spare_wh: float | None = None
    """What the car can give above its minimum state of charge [Wh] (minus ``evMinV2XEnergyRequest``)."""


@dataclass(frozen=True, slots=True)
class MeterSample:
    """MeterValues: per-phase current [A] (charger phases L1..L3, None when not reported),
    active power [W], energy register [Wh], state of charge [%]."""

    charger_id: str
    at: datetime
    current_a: tuple[float | None, float | None, float | None] = (None, None, None)
    power_w: float | None = None
    energy_wh: float | None = None
    soc_pct: float | None = None


@dataclass(frozen=True, slots=True)
class ProfileResult:
    """Outcome of pushing a limit to a charger (accepted, rejected, error, timeout).

    ``idle`` marks the idle default of a TxProfile-strategy charger (a profile of its own): it is
    not what a car in a session draws by, so it does not change the limit the charger holds.
    """

    charger_id: str
    at: datetime
    limit_a: float
    result: str
    detail: str = ""
    idle: bool = False


@dataclass(frozen=True, slots=True)
class LimitConfirmed:
    """A charger accepted a stack-1 profile: it holds ``periods`` ((start, limit [A]) pairs, the
    last limit for ever after) from ``at`` on. ``purpose`` names the profile (TxProfile, TxDefault,
    Max, the idle default); a decrease step of a fan-out is confirmed like the decision itself."""

    charger_id: str
    at: datetime
    limit_a: float
    periods: tuple[tuple[datetime, float], ...]
    purpose: str = ""


@dataclass(frozen=True, slots=True)
class ReadingDue:
    """The adapter asked a charger whose limit changed for fresh MeterValues (OCPP TriggerMessage),
    to be sent at ``due_at``, once its car has followed the change: until a meter reading after
    that one, a step at the site meter that the charger's unseen ramp explains is not taken for
    non-EV load (``balancer.site_meter``)."""

    charger_id: str
    at: datetime
    due_at: datetime


@dataclass(frozen=True, slots=True)
class ObedienceChanged:
    """The adapter found that a charger does (not) follow its profile; ``draw_a`` is what it really draws.
    ``verified``: a reading showed it keeps a limit it was sent (``ChargerState.verified``)."""

    charger_id: str
    at: datetime
    obeys: bool
    draw_a: float | None = None
    detail: str = ""
    verified: bool = False


@dataclass(frozen=True, slots=True)
class SiteMeterReading:
    """The site meter at the grid connection (DESIGN 3.8): net current per *grid* phase [A], import
    positive, export negative; None where the meter does not measure that phase. ``at`` is when it
    was measured (the poll for Modbus, the pushed timestamp for HTTP)."""

    site_id: str
    at: datetime
    current_a: tuple[float | None, float | None, float | None]


@dataclass(frozen=True, slots=True)
class ExternalCapSet:
    """A cap on the session of one charger set by another party (an OCPI ChargingProfile).

    ``periods`` are (absolute start, limit [A per phase]) pairs in time order: each holds until
    the next one starts, the last one until ``until`` (None: open-ended). Before the first start
    and after ``until`` there is no cap. Empty ``periods`` clears the cap. ``transaction_id``:
    the session the cap belongs to; a cap never outlives its session. The controller takes the
    lower of the cap and the site's allocation, so a cap can only lower a limit.
    """

    charger_id: str
    at: datetime
    periods: tuple[tuple[datetime, float], ...] = ()
    until: datetime | None = None
    transaction_id: str | None = None


@dataclass(frozen=True, slots=True)
class CapacityUpdated:
    """The capacity in force for a site was read anew (``forecast.timeline``): the forecasts or the
    grid operator's link changed, or a slot boundary passed."""

    site_id: str
    timeline: CapacityTimeline


@dataclass(frozen=True, slots=True)
class Tick:
    """The clock moved on (the control interval, or a slot boundary)."""

    at: datetime


Event = (
    ChargerOnline
    | ChargerOffline
    | ChargerStatus
    | SessionStarted
    | SessionStopped
    | NeedsUpdated
    | MeterSample
    | ProfileResult
    | LimitConfirmed
    | ObedienceChanged
    | ReadingDue
    | SiteMeterReading
    | ExternalCapSet
    | CapacityUpdated
    | Tick
)


@dataclass(frozen=True, slots=True)
class ChargerSchedule:
    """A command: the limit a charger may draw now and the planned limits ahead.

    ``periods`` are (absolute start, limit [A per phase]) pairs, the first starting at or before
    ``at``; ``limit_a`` equals the first period's limit. ``transaction_id`` is None when no
    transaction runs (the adapter then updates only the failsafe/default profile).
    ``failsafe_a`` is the TxDefaultProfile limit this charger must hold (DESIGN 4).

    For an idle charger (connected, no transaction) ``limit_a`` and ``periods`` are its *idle
    limit*: what a car that plugs in may draw before the balancer's TxProfile arrives; the adapter
    holds it as the charger's stack-1 default. ``idle_periods`` is what that default should hold:
    the same periods for an idle charger, 0 A until the horizon (then the failsafe) for a charger
    in a transaction, so a stale idle limit never applies to the next car. Empty: no idle profile
    is managed (schedules built by hand).
    """

    charger_id: str
    at: datetime
    limit_a: float
    periods: tuple[tuple[datetime, float], ...]
    failsafe_a: float
    transaction_id: str | None = None
    phases: int = 3
    idle_periods: tuple[tuple[datetime, float], ...] = ()
