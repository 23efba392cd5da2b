"""ChargerSchedule -> OCPP charging profiles (pure functions).

Absolute schedules start at the decision time (UTC, "Z"); equal neighbouring periods merge; when
a charger holds fewer periods than the plan has, the far future is coarsened, and a merged period
takes the LOWEST limit of the periods it replaces (never coarsen upward). Limits round DOWN to
one decimal (the 1.6 schema's multipleOf 0.1) or to whole amperes for ``integer_amps`` chargers;
in W they are A x nominal voltage x numberPhases.

OCPP 2.1 (DESIGN 3.9, dialects with ``discharge_setpoints``): a negative limit is a V2X discharge,
sent as a period with ``operationMode: CentralSetpoint``, a negative ``setpoint`` and
``dischargeLimit`` (their magnitude rounded down like any limit) and ``limit`` 0, per phase: with
``_L2``/``_L3`` values for a three-phase charger. Other versions never see a negative limit (0).
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from adapters.ocpp.capabilities import Capabilities
from adapters.ocpp.dialects import Dialect, resolve
from balancer.events import ChargerSchedule

__all__ = ["DYNAMIC_PROFILE_ID", "FAILSAFE_PROFILE_ID", "IDLE_PROFILE_ID", "Capabilities", "build_periods",
           "charging_profile", "iso"]

FAILSAFE_PROFILE_ID = 1
"""TxDefaultProfile, stack level 0: what the charger may draw if the balancer is gone."""
DYNAMIC_PROFILE_ID = 2
"""The balancer's limit: TxProfile, or TxDefault / ChargePointMax at stack 1 (profile_strategy)."""
IDLE_PROFILE_ID = 3
"""TxDefaultProfile, stack level 1, for TxProfile-strategy chargers: the idle limit, what a car
plugging in may draw before its TxProfile arrives. Its own id, so the TxProfile (same id would
replace it) leaves it alone; a refused TxProfile falls back onto this profile."""


def iso(t: datetime) -> str:
    return t.isoformat(timespec="seconds").replace("+00:00", "Z")


def _round_down(value: float, integer: bool) -> float:
    if integer:
        return float(math.floor(value + 1e-9))
    return math.floor(value * 10 + 1e-6) / 10


def build_periods(schedule: ChargerSchedule, *, max_periods: int, integer_amps: bool,
                  discharge: bool = False) -> list[tuple[int, float]]:
    """(startPeriod [s from schedule start], limit [A]) pairs, merged and coarsened; negative
    limits (discharge) are kept only with ``discharge``, their magnitude rounded down."""
    start = schedule.periods[0][0]
    periods: list[tuple[int, float]] = []
    for t, limit in schedule.periods:
        offset = max(0, int((t - start).total_seconds()))
        if discharge and limit < 0:
            value = -_round_down(-limit, integer_amps)
        else:
            value = _round_down(max(limit, 0.0), integer_amps)
        if periods and periods[-1][0] == offset:
            periods[-1] = (offset, min(periods[-1][1], value))
        elif periods and periods[-1][1] == value:
            continue
        else:
            periods.append((offset, value))
    if max_periods >= 1 and len(periods) > max_periods:
        head = periods[: max_periods - 1]
        tail = periods[max_periods - 1:]
        periods = [*head, (tail[0][0], min(v for _, v in tail))]
        # Merging may make the last two equal: merge them too.
        if len(periods) > 1 and periods[-1][1] == periods[-2][1]:
            periods.pop()
    return periods


def _schedule_body(schedule: ChargerSchedule, caps: Capabilities, *, voltage_v: float, integer_amps: bool,
                   start: datetime, discharge: bool = False) -> dict[str, Any]:
    periods = build_periods(schedule, max_periods=caps.max_periods, integer_amps=integer_amps, discharge=discharge)
    use_watts = "A" not in caps.rate_units and "W" in caps.rate_units
    phases = max(1, min(3, schedule.phases))
    out_periods = []
    for offset, limit in periods:
        value = math.floor(limit * voltage_v * phases) if use_watts else limit
        period: dict[str, Any] = {"startPeriod": offset, "limit": float(value)}
        if use_watts or phases != 3:
            period["numberPhases"] = phases
        if discharge and limit < 0:
            period.update(_setpoint(-math.floor(-limit * voltage_v * phases) if use_watts else limit,
                                    per_phase=phases == 3 and not use_watts))
        out_periods.append(period)
    return {"startSchedule": iso(start), "chargingRateUnit": "W" if use_watts else "A",
            "chargingSchedulePeriod": out_periods}


def _setpoint(value: float, *, per_phase: bool) -> dict[str, Any]:
    """A 2.1 discharge period's fields: CentralSetpoint at ``value`` (< 0), no charging."""
    fields: dict[str, Any] = {"operationMode": "CentralSetpoint", "limit": 0.0, "setpoint": float(value),
                              "dischargeLimit": float(value)}
    if per_phase:
        for suffix in ("_L2", "_L3"):
            fields.update({f"limit{suffix}": 0.0, f"setpoint{suffix}": float(value),
                           f"dischargeLimit{suffix}": float(value)})
    return fields


def charging_profile(schedule: ChargerSchedule, caps: Capabilities, *, purpose: str, stack_level: int,
                     profile_id: int, voltage_v: float, integer_amps: bool, version: Dialect | str,
                     transaction_id: str | None = None) -> dict[str, Any]:
    """One charging profile in the JSON shape of ``version`` (a dialect or its subprotocol;
    camelCase, as on the wire)."""
    start = schedule.periods[0][0]
    dialect = resolve(version)
    body = _schedule_body(schedule, caps, voltage_v=voltage_v, integer_amps=integer_amps, start=start,
                          discharge=dialect.discharge_setpoints)
    profile: dict[str, Any] = {"stackLevel": stack_level, "chargingProfilePurpose": purpose,
                               "chargingProfileKind": "Absolute"}
    return dialect.wrap_profile(profile, body, profile_id, transaction_id)
