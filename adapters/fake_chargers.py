"""An in-memory ``ChargerPort``: chargers that live in this process and take every limit at once.

A working transport, not a mock: it holds what it was given, answers status like the OCPP server
(``balancer.ports.STATUS_KEYS``) and reports through the same events, so the core and the wiring
can run without sockets. The conformance suite (``tests/adapters/test_charger_port.py``) runs the
same cases against it and against the OCPP server with simulated chargers, so the two cannot
drift apart. The charger side (connecting, sessions, a charger that refuses limits) is driven by
its methods.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from adapters.clock import utc_now
from balancer.events import (
    ChargerOffline,
    ChargerOnline,
    ChargerSchedule,
    LimitConfirmed,
    ProfileResult,
    SessionStarted,
    SessionStopped,
)
from balancer.model import Config
from balancer.ports import EventSink

__all__ = ["PROTOCOL", "FakeChargers"]

PROTOCOL = "fake"
"""What the fake's chargers report as their protocol."""


@dataclass
class _Held:
    connected: bool = False
    protocol: str | None = None
    transaction_id: str | None = None
    limit_a: float | None = None
    periods: tuple[tuple[datetime, float], ...] = ()
    failsafe_a: float | None = None
    refuses: bool = False


class FakeChargers:
    """The chargers of ``config``, reachable in memory; implements ``balancer.ports.ChargerPort``."""

    def __init__(self, config: Config, on_event: EventSink, now: Callable[[], datetime] = utc_now) -> None:
        self.on_event = on_event
        self.now = now
        self.chargers: dict[str, _Held] = {}
        self.applied: list[ChargerSchedule] = []
        """Every schedule a connected charger took, in the order it took them."""
        self.update_config(config)

    # ----------------------------------------------------------------- ChargerPort
    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        for charger_id, held in self.chargers.items():
            if held.connected:
                self.disconnect(charger_id)

    def owns(self, charger_id: str) -> bool:
        return charger_id in self.chargers

    async def apply(self, schedules: Sequence[ChargerSchedule]) -> None:
        """Decreases first, then the rest (what the OCPP fan-out guarantees across its chargers)."""
        ready = [s for s in schedules if s.charger_id in self.chargers and self.chargers[s.charger_id].connected]
        ready.sort(key=lambda s: s.limit_a >= (self.chargers[s.charger_id].limit_a or 0.0))
        for schedule in ready:
            held = self.chargers[schedule.charger_id]
            at = self.now()
            if held.refuses:
                self.on_event(ProfileResult(schedule.charger_id, at, schedule.limit_a, "Rejected"))
                continue
            held.failsafe_a = schedule.failsafe_a
            held.limit_a, held.periods = schedule.limit_a, schedule.periods
            self.applied.append(schedule)
            self.on_event(ProfileResult(schedule.charger_id, at, schedule.limit_a, "Accepted"))
            purpose = "TxProfile" if held.transaction_id is not None else "TxDefaultProfile"
            self.on_event(LimitConfirmed(schedule.charger_id, at, schedule.limit_a, schedule.periods, purpose))

    def charger_status(self, charger_id: str) -> Mapping[str, Any]:
        held = self.chargers.get(charger_id)
        if held is None:
            return {}
        return {"connected": held.connected, "protocol": held.protocol, "transaction_id": held.transaction_id,
                "limit_a": held.limit_a, "obeys": True, "failsafe_a": held.failsafe_a}

    def update_config(self, config: Config) -> None:
        for site in config.sites:
            for charger in site.chargers:
                self.chargers.setdefault(charger.id, _Held())

    # ----------------------------------------------------------------- the chargers' side
    def connect(self, charger_id: str) -> None:
        held = self.chargers[charger_id]
        held.connected, held.protocol = True, PROTOCOL
        self.on_event(ChargerOnline(charger_id, self.now(), PROTOCOL))

    def disconnect(self, charger_id: str) -> None:
        self.chargers[charger_id].connected = False
        self.on_event(ChargerOffline(charger_id, self.now()))

    def start_session(self, charger_id: str, transaction_id: str) -> None:
        self.chargers[charger_id].transaction_id = transaction_id
        self.on_event(SessionStarted(charger_id, self.now(), transaction_id))

    def stop_session(self, charger_id: str) -> None:
        held = self.chargers[charger_id]
        if held.transaction_id is not None:
            self.on_event(SessionStopped(charger_id, self.now(), held.transaction_id))
        held.transaction_id = None

    def refuse_limits(self, charger_id: str, refuses: bool = True) -> None:
        """From now on the charger answers every limit Rejected (and keeps what it holds)."""
        self.chargers[charger_id].refuses = refuses

    def held_a(self, charger_id: str) -> float | None:
        """What the charger holds now [A]; None before its first limit."""
        return self.chargers[charger_id].limit_a
