"""OCPP 1.6J handlers: every message a charger may send, turned into core events."""

from __future__ import annotations

import itertools
import time
from typing import TYPE_CHECKING, Any

from ocpp.v16 import ChargePoint, call_result
from ocpp.v16.enums import (
    Action,
    AuthorizationStatus,
    DataTransferStatus,
    RegistrationStatus,
)

from adapters.ocpp.routing import after, on
from balancer.events import ChargerStatus, SessionStarted, SessionStopped

if TYPE_CHECKING:
    from adapters.ocpp.link import ChargerLink

__all__ = ["ChargePoint16"]

_TX_IDS = itertools.count(int(time.time()) % 1_000_000 * 1000)


class ChargePoint16(ChargePoint):  # type: ignore[misc]
    """The CSMS side of one 1.6J connection."""

    def __init__(self, charger_id: str, connection: Any, link: ChargerLink, response_timeout: float) -> None:
        super().__init__(charger_id, connection, response_timeout=response_timeout, logger=link.ocpp_logger)
        self.link = link

    @on(Action.boot_notification)
    def on_boot(self, charge_point_vendor: str, charge_point_model: str, **kw: Any) -> Any:
        return call_result.BootNotification(current_time=self.link.now_iso(), interval=self.link.heartbeat_s,
                                            status=RegistrationStatus.accepted)

    @after(Action.boot_notification)
    def after_boot(self, **kw: Any) -> None:
        self.link.booted()

    @on(Action.heartbeat)
    def on_heartbeat(self) -> Any:
        return call_result.Heartbeat(current_time=self.link.now_iso())

    @on(Action.status_notification)
    def on_status(self, connector_id: int, error_code: str, status: str, **kw: Any) -> Any:
        if connector_id != 0:
            self.link.emit(ChargerStatus(self.link.charger_id, self.link.now(), status))
        return call_result.StatusNotification()

    @on(Action.authorize)
    def on_authorize(self, id_tag: str) -> Any:
        return call_result.Authorize(id_tag_info={"status": self.link.authorize_status()})

    @on(Action.start_transaction)
    def on_start(self, connector_id: int, id_tag: str, meter_start: int, timestamp: str, **kw: Any) -> Any:
        status = self.link.authorize_status()
        existing = self.link.transaction_id
        tx = int(existing) if existing is not None and existing.isdigit() else next(_TX_IDS)
        answer = self.link.upstream_answer
        if answer is not None:  # local controller mode: the CSMS's answer decides, with its id
            tx = int(answer.get("transactionId", tx))
            status = str((answer.get("idTagInfo") or {}).get("status", AuthorizationStatus.invalid))
        if status == AuthorizationStatus.accepted:
            self.link.transaction_started(str(tx))
            self.link.emit(SessionStarted(self.link.charger_id, self.link.now(), transaction_id=str(tx),
                                          meter_start_wh=float(meter_start), id_tag=id_tag))
        return call_result.StartTransaction(transaction_id=tx, id_tag_info={"status": status})

    @after(Action.start_transaction)
    def after_start(self, **kw: Any) -> None:
        self.link.session_changed()

    @on(Action.stop_transaction)
    def on_stop(self, meter_stop: int, timestamp: str, transaction_id: int, **kw: Any) -> Any:
        self.link.emit(SessionStopped(self.link.charger_id, self.link.now(), transaction_id=str(transaction_id),
                                      meter_stop_wh=float(meter_stop), reason=kw.get("reason")))
        self.link.transaction_ended(str(transaction_id))
        return call_result.StopTransaction(id_tag_info={"status": AuthorizationStatus.accepted})

    @after(Action.stop_transaction)
    def after_stop(self, **kw: Any) -> None:
        self.link.session_changed()

    @on(Action.meter_values)
    def on_meter_values(self, connector_id: int, meter_value: list[dict[str, Any]], **kw: Any) -> Any:
        tx = kw.get("transaction_id")
        if tx is not None and connector_id > 0 and self.link.transaction_started(str(tx)):
            # A transaction this server has not seen start: it ran before a restart of the
            # balancer or across a reconnect. From now on its TxProfile goes to this id.
            self.link.emit(SessionStarted(self.link.charger_id, self.link.now(), transaction_id=str(tx)))
            self.link.session_changed()
        for entry in meter_value:
            sample = self.link.meter.sample(entry)
            if sample is not None:
                self.link.emit(sample)
        return call_result.MeterValues()

    @on(Action.data_transfer)
    def on_data_transfer(self, vendor_id: str, **kw: Any) -> Any:
        return call_result.DataTransfer(status=DataTransferStatus.unknown_vendor_id)

    @on(Action.firmware_status_notification)
    def on_firmware(self, status: str) -> Any:
        return call_result.FirmwareStatusNotification()

    @on(Action.diagnostics_status_notification)
    def on_diagnostics(self, status: str) -> Any:
        return call_result.DiagnosticsStatusNotification()

    @on(Action.security_event_notification)
    def on_security_event(self, type: str, timestamp: str, **kw: Any) -> Any:
        return call_result.SecurityEventNotification()

    @on(Action.log_status_notification)
    def on_log_status(self, status: str, **kw: Any) -> Any:
        return call_result.LogStatusNotification()

    @on(Action.signed_firmware_status_notification)
    def on_signed_firmware(self, status: str, **kw: Any) -> Any:
        return call_result.SignedFirmwareStatusNotification()
