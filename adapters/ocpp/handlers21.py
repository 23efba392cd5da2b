"""OCPP 2.1 handlers (DESIGN 3.9): everything 2.0.1 does, validated against the 2.1 schemas,
plus V2X: ``NotifyEVChargingNeeds`` with ``v2xChargingParameters``.

The 2.1 messages a station sends for smart charging have the 2.0.1 shape with additions, so the
2.0.1 handlers serve both; this class only switches the schemas (``_ocpp_version``, the call and
result modules) and reads the V2X needs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ocpp.v21 import call as call21
from ocpp.v21 import call_result as call_result21
from ocpp.v21.enums import Action

from adapters.ocpp.handlers201 import ChargePoint201, _parse_time
from adapters.ocpp.routing import on
from balancer.events import NeedsUpdated

if TYPE_CHECKING:
    from adapters.ocpp.server import ChargerLink

__all__ = ["ChargePoint21", "v2x_needs"]


def _number(raw: Any) -> float | None:
    return float(raw) if isinstance(raw, int | float) and not isinstance(raw, bool) else None


def v2x_needs(charger_id: str, link: ChargerLink, charging_needs: dict[str, Any]) -> NeedsUpdated:
    """A 2.1 ``chargingNeeds`` (snake_case keys, as the library hands them) as a ``NeedsUpdated``.

    The energy the car needs is ``evTargetEnergyRequest`` of the V2X parameters, else the AC/DC
    ``energyAmount`` (DESIGN 3.9); a car offering V2X says so by ``v2xChargingParameters`` with a
    maximum discharge current or power; what it can spare is minus ``evMinV2XEnergyRequest``.
    """
    ac = charging_needs.get("ac_charging_parameters") or {}
    dc = charging_needs.get("dc_charging_parameters") or {}
    v2x = charging_needs.get("v2x_charging_parameters") or {}
    energy = _number(v2x.get("ev_target_energy_request"))
    if energy is None:
        energy = _number(ac.get("energy_amount", dc.get("energy_amount")))
    max_a = _number(v2x.get("max_charge_current"))
    if max_a is None:
        max_a = _number(ac.get("ev_max_current"))
    min_a = _number(v2x.get("min_charge_current"))
    if min_a is None:
        min_a = _number(ac.get("ev_min_current"))
    discharge_a = _number(v2x.get("max_discharge_current"))
    offers = bool(v2x) and (discharge_a is None or discharge_a > 0) and (
        discharge_a is not None or (_number(v2x.get("max_discharge_power")) or 0.0) > 0)
    min_v2x = _number(v2x.get("ev_min_v2x_energy_request"))
    return NeedsUpdated(
        charger_id, link.now(), energy_wh=energy, departure=_parse_time(charging_needs.get("departure_time")),
        max_current_a=max_a, min_current_a=min_a, source="iso15118",
        v2x=offers, discharge_max_a=discharge_a if offers else None,
        spare_wh=None if min_v2x is None else max(-min_v2x, 0.0),
    )


class ChargePoint21(ChargePoint201):
    """The CSMS side of one 2.1 connection: the 2.0.1 handlers, the 2.1 schemas, V2X needs."""

    _call = call21
    _call_result = call_result21
    _ocpp_version = "2.1"

    @on(Action.notify_ev_charging_needs)
    def on_needs(self, charging_needs: dict[str, Any], evse_id: int, **kw: Any) -> Any:
        self.link.emit(v2x_needs(self.link.charger_id, self.link, charging_needs))
        return call_result21.NotifyEVChargingNeeds(status="Accepted")
