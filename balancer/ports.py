"""The seams between the core and the outside (issue 12 item 4): typed protocols, no I/O.

The controller decides; what carries its decisions to chargers and their news back is a
``ChargerPort``. The OCPP server (``adapters.ocpp.server.OcppServer``) is one; an in-memory one
(``adapters.fake_chargers.FakeChargers``) runs the same conformance tests
(``tests/adapters/test_charger_port.py``). A port reports what happens at its chargers as core
events (``balancer.events``) to an ``EventSink`` it is given when built, never by calling the
controller: a new transport or inbound protocol implements these and is wired in ``adapters/``,
and the controller does not change.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from balancer.events import ChargerSchedule, Event
from balancer.model import Config

__all__ = ["STATUS_KEYS", "ChargerPort", "EventSink"]

EventSink = Callable[[Event], None]
"""Where a port sends what happened at its chargers (connections, sessions, meter values, the
outcome of every limit it applied). Called on the event loop; it must not block."""

STATUS_KEYS = ("connected", "protocol", "transaction_id", "limit_a", "obeys")
"""What ``ChargerPort.charger_status`` always holds for a charger of the port: whether it is
connected, the protocol it speaks (None before it ever connected), its running transaction (None:
none known), the limit [A] it accepted last (None: none yet), whether it follows its limits. A port
may add its own keys (the OCPP server adds capabilities, last push, composite read-back...)."""


@runtime_checkable
class ChargerPort(Protocol):
    """Chargers reached through one transport: apply limits and schedules, report status."""

    async def start(self) -> None:
        """Begin accepting chargers."""

    async def stop(self) -> None:
        """Drop every charger connection; nothing is applied afterwards."""

    def owns(self, charger_id: str) -> bool:
        """True for a charger this port serves (configured for it, connected or not)."""

    async def apply(self, schedules: Sequence[ChargerSchedule]) -> None:
        """Carry decisions to the chargers: every decrease, now and ahead, held before any increase
        is sent. Returns once each schedule is held, refused or given up on; the outcome of each goes
        to the sink (``ProfileResult``, ``LimitConfirmed`` when held). Schedules for chargers it does
        not own, or that are not connected, are left out without raising."""

    def charger_status(self, charger_id: str) -> Mapping[str, Any]:
        """What the port knows live about a charger: the ``STATUS_KEYS`` at least; empty for a
        charger it does not own."""

    def update_config(self, config: Config) -> None:
        """A reloaded config: chargers added, changed settings taken; connections stay."""
