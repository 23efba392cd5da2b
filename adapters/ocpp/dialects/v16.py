"""OCPP 1.6J: connectors, ``csChargingProfiles``, GetConfiguration keys, the CSMS's transaction ids."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from ocpp.v16 import call
from ocpp.v16.enums import Action

from adapters.ocpp.capabilities import Capabilities, config_int
from adapters.ocpp.dialects.base import MEASURANDS, Dialect
from adapters.ocpp.handlers16 import ChargePoint16

__all__ = ["V16"]

_KEYS = ["ChargeProfileMaxStackLevel", "ChargingScheduleMaxPeriods", "ChargingScheduleAllowedChargingRateUnit",
         "MaxChargingProfilesInstalled", "MeterValueSampleInterval", "MeterValuesSampledData"]


def capabilities(values: dict[str, Any]) -> Capabilities:
    """Capabilities from GetConfiguration's keys."""
    units_raw = str(values.get("ChargingScheduleAllowedChargingRateUnit") or "Current")
    units = tuple(u for u, name in (("A", "Current"), ("W", "Power")) if name in units_raw) or ("A",)
    return Capabilities(max_periods=max(1, config_int(values.get("ChargingScheduleMaxPeriods"), 24)),
                        rate_units=units, max_stack_level=config_int(values.get("ChargeProfileMaxStackLevel"), 8),
                        meter_interval_s=config_int(values.get("MeterValueSampleInterval"), 60),
                        source="GetConfiguration")


class Dialect16(Dialect):
    subprotocol = "ocpp1.6"
    schema_version = "1.6"
    known_actions = frozenset(a.value for a in Action)
    error_codes = {"FormatViolation": "FormationViolation",
                   "OccurrenceConstraintViolation": "OccurenceConstraintViolation",
                   "NotImplemented": "NotSupported"}
    format_violation = "FormationViolation"
    invalid_json_code = "FormationViolation"
    unknown_message_type_code = "ProtocolError"
    station_max_purpose = "ChargePointMaxProfile"
    profile_key = "csChargingProfiles"
    profile_id_key = "chargingProfileId"
    evse_key = "connectorId"
    composite_answer_key = "charging_schedule"
    csms_names_transactions = True
    charge_point_class = ChargePoint16

    def wrap_profile(self, profile: dict[str, Any], body: dict[str, Any], profile_id: int,
                     transaction_id: str | None) -> dict[str, Any]:
        profile["chargingProfileId"] = profile_id
        profile["chargingSchedule"] = body
        if transaction_id is not None:
            profile["transactionId"] = int(transaction_id)
        return profile

    def schedules(self, profile: dict[str, Any]) -> list[dict[str, Any]]:
        schedule = profile.get("chargingSchedule")
        return [schedule] if isinstance(schedule, dict) else []

    def trigger_meter_values(self, evse: int) -> dict[str, Any]:
        return {"requestedMessage": "MeterValues", "connectorId": evse}

    def clear_purpose(self, payload: dict[str, Any]) -> Any:
        return payload.get("chargingProfilePurpose")

    def clear_names_id(self, payload: dict[str, Any]) -> bool:
        return payload.get("id") is not None

    def narrow_clear(self, payload: dict[str, Any], purpose: str) -> dict[str, Any]:
        return {**payload, "chargingProfilePurpose": purpose}

    async def read_capabilities(self, send: Callable[[Any], Awaitable[Any]]) -> Capabilities:
        response = await send(call.GetConfiguration(key=_KEYS))
        values = {item["key"]: item.get("value") for item in response.configuration_key or []}
        if "Current.Import" not in str(values.get("MeterValuesSampledData") or ""):
            with contextlib.suppress(Exception):
                await send(call.ChangeConfiguration(key="MeterValuesSampledData", value=MEASURANDS))
        return capabilities(values)


V16 = Dialect16()
