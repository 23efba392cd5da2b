"""OCPP 2.0.1 handlers: every message a charging station may send, turned into core events."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from ocpp.v201 import ChargePoint, call_result
from ocpp.v201.enums import Action

from adapters.ocpp.routing import after, on
from balancer.events import ChargerStatus, NeedsUpdated, SessionStarted, SessionStopped

if TYPE_CHECKING:
    from adapters.ocpp.link import ChargerLink

__all__ = ["ChargePoint201"]


def _parse_time(raw: Any) -> datetime | None:
    if not isinstance(raw, str):
        return None
    try:
        parsed = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else None


class ChargePoint201(ChargePoint):  # type: ignore[misc]
    """The CSMS side of one 2.0.1 connection."""

    def __init__(self, charger_id: str, connection: Any, link: ChargerLink, response_timeout: float) -> None:
        super().__init__(charger_id, connection, response_timeout=response_timeout, logger=link.ocpp_logger)
        self.link = link

    @on(Action.boot_notification)
    def on_boot(self, charging_station: dict[str, Any], reason: str, **kw: Any) -> Any:
        return call_result.BootNotification(current_time=self.link.now_iso(), interval=self.link.heartbeat_s,
                                            status="Accepted")

    @after(Action.boot_notification)
    def after_boot(self, **kw: Any) -> None:
        self.link.booted()

    @on(Action.heartbeat)
    def on_heartbeat(self) -> Any:
        return call_result.Heartbeat(current_time=self.link.now_iso())

    @on(Action.status_notification)
    def on_status(self, timestamp: str, connector_status: str, evse_id: int, connector_id: int, **kw: Any) -> Any:
        self.link.emit(ChargerStatus(self.link.charger_id, self.link.now(), connector_status))
        return call_result.StatusNotification()

    @on(Action.authorize)
    def on_authorize(self, id_token: dict[str, Any], **kw: Any) -> Any:
        return call_result.Authorize(id_token_info={"status": self.link.authorize_status()})

    @on(Action.transaction_event)
    def on_transaction_event(self, event_type: str, timestamp: str, trigger_reason: str, seq_no: int,
                             transaction_info: dict[str, Any], **kw: Any) -> Any:
        tx = str(transaction_info.get("transaction_id"))
        now = self.link.now()
        for entry in kw.get("meter_value") or []:
            sample = self.link.meter.sample(entry)
            if sample is not None:
                self.link.emit(sample)
        state = transaction_info.get("charging_state")
        if event_type == "Started" or (event_type == "Updated" and self.link.transaction_id != tx):
            news = self.link.transaction_started(tx)
            if news or event_type == "Started":
                self.link.emit(SessionStarted(self.link.charger_id, now, transaction_id=tx))
            if news and event_type == "Updated":
                # A transaction this server has not seen start (before a restart of the balancer).
                self.link.session_changed()
        if state:
            self.link.emit(ChargerStatus(self.link.charger_id, now, state))
        if event_type == "Ended":
            self.link.emit(SessionStopped(self.link.charger_id, now, transaction_id=tx,
                                          reason=transaction_info.get("stopped_reason")))
            self.link.transaction_ended(tx)
        if "id_token" in kw:
            return call_result.TransactionEvent(id_token_info={"status": self.link.authorize_status()})
        return call_result.TransactionEvent()

    @after(Action.transaction_event)
    def after_transaction_event(self, event_type: str, **kw: Any) -> None:
        if event_type in ("Started", "Ended"):
            self.link.session_changed()

    @on(Action.meter_values)
    def on_meter_values(self, evse_id: int, meter_value: list[dict[str, Any]], **kw: Any) -> Any:
        for entry in meter_value:
            sample = self.link.meter.sample(entry)
            if sample is not None:
                self.link.emit(sample)
        return call_result.MeterValues()

    @on(Action.notify_ev_charging_needs)
    def on_needs(self, charging_needs: dict[str, Any], evse_id: int, **kw: Any) -> Any:
        ac = charging_needs.get("ac_charging_parameters") or {}
        dc = charging_needs.get("dc_charging_parameters") or {}
        energy = ac.get("energy_amount", dc.get("energy_amount"))
        self.link.emit(NeedsUpdated(
            self.link.charger_id, self.link.now(),
            energy_wh=float(energy) if energy is not None else None,
            departure=_parse_time(charging_needs.get("departure_time")),
            max_current_a=float(ac["ev_max_current"]) if "ev_max_current" in ac else None,
            min_current_a=float(ac["ev_min_current"]) if "ev_min_current" in ac else None,
            source="iso15118",
        ))
        return call_result.NotifyEVChargingNeeds(status="Accepted")

    @on(Action.notify_ev_charging_schedule)
    def on_ev_schedule(self, time_base: str, charging_schedule: dict[str, Any], evse_id: int, **kw: Any) -> Any:
        return call_result.NotifyEVChargingSchedule(status="Accepted")

    @on(Action.report_charging_profiles)
    def on_report_profiles(self, request_id: int, charging_limit_source: str, charging_profile: list[Any],
                           evse_id: int, **kw: Any) -> Any:
        return call_result.ReportChargingProfiles()

    @on(Action.notify_charging_limit)
    def on_notify_limit(self, charging_limit: dict[str, Any], **kw: Any) -> Any:
        return call_result.NotifyChargingLimit()

    @on(Action.cleared_charging_limit)
    def on_cleared_limit(self, charging_limit_source: str, **kw: Any) -> Any:
        return call_result.ClearedChargingLimit()

    @on(Action.firmware_status_notification)
    def on_firmware(self, status: str, **kw: Any) -> Any:
        return call_result.FirmwareStatusNotification()

    @on(Action.security_event_notification)
    def on_security_event(self, type: str, timestamp: str, **kw: Any) -> Any:
        return call_result.SecurityEventNotification()

    @on(Action.notify_report)
    def on_notify_report(self, request_id: int, generated_at: str, seq_no: int, **kw: Any) -> Any:
        return call_result.NotifyReport()

    @on(Action.notify_event)
    def on_notify_event(self, generated_at: str, seq_no: int, event_data: list[Any], **kw: Any) -> Any:
        return call_result.NotifyEvent()

    @on(Action.log_status_notification)
    def on_log_status(self, status: str, **kw: Any) -> Any:
        return call_result.LogStatusNotification()

    @on(Action.data_transfer)
    def on_data_transfer(self, vendor_id: str, **kw: Any) -> Any:
        return call_result.DataTransfer(status="UnknownVendorId")
