"""Controller test helper: chargers known to keep their limits."""

from __future__ import annotations

from datetime import datetime

from balancer.control import Controller
from balancer.events import ChargerOnline, ObedienceChanged


def online(ctrl: Controller, charger_id: str, at: datetime, protocol: str = "ocpp1.6") -> None:
    """``charger_id`` connects, already seen keeping its limits in an earlier session (``verified``):
    its sessions are served at once instead of at most its failsafe until its first reading."""
    ctrl.handle(ChargerOnline(charger_id, at, protocol))
    ctrl.handle(ObedienceChanged(charger_id, at, True, verified=True))
