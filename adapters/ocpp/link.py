"""One charger's connection state: what the handlers, the pusher and the meter reader share."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import TYPE_CHECKING, Any

from adapters.ocpp.dialects import DEFAULT, Dialect
from adapters.ocpp.loglimit import LimitedLogger
from adapters.ocpp.meter import MeterReader
from adapters.ocpp.pusher import Pusher
from balancer.events import Event, MeterSample
from balancer.model import Charger

if TYPE_CHECKING:
    from adapters.ocpp.server import OcppServer

__all__ = ["ChargerLink"]

log = logging.getLogger("adapters.ocpp.server")


class ChargerLink:
    """One charger's connection state: what the handlers and the pusher share."""

    def __init__(self, server: OcppServer, charger: Charger) -> None:
        self.server = server
        self.charger = charger
        self.charger_id = charger.id
        self.speaking: Dialect | None = None
        """The charger's OCPP version, chosen once at connect from the websocket subprotocol."""
        self.cp: Any = None
        self.connected = False
        self.transaction_id: str | None = None
        self.tx_known = False
        """True once the charger has told this server about its transaction (a start, a stop, a
        transaction id in its meter values or events). Until then, after a restart, the
        controller's restored session is the best knowledge (``Pusher.offer``)."""
        self.ended_tx: str | None = None
        """The last transaction this charger stopped: late meter values for it start nothing."""
        self.pusher = Pusher(self)
        self.meter = MeterReader(self)
        self.status = "unknown"
        self.upstream_answer: dict[str, Any] | None = None
        """Local controller mode: the CSMS's answer to the charger's call the handlers now observe."""

    @property
    def dialect(self) -> Dialect:
        """What this link speaks: the connected version (the oldest before any connection)."""
        return self.speaking or DEFAULT

    @property
    def protocol(self) -> str | None:
        """The subprotocol the charger connected with; None before its first connection."""
        return None if self.speaking is None else self.speaking.subprotocol

    @property
    def ocpp_logger(self) -> LimitedLogger:
        """The logger for this charger's ``ocpp`` ChargePoint: its error lines rate-limited."""
        return LimitedLogger(logging.getLogger("ocpp"), self.server.log_limiter, self.charger_id)

    @property
    def heartbeat_s(self) -> int:
        return self.server.config.ocpp.heartbeat_interval_s

    def now(self) -> datetime:
        return self.server.now()

    def now_iso(self) -> str:
        return self.now().isoformat(timespec="seconds").replace("+00:00", "Z")

    def emit(self, event: Event) -> None:
        if isinstance(event, MeterSample):
            self.pusher.observe(event)
        try:
            self.server.on_event(event)
        except Exception:  # the core's trouble must not break the charger's connection
            log.exception("event handler failed for %r", event)

    def authorize_status(self) -> str:
        if self.server.upstream is not None:  # asked only while the CSMS cannot answer (ocpp/upstream.py)
            return "Accepted" if self.server.upstream.settings.offline_authorize == "accept" else "Invalid"
        return "Accepted" if self.server.config.ocpp.authorize == "accept_all" else "Blocked"

    def booted(self) -> None:
        self.pusher.on_boot()

    def session_changed(self) -> None:
        self.pusher.on_session_changed()

    def transaction_started(self, tx: str) -> bool:
        """The charger says transaction ``tx`` runs; True when that is news to this link."""
        self.tx_known = True
        if self.transaction_id == tx or tx == self.ended_tx:
            return False
        self.transaction_id = tx
        return True

    def transaction_ended(self, tx: str) -> None:
        self.tx_known = True
        self.ended_tx = tx
        if self.transaction_id == tx:
            self.transaction_id = None
