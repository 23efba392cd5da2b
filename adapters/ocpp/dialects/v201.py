"""OCPP 2.0.1: EVSEs, ``chargingProfile`` with a list of schedules, device-model variables."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from ocpp.v201 import call
from ocpp.v201.enums import Action

from adapters.ocpp.capabilities import Capabilities, config_int
from adapters.ocpp.dialects.base import MEASURANDS, Dialect
from adapters.ocpp.handlers201 import ChargePoint201

__all__ = ["V201", "Dialect201"]

_VARIABLES = [("SmartChargingCtrlr", "PeriodsPerSchedule"), ("SmartChargingCtrlr", "RateUnit"),
              ("SmartChargingCtrlr", "ProfileStackLevel"), ("SampledDataCtrlr", "TxUpdatedInterval"),
              ("SampledDataCtrlr", "TxUpdatedMeasurands")]


def capabilities(values: dict[str, Any]) -> Capabilities:
    """Capabilities from GetVariables' accepted values."""
    units_raw = str(values.get("RateUnit") or "A")
    units = tuple(u for u in ("A", "W") if u in units_raw.split(",") or u == units_raw) or ("A",)
    return Capabilities(max_periods=max(1, config_int(values.get("PeriodsPerSchedule"), 24)), rate_units=units,
                        max_stack_level=config_int(values.get("ProfileStackLevel"), 8),
                        meter_interval_s=config_int(values.get("TxUpdatedInterval"), 60), source="GetVariables")


class Dialect201(Dialect):
    """2.0.1; a later 2.x dialect can subclass it and change what differs."""

    subprotocol = "ocpp2.0.1"
    schema_version = "2.0.1"
    known_actions = frozenset(a.value for a in Action)
    error_codes = {"FormationViolation": "FormatViolation",
                   "OccurenceConstraintViolation": "OccurrenceConstraintViolation",
                   "NotImplemented": "NotSupported"}
    format_violation = "FormatViolation"
    invalid_json_code = "RpcFrameworkError"
    unknown_message_type_code = "MessageTypeNotSupported"
    station_max_purpose = "ChargingStationMaxProfile"
    profile_key = "chargingProfile"
    profile_id_key = "id"
    evse_key = "evseId"
    composite_answer_key = "schedule"
    csms_names_transactions = False
    charge_point_class = ChargePoint201

    def wrap_profile(self, profile: dict[str, Any], body: dict[str, Any], profile_id: int,
                     transaction_id: str | None) -> dict[str, Any]:
        body["id"] = 1
        profile["id"] = profile_id
        profile["chargingSchedule"] = [body]
        if transaction_id is not None:
            profile["transactionId"] = transaction_id
        return profile

    def schedules(self, profile: dict[str, Any]) -> list[dict[str, Any]]:
        schedule = profile.get("chargingSchedule")
        return [s for s in schedule if isinstance(s, dict)] if isinstance(schedule, list) else []

    def clear_purpose(self, payload: dict[str, Any]) -> Any:
        criteria = payload.get("chargingProfileCriteria")
        return criteria.get("chargingProfilePurpose") if isinstance(criteria, dict) else None

    def clear_names_id(self, payload: dict[str, Any]) -> bool:
        return payload.get("chargingProfileId") is not None

    def narrow_clear(self, payload: dict[str, Any], purpose: str) -> dict[str, Any]:
        criteria = payload.get("chargingProfileCriteria")
        return {**payload, "chargingProfileCriteria": {
            **(criteria if isinstance(criteria, dict) else {}), "chargingProfilePurpose": purpose}}

    async def read_capabilities(self, send: Callable[[Any], Awaitable[Any]]) -> Capabilities:
        response = await send(call.GetVariables(get_variable_data=[
            {"component": {"name": c}, "variable": {"name": v}} for c, v in _VARIABLES]))
        values = {item["variable"]["name"]: item.get("attribute_value")
                  for item in response.get_variable_result or [] if item.get("attribute_status") == "Accepted"}
        if "Current.Import" not in str(values.get("TxUpdatedMeasurands") or ""):
            with contextlib.suppress(Exception):
                await send(call.SetVariables(set_variable_data=[{
                    "component": {"name": "SampledDataCtrlr"}, "variable": {"name": "TxUpdatedMeasurands"},
                    "attribute_value": MEASURANDS}]))
        return capabilities(values)


V201 = Dialect201()
