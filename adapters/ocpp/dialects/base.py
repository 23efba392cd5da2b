"""What differs between OCPP-J versions, in one object per version (issue 12 item 5).

A charger's ``Dialect`` is chosen once, from the websocket subprotocol at connect
(``dialects.for_subprotocol``); everything that depends on the version asks it: message shapes
(SetChargingProfile, GetCompositeSchedule, ClearChargingProfile), profile purposes, error code
spellings, which actions exist, how capabilities are read, the ``ocpp`` package's ChargePoint
class. No other module compares version strings.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, ClassVar

from adapters.ocpp.capabilities import Capabilities

__all__ = ["MEASURANDS", "Dialect"]

MEASURANDS = "Energy.Active.Import.Register,Current.Import,Power.Active.Import,SoC"
"""What the balancer asks chargers to sample when they do not sample currents already."""


class Dialect:
    """One OCPP-J version. Subclasses fill the class attributes and the few methods whose shape
    differs; the rest is shared. Instances hold no state (one per version, shared by links)."""

    subprotocol: ClassVar[str]
    """The websocket subprotocol, e.g. "ocpp1.6": also the name the status and events carry."""
    schema_version: ClassVar[str]
    """The ``ocpp`` package's name of the version, for its schemas ("1.6", "2.0.1")."""
    known_actions: ClassVar[frozenset[str]]
    error_codes: ClassVar[Mapping[str, str]]
    """CALLERROR code the ``ocpp`` package (or a peer of another version) writes -> this version's."""
    format_violation: ClassVar[str]
    invalid_json_code: ClassVar[str]
    unknown_message_type_code: ClassVar[str]
    station_max_purpose: ClassVar[str]
    """The purpose of a station-wide maximum profile (EVSE/connector 0)."""
    profile_key: ClassVar[str]
    """Where SetChargingProfile carries the profile."""
    profile_id_key: ClassVar[str]
    evse_key: ClassVar[str]
    """How SetChargingProfile and GetCompositeSchedule name the EVSE (1.6: the connector)."""
    composite_answer_key: ClassVar[str]
    """Where a GetCompositeSchedule answer (in the package's snake_case) holds the schedule."""
    csms_names_transactions: ClassVar[bool]
    """True when the CSMS's StartTransaction answer names the transaction (1.6), so a locally
    answered start leaves the charger with an id the CSMS must be told about (``upstream``)."""
    charge_point_class: ClassVar[type[Any]]
    """The ``ocpp`` ChargePoint subclass whose handlers serve this version (``handlers*.py``)."""
    discharge_setpoints: ClassVar[bool] = False
    """True when a negative limit (V2X discharge, DESIGN 3.9) can be sent as a CentralSetpoint
    period (2.1); else a negative limit goes out as 0."""

    def __repr__(self) -> str:
        return f"<Dialect {self.subprotocol}>"

    def translate_error(self, code: str) -> str | None:
        """This version's spelling of a CALLERROR code, or None when it needs no change."""
        return self.error_codes.get(code)

    def set_profile_payload(self, evse: int, profile: dict[str, Any]) -> dict[str, Any]:
        """The SetChargingProfile payload on the wire."""
        return {self.evse_key: evse, self.profile_key: profile}

    def composite_request(self, evse: int, duration_s: int, unit: str = "A") -> dict[str, Any]:
        """The GetCompositeSchedule payload on the wire."""
        return {self.evse_key: evse, "duration": duration_s, "chargingRateUnit": unit}

    def trigger_meter_values(self, evse: int) -> dict[str, Any]:
        """The TriggerMessage payload on the wire asking for MeterValues of ``evse``."""
        return {"requestedMessage": "MeterValues", "evse": {"id": evse}}

    def profile_of(self, payload: dict[str, Any]) -> dict[str, Any] | None:
        """The profile a SetChargingProfile payload carries (None when it carries none)."""
        profile = payload.get(self.profile_key)
        return profile if isinstance(profile, dict) else None

    def wrap_profile(self, profile: dict[str, Any], body: dict[str, Any], profile_id: int,
                     transaction_id: str | None) -> dict[str, Any]:
        """``profile`` (stack level, purpose, kind) completed with its id, its schedule ``body``
        and its transaction in this version's shape."""
        raise NotImplementedError

    def schedules(self, profile: dict[str, Any]) -> list[dict[str, Any]]:
        """The charging schedules of a profile (a peer's: read defensively)."""
        raise NotImplementedError

    def clear_purpose(self, payload: dict[str, Any]) -> Any:
        """The purpose a ClearChargingProfile payload asks for (None: any)."""
        raise NotImplementedError

    def clear_names_id(self, payload: dict[str, Any]) -> bool:
        """True when a ClearChargingProfile payload names a profile id."""
        raise NotImplementedError

    def narrow_clear(self, payload: dict[str, Any], purpose: str) -> dict[str, Any]:
        """A ClearChargingProfile payload restricted to ``purpose``."""
        raise NotImplementedError

    async def read_capabilities(self, call: Callable[[Any], Awaitable[Any]]) -> Capabilities:
        """Ask the charger for its smart-charging capabilities through ``call`` (the package's call
        path), and make it sample currents when it does not; raises when the charger cannot say."""
        raise NotImplementedError
