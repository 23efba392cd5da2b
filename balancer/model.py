"""The site model: immutable descriptions of sites, their fuse tree and their chargers.

Everything here is a frozen dataclass built once from a validated config (``balancer.config``);
the hot paths turn it into numpy arrays (``balancer.problem``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

__all__ = [
    "CONNECTION",
    "PHASES",
    "ROTATIONS",
    "CapacityProviderSettings",
    "Charger",
    "Circuit",
    "Config",
    "ControlSettings",
    "HttpSettings",
    "InfluxSettings",
    "Limit",
    "LimitSource",
    "MeterSettings",
    "OcppSettings",
    "OscpSettings",
    "Session",
    "Site",
    "floor_to",
]

PHASES = ("L1", "L2", "L3")
"""Grid phase names; index 0, 1, 2 in every per-phase array."""

ROTATIONS = ("RST", "RTS", "SRT", "STR", "TRS", "TSR")
"""OCPP phase rotations: which grid phase each charger phase (R, S, T) is wired to."""

CONNECTION = ""
"""Circuit id of the grid connection itself (the root of the fuse tree)."""


def floor_to(value: float, step: float) -> float:
    """Round ``value`` down to a multiple of ``step``, robust to float noise (4.0000001 -> 4.0)."""
    return math.floor(value / step + 1e-9) * step


class LimitSource(StrEnum):
    """Why a limit has the value it has: every limit carries its source."""

    FORECAST = "forecast"
    FALLBACK_FORECAST = "fallback_forecast"
    FALLBACK_CONFIG = "fallback_config"
    CONNECTION = "connection"
    CIRCUIT = "circuit"
    CHARGER = "charger"
    CAR = "car"
    PLAN = "plan"
    FAILSAFE = "failsafe"
    MEASURED = "measured"


@dataclass(frozen=True, slots=True)
class Limit:
    """A current limit [A per phase] together with what set it."""

    value_a: float
    source: LimitSource
    detail: str = ""


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
class OcppSettings:
    host: str = "0.0.0.0"
    port: int = 9000
    heartbeat_interval_s: int = 300
    tls_cert: str | None = None
    tls_key: str | None = None
    authorize: str = "accept_all"
    max_message_bytes: int = 65536
    rate_limit_per_s: float = 50.0
    response_timeout_s: float = 10.0
    deadband_a: float = 1.0


@dataclass(frozen=True, slots=True)
class HttpSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    admin_token: str | None = None
    max_body_bytes: int = 1_048_576


@dataclass(frozen=True, slots=True)
class CapacityProviderSettings:
    base_url: str
    token: str


@dataclass(frozen=True, slots=True)
class OscpSettings:
    token: str | None = None
    capacity_provider: CapacityProviderSettings | None = None
    heartbeat_interval_s: int = 60
    measurement_interval_s: int = 900
    adjust_forecast: bool = False
    public_base_url: str | None = None


@dataclass(frozen=True, slots=True)
class InfluxSettings:
    url: str
    token: str = ""
    org: str = ""
    bucket: str = "balancer"
    api: str = "v2"
    database: str = ""
    username: str = ""
    password: str = ""
    flush_interval_s: float = 1.0
    buffer_points: int = 100_000


@dataclass(frozen=True, slots=True)
class ControlSettings:
    interval_s: float = 5.0
    planner_budget_s: float = 2.0
    plan_horizon_h: int = 24
    plan_fine_h: float = 2.0

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
    control: ControlSettings = field(default_factory=ControlSettings)
    state_dir: str = "./state"

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
