"""The site model: immutable descriptions of sites, their fuse tree and their chargers.

Everything here is a frozen dataclass built once from a validated config (``balancer.config``);
the hot paths turn it into numpy arrays (``balancer.problem``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from balancer.rounding import floor_to
from balancer.settings import (
    CapacityProviderSettings,
    ClusterSettings,
    HttpSettings,
    InfluxSettings,
    OcpiLocation,
    OcpiSettings,
    OcppSettings,
    OscpSettings,
    UpstreamSettings,
)

__all__ = [
    "CONNECTION",
    "LIMIT_CODES",
    "PHASES",
    "ROTATIONS",
    "CapacityProviderSettings",
    "CapacitySource",
    "Charger",
    "Circuit",
    "ClusterSettings",
    "Config",
    "ControlSettings",
    "HttpSettings",
    "InfluxSettings",
    "Limit",
    "LimitCode",
    "LimitSource",
    "MeterSettings",
    "OcpiLocation",
    "OcpiSettings",
    "OcppSettings",
    "OscpSettings",
    "Session",
    "Site",
    "UpstreamSettings",
    "floor_to",
]

PHASES = ("L1", "L2", "L3")
"""Grid phase names; index 0, 1, 2 in every per-phase array."""

ROTATIONS = ("RST", "RTS", "SRT", "STR", "TRS", "TSR")
"""OCPP phase rotations: which grid phase each charger phase (R, S, T) is wired to."""

CONNECTION = ""
"""Circuit id of the grid connection itself (the root of the fuse tree)."""


class CapacitySource(StrEnum):
    """Where the capacity in force comes from (``capacity_source`` in the API, DESIGN 3.5)."""

    FORECAST = "forecast"
    FALLBACK_FORECAST = "fallback_forecast"
    FALLBACK_CONFIG = "fallback_config"


LimitSource = CapacitySource
"""The former name of ``CapacitySource`` (it only ever named capacity sources in use)."""


class LimitCode(StrEnum):
    """Why a charger's limit has the value it has (``limit_reason.code``, DESIGN 3.6).

    The allocator finds ``CAPACITY`` (a node's capacity on a phase froze it), the bound it was
    given (``CHARGER_MAX``, ``CAR_MAX``, or what the caller says set it: ``NOT_DRAWING``,
    ``EXTERNAL_CAP``, ...) and, for a paused charger, ``PLAN`` (the plan held it back),
    ``PRIORITY`` (higher-priority chargers took the room) or ``PAUSED_MIN_NOT_ADMITTED``. The
    controller adds what only it knows: ``NOT_DRAWING`` (no car, or the car takes less),
    ``RESERVED_DISOBEYING``, ``FAILSAFE`` (offline or never connected) and ``CAR_ASLEEP`` (the
    car did not draw after its limit was raised, ``balancer.sleep``).
    """

    CAPACITY = "capacity"
    CHARGER_MAX = "charger_max"
    CAR_MAX = "car_max"
    PLAN = "plan"
    PAUSED_MIN_NOT_ADMITTED = "paused_min_not_admitted"
    PRIORITY = "priority"
    NOT_DRAWING = "not_drawing"
    RESERVED_DISOBEYING = "reserved_disobeying"
    FAILSAFE = "failsafe"
    METER = "meter"
    DISCHARGE = "discharge"
    EXTERNAL_CAP = "external_cap"
    CAR_ASLEEP = "car_asleep"


LIMIT_CODES: tuple[LimitCode, ...] = tuple(LimitCode)
"""The allocator's reason arrays hold small integers: code ``k`` is ``LIMIT_CODES[k]``."""


@dataclass(frozen=True, slots=True)
class Limit:
    """A charger's limit [A per phase] and why it has that value.

    ``node`` names the fuse-tree node that bound it (the site id for the connection) and
    ``phase`` the grid phase ("L1".."L3"), both only for codes that have one; ``detail`` says it
    in words for people.
    """

    value_a: float
    code: LimitCode
    node: str | None = None
    phase: str | None = None
    detail: str = ""

    def to_json(self) -> dict[str, str | None]:
        """``limit_reason`` as the admin API carries it (the value is the charger's ``limit_a``)."""
        return {"code": self.code.value, "node": self.node, "phase": self.phase, "detail": self.detail}


@dataclass(frozen=True, slots=True)
class Circuit:
    """A fuse below the grid connection; ``parent`` is ``CONNECTION`` for a top-level feeder."""

    id: str
    max_current_a: float
    parent: str = CONNECTION


@dataclass(frozen=True, slots=True)
class Charger:
    """One charger (one EVSE/connector is balanced per charger).

    ``phase`` is the grid phase a single-phase charger loads; ``phase_rotation`` tells on which
    grid phase a three-phase charger's first phase (R) lies, where a single-phase car draws.
    """

    id: str
    max_current_a: float
    min_current_a: float = 6.0
    phases: int = 3
    phase: str = "L1"
    phase_rotation: str = "RST"
    circuit: str = CONNECTION
    priority: int = 1
    password: str | None = None
    integer_amps: bool = False
    profile_strategy: str = "TxProfile"
    pause_method: str = "zero_limit"
    evse_id: int = 1
    upstream_id: str | None = None
    """Local controller mode: this charger's id towards the CSMS (default: its own id)."""
    upstream_password: str | None = None
    """Local controller mode with ``auth: config``: its HTTP Basic password at the CSMS."""
    allow_discharge: bool = False
    """V2X (DESIGN 3.9): a car that offers it may be told to discharge, for peak shaving only."""
    max_discharge_current_a: float | None = None
    """The charger's discharge limit per phase [A]; None: ``max_current_a``."""

    @property
    def discharge_limit_a(self) -> float:
        """How far this charger may discharge a car per phase [A]; 0 when it may not."""
        if not self.allow_discharge:
            return 0.0
        return self.max_current_a if self.max_discharge_current_a is None else self.max_discharge_current_a

    @property
    def granularity_a(self) -> float:
        """Smallest step a limit for this charger may take [A]."""
        return 1.0 if self.integer_amps else 0.1

    @property
    def can_pause(self) -> bool:
        """False when the charger refuses 0 A and its car must be kept at its minimum."""
        return self.pause_method != "min_current"

    def grid_phases(self, car_phases: int | None = None) -> tuple[int, ...]:
        """Grid phase indices loaded by a car using ``car_phases`` phases on this charger."""
        if self.phases == 1:
            return (PHASES.index(self.phase),)
        used = 3 if car_phases is None else min(car_phases, 3)
        order = tuple("RST".index(letter) for letter in self.phase_rotation)
        # phase_rotation lists the grid phase (R=L1, S=L2, T=L3) wired to charger phases 1, 2, 3.
        return tuple(sorted(order[:used]))


@dataclass(frozen=True, slots=True)
class MeterSettings:
    """The site meter at the grid connection (DESIGN 3.8); see ``balancer.site_meter``."""

    source: str = "modbus"
    host: str = "127.0.0.1"
    port: int = 502
    unit_id: int = 1
    map: str = "sunspec"
    poll_s: float = 1.0
    timeout_s: float = 2.0
    stale_after_s: float = 10.0
    fallback_base_load_a: tuple[float, float, float] = (0.0, 0.0, 0.0)
    margin_a: float = 1.0
    frozen_after_s: float = 60.0


@dataclass(frozen=True, slots=True)
class Site:
    """One grid connection with its fuse tree and chargers."""

    id: str
    voltage_v: float
    grid_limit_a: float
    fallback_kw: float
    circuits: tuple[Circuit, ...] = ()
    chargers: tuple[Charger, ...] = ()
    oscp_group_id: str = ""
    rotation_period_s: float = 900.0
    headroom_a: float = 2.0
    meter: MeterSettings | None = None
    export_limit_a: float = 0.0
    """How far the net current at the connection may go below zero per phase [A] (V2X discharge)."""

    @property
    def group_id(self) -> str:
        """The OSCP group id of this site (its id unless configured)."""
        return self.oscp_group_id or self.id

    @property
    def fallback_a(self) -> float:
        """``fallback_kw`` as a per-phase current on a balanced three-phase load [A]."""
        return min(self.grid_limit_a, self.fallback_kw * 1000.0 / (3.0 * self.voltage_v))

    def charger(self, charger_id: str) -> Charger:
        for charger in self.chargers:
            if charger.id == charger_id:
                return charger
        raise KeyError(charger_id)

    def circuit(self, circuit_id: str) -> Circuit:
        for circuit in self.circuits:
            if circuit.id == circuit_id:
                return circuit
        raise KeyError(circuit_id)


@dataclass(frozen=True, slots=True)
class Session:
    """A car plugged into a charger, with what it still needs and when it leaves.

    ``energy_wh`` is the energy still needed; ``None`` means unknown (the car is treated as wanting
    its maximum). ``max_current_a`` is the lowest of car and cable, ``None`` when unknown.
    """

    charger_id: str
    arrival: datetime
    departure: datetime | None = None
    energy_wh: float | None = None
    max_current_a: float | None = None
    min_current_a: float | None = None
    phases: int | None = None


@dataclass(frozen=True, slots=True)
class ControlSettings:
    interval_s: float = 5.0
    planner_budget_s: float = 2.0
    plan_horizon_h: int = 24
    plan_fine_h: float = 2.0
    min_pause_s: float = 0.0
    min_charge_s: float = 1800.0
    car_asleep_after_s: float = 300.0
    car_wake_retry_s: float = 1800.0
    arrival_forecast_days: float = 0.0

    @property
    def plan_fine_slots(self) -> int:
        """``plan_fine_h`` in 15-minute slots: how many the planner decides one by one (if large)."""
        return int(self.plan_fine_h * 4)


@dataclass(frozen=True, slots=True)
class Config:
    """A whole deployment: one or more sites and the service's settings."""

    sites: tuple[Site, ...]
    ocpp: OcppSettings = field(default_factory=OcppSettings)
    http: HttpSettings = field(default_factory=HttpSettings)
    oscp: OscpSettings = field(default_factory=OscpSettings)
    influxdb: InfluxSettings | None = None
    ocpi: OcpiSettings | None = None
    control: ControlSettings = field(default_factory=ControlSettings)
    state_dir: str = "./state"
    cluster: ClusterSettings | None = None

    def site(self, site_id: str) -> Site:
        for site in self.sites:
            if site.id == site_id:
                return site
        raise KeyError(site_id)

    def site_of_charger(self, charger_id: str) -> tuple[Site, Charger]:
        for site in self.sites:
            for charger in site.chargers:
                if charger.id == charger_id:
                    return site, charger
        raise KeyError(charger_id)

    def site_of_group(self, group_id: str) -> Site:
        for site in self.sites:
            if site.group_id == group_id:
                return site
        raise KeyError(group_id)
