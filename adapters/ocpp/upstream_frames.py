"""Pure rewrites of local controller mode (DESIGN 3.11): station maximum profiles and transaction ids.

Station maximum: the CSMS's own (1.6 ``ChargePointMaxProfile`` on connector 0, 2.0.1
``ChargingStationMaxProfile`` on EVSE 0) never reaches the charger; its lowest limit caps every
period of the balancer's station maximum profiles instead, so the lower of the two always wins,
whatever the time (conservative: a CSMS schedule that rises later does not raise ours before it).
The balancer's profile ids are moved out of the CSMS's way (``OWN_PROFILE_ID_BASE``): a CSMS
profile with the same id would otherwise replace ours on the charger.

Transaction ids (1.6 only: in 2.0.1 the charger names its transactions): when the balancer
answered a StartTransaction itself, the charger uses the balancer's id, the CSMS its own; frames
are rewritten at the CSMS boundary, only where an id sits, and passed on byte for byte otherwise.
"""

from __future__ import annotations

import copy
import json
import math
from typing import Any

from adapters.ocpp.dialects import Dialect, resolve

__all__ = ["OWN_PROFILE_ID_BASE", "clamp_station_max", "clear_reaches_ours", "clears_station_max", "is_station_max",
           "map_tx", "station_max_cap_a"]

OWN_PROFILE_ID_BASE = 990_000_000
"""Added to the balancer's profile ids on the charger in local controller mode."""

def is_station_max(version: Dialect | str, payload: dict[str, Any]) -> bool:
    """True for a SetChargingProfile payload carrying a station maximum profile."""
    dialect = resolve(version)
    profile = dialect.profile_of(payload)
    return profile is not None and profile.get("chargingProfilePurpose") == dialect.station_max_purpose


def clears_station_max(version: Dialect | str, payload: dict[str, Any]) -> bool:
    """True for a ClearChargingProfile payload that asks for station maximum profiles only."""
    dialect = resolve(version)
    return bool(dialect.clear_purpose(payload) == dialect.station_max_purpose)


def clear_reaches_ours(version: Dialect | str, payload: dict[str, Any]) -> bool:
    """True when a ClearChargingProfile names neither a profile id nor a purpose: it would clear
    the balancer's station maximum profiles too (any other filter leaves them alone: their ids
    are out of the CSMS's way, and station maximum purposes are answered by the relay)."""
    dialect = resolve(version)
    return not dialect.clear_names_id(payload) and dialect.clear_purpose(payload) is None


def station_max_cap_a(version: Dialect | str, payload: dict[str, Any], voltage_v: float) -> float | None:
    """The lowest limit of a station maximum profile, in A per phase (None: no usable period).

    W converts to A over the period's ``numberPhases`` (3 when absent) at the nominal voltage. A
    CSMS's payload is read defensively: a period that is not a finite number >= 0 in A or W with 1
    to 3 phases is no usable period (the relay refuses a profile without one)."""
    dialect = resolve(version)
    profile = dialect.profile_of(payload)
    if profile is None:
        return None
    lowest: float | None = None
    for schedule in dialect.schedules(profile):
        unit = schedule.get("chargingRateUnit")
        periods = schedule.get("chargingSchedulePeriod")
        if unit not in ("A", "W") or not isinstance(periods, list):
            continue
        for period in periods:
            limit = period.get("limit") if isinstance(period, dict) else None
            phases = period.get("numberPhases", 3) if isinstance(period, dict) else None
            if isinstance(limit, bool) or not isinstance(limit, (int, float)) or not math.isfinite(limit) \
                    or limit < 0 or phases not in (1, 2, 3) or isinstance(phases, bool):
                continue
            value = float(limit) / (voltage_v * phases) if unit == "W" else float(limit)
            lowest = value if lowest is None else min(lowest, value)
    return lowest


def clamp_station_max(version: Dialect | str, payload: dict[str, Any], cap_a: float | None,
                      voltage_v: float) -> dict[str, Any]:
    """The balancer's station maximum payload as it goes to the charger: its profile id moved to
    ``OWN_PROFILE_ID_BASE + id`` and every period capped at ``cap_a`` (rounded down to 0.1 A, or
    to whole W in a W schedule). ``payload`` is left as it was."""
    dialect = resolve(version)
    out = copy.deepcopy(payload)
    profile = dialect.profile_of(out)
    if profile is None:
        return out
    id_key = dialect.profile_id_key
    if isinstance(profile.get(id_key), int):
        profile[id_key] = OWN_PROFILE_ID_BASE + profile[id_key]
    if cap_a is None:
        return out
    for schedule in dialect.schedules(profile):
        watts = schedule.get("chargingRateUnit") == "W"
        for period in schedule.get("chargingSchedulePeriod") or []:
            if watts:
                cap = float(math.floor(cap_a * voltage_v * int(period.get("numberPhases") or 3)))
            else:
                cap = math.floor(cap_a * 10 + 1e-6) / 10
            if float(period["limit"]) > cap:
                period["limit"] = cap
    return out


_TX_FIELDS = {
    # charger -> CSMS calls and CSMS -> charger calls where a 1.6 transaction id sits
    "MeterValues": ("transactionId",),
    "StopTransaction": ("transactionId",),
    "RemoteStopTransaction": ("transactionId",),
    "SetChargingProfile": ("csChargingProfiles", "transactionId"),
}


def map_tx(version: Dialect | str, raw: str, mapping: dict[str, str]) -> str:
    """``raw`` (a CALL frame) with its 1.6 transaction id replaced through ``mapping``; ``raw``
    itself when nothing is to change (always in a version whose chargers name transactions)."""
    if not resolve(version).csms_names_transactions or not mapping:
        return raw
    frame = json.loads(raw)
    if not isinstance(frame, list) or len(frame) != 4 or frame[0] != 2:
        return raw
    path = _TX_FIELDS.get(frame[2])
    if path is None:
        return raw
    holder: Any = frame[3]
    for key in path[:-1]:
        holder = holder.get(key) if isinstance(holder, dict) else None
    if not isinstance(holder, dict) or path[-1] not in holder:
        return raw
    new = mapping.get(str(holder[path[-1]]))
    if new is None:
        return raw
    holder[path[-1]] = int(new) if new.lstrip("-").isdigit() else new
    return json.dumps(frame, separators=(",", ":"))
