"""Reading a charger's capabilities (GetConfiguration on 1.6, GetVariables on 2.0.1)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ocpp.v16 import call as call16
from ocpp.v201 import call as call201

from adapters.ocpp.profiles import Capabilities

if TYPE_CHECKING:
    from adapters.ocpp.server import ChargerLink

__all__ = ["read_capabilities"]

log = logging.getLogger("adapters.ocpp.pusher")


async def read_capabilities(link: ChargerLink, call: Callable[[Any], Awaitable[Any]]) -> tuple[Capabilities, bool]:
    """The charger's capabilities (safe defaults for what it does not say), and whether it answered
    in time; turns on the current measurand in its meter values when it is off."""
    caps = Capabilities()
    answered = True
    try:
        if link.protocol == "ocpp1.6":
            keys = ["ChargeProfileMaxStackLevel", "ChargingScheduleMaxPeriods",
                    "ChargingScheduleAllowedChargingRateUnit", "MaxChargingProfilesInstalled",
                    "MeterValueSampleInterval", "MeterValuesSampledData"]
            response = await call(call16.GetConfiguration(key=keys))
            values = {item["key"]: item.get("value") for item in response.configuration_key or []}
            caps = _caps16(values)
            sampled = str(values.get("MeterValuesSampledData") or "")
            if "Current.Import" not in sampled:
                with contextlib.suppress(Exception):
                    await call(call16.ChangeConfiguration(
                        key="MeterValuesSampledData",
                        value="Energy.Active.Import.Register,Current.Import,Power.Active.Import,SoC"))
        else:
            names = [("SmartChargingCtrlr", "PeriodsPerSchedule"), ("SmartChargingCtrlr", "RateUnit"),
                     ("SmartChargingCtrlr", "ProfileStackLevel"), ("SampledDataCtrlr", "TxUpdatedInterval"),
                     ("SampledDataCtrlr", "TxUpdatedMeasurands")]
            response = await call(call201.GetVariables(get_variable_data=[
                {"component": {"name": c}, "variable": {"name": v}} for c, v in names]))
            values = {item["variable"]["name"]: item.get("attribute_value")
                      for item in response.get_variable_result or [] if item.get("attribute_status") == "Accepted"}
            caps = _caps201(values)
            measurands = str(values.get("TxUpdatedMeasurands") or "")
            if "Current.Import" not in measurands:
                with contextlib.suppress(Exception):
                    await call(call201.SetVariables(set_variable_data=[{
                        "component": {"name": "SampledDataCtrlr"},
                        "variable": {"name": "TxUpdatedMeasurands"},
                        "attribute_value": "Energy.Active.Import.Register,Current.Import,Power.Active.Import,SoC",
                    }]))
    except Exception as exc:
        answered = not isinstance(exc, TimeoutError)
        log.info("charger %s: capabilities not read (%r); safe defaults", link.charger_id, exc)
    return caps, answered



def _int(value: Any, default: int) -> int:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return default


def _caps16(values: dict[str, Any]) -> Capabilities:
    units_raw = str(values.get("ChargingScheduleAllowedChargingRateUnit") or "Current")
    units = tuple(u for u, name in (("A", "Current"), ("W", "Power")) if name in units_raw) or ("A",)
    return Capabilities(max_periods=max(1, _int(values.get("ChargingScheduleMaxPeriods"), 24)),
                        rate_units=units, max_stack_level=_int(values.get("ChargeProfileMaxStackLevel"), 8),
                        meter_interval_s=_int(values.get("MeterValueSampleInterval"), 60), source="GetConfiguration")


def _caps201(values: dict[str, Any]) -> Capabilities:
    units_raw = str(values.get("RateUnit") or "A")
    units = tuple(u for u in ("A", "W") if u in units_raw.split(",") or u == units_raw) or ("A",)
    return Capabilities(max_periods=max(1, _int(values.get("PeriodsPerSchedule"), 24)), rate_units=units,
                        max_stack_level=_int(values.get("ProfileStackLevel"), 8),
                        meter_interval_s=_int(values.get("TxUpdatedInterval"), 60), source="GetVariables")

