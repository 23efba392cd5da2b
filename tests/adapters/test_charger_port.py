"""One conformance suite for every ``ChargerPort`` (STYLE.md "trio", issue 12 item 4).

The same cases run against the OCPP server with simulated chargers over loopback websockets (1.6
and 2.0.1) and against the in-memory ``FakeChargers``: whatever the core may count on from a
transport is asserted here, so the fake cannot drift from the real thing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any, Protocol

import pytest

from adapters.fake_chargers import FakeChargers
from adapters.ocpp.simulator import Misbehaviour, SimulatedCharger
from balancer.events import (
    ChargerOffline,
    ChargerOnline,
    Event,
    LimitConfirmed,
    ProfileResult,
    SessionStarted,
)
from balancer.ports import STATUS_KEYS, ChargerPort
from tests.adapters.ocpp_env import Env, ocpp_config, schedule, wait_for

CHARGERS = [{"id": "A", "max_current_a": 32}, {"id": "B", "max_current_a": 32}]


class Harness(Protocol):
    """A port plus the chargers' side of it."""

    port: ChargerPort
    events: list[Event]

    async def plug(self, charger_id: str, *, refuses: bool = False) -> None:
        """The charger connects with a car in a session; returns once the port reports it online."""

    async def unplug(self, charger_id: str) -> None:
        """The charger's connection ends; returns once the port reports it offline."""

    def held_a(self, charger_id: str) -> float | None:
        """What the charger itself holds now [A]."""

    async def close(self) -> None: ...


class OcppHarness:
    def __init__(self, protocol: str) -> None:
        self.protocol = protocol
        self.env = Env(ocpp_config(CHARGERS))
        self.port: ChargerPort = self.env.server
        self.events = self.env.events
        self.sims: dict[str, SimulatedCharger] = {}

    async def plug(self, charger_id: str, *, refuses: bool = False) -> None:
        misbehaviour = Misbehaviour(rejects_profiles=True) if refuses else None
        self.sims[charger_id] = self.env.charger(charger_id, self.protocol, misbehaviour=misbehaviour)
        await wait_for(lambda: _of(self.events, ChargerOnline, charger_id)
                       and _of(self.events, SessionStarted, charger_id))

    async def unplug(self, charger_id: str) -> None:
        await self.sims[charger_id].stop()
        await wait_for(lambda: _of(self.events, ChargerOffline, charger_id))

    def held_a(self, charger_id: str) -> float | None:
        return self.sims[charger_id].limit_now(datetime.now(UTC))

    async def close(self) -> None:
        await self.env.stop()


class FakeHarness:
    def __init__(self) -> None:
        self.events: list[Event] = []
        self.fake = FakeChargers(ocpp_config(CHARGERS), self.events.append)
        self.port: ChargerPort = self.fake

    async def plug(self, charger_id: str, *, refuses: bool = False) -> None:
        self.fake.refuse_limits(charger_id, refuses)
        self.fake.connect(charger_id)
        self.fake.start_session(charger_id, f"tx-{charger_id}")

    async def unplug(self, charger_id: str) -> None:
        self.fake.disconnect(charger_id)

    def held_a(self, charger_id: str) -> float | None:
        return self.fake.held_a(charger_id)

    async def close(self) -> None:
        await self.fake.stop()


def _of(events: list[Event], kind: type, charger_id: str) -> list[Any]:
    return [e for e in events if isinstance(e, kind) and getattr(e, "charger_id", None) == charger_id]


@pytest.fixture(params=["ocpp1.6", "ocpp2.0.1", "ocpp2.1", "fake"])
async def harness(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    h: Harness = FakeHarness() if request.param == "fake" else OcppHarness(request.param)
    await h.port.start()
    try:
        yield h
    finally:
        await h.close()


def test_both_implementations_are_charger_ports() -> None:
    assert isinstance(FakeHarness().port, ChargerPort)
    assert isinstance(OcppHarness("ocpp1.6").port, ChargerPort)


async def test_a_charger_it_does_not_serve_is_left_alone(harness: Harness) -> None:
    assert not harness.port.owns("nobody")
    assert harness.port.charger_status("nobody") == {}
    await harness.port.apply([schedule("nobody", 10.0)])
    assert not [e for e in harness.events if getattr(e, "charger_id", None) == "nobody"]


async def test_a_configured_charger_not_connected_gets_nothing(harness: Harness) -> None:
    assert harness.port.owns("A")
    status = harness.port.charger_status("A")
    assert set(STATUS_KEYS) <= set(status)
    assert status["connected"] is False and status["protocol"] is None and status["limit_a"] is None
    await harness.port.apply([schedule("A", 10.0)])
    assert not _of(harness.events, ProfileResult, "A")


async def test_connection_and_session_are_reported(harness: Harness) -> None:
    await harness.plug("A")
    online = _of(harness.events, ChargerOnline, "A")
    started = _of(harness.events, SessionStarted, "A")
    status = harness.port.charger_status("A")
    assert status["connected"] is True
    assert status["protocol"] == online[-1].protocol
    assert status["transaction_id"] == started[-1].transaction_id


async def test_an_applied_schedule_is_held_confirmed_and_reported(harness: Harness) -> None:
    await harness.plug("A")
    await harness.port.apply([schedule("A", 10.0, failsafe_a=8.0, ahead=[(3600, 6.0)])])
    assert harness.held_a("A") == pytest.approx(10.0)
    assert harness.port.charger_status("A")["limit_a"] == pytest.approx(10.0)
    assert any(r.result == "Accepted" and r.limit_a == 10.0 for r in _of(harness.events, ProfileResult, "A"))
    confirmed = [c for c in _of(harness.events, LimitConfirmed, "A") if c.limit_a == 10.0]
    assert confirmed and [v for _, v in confirmed[-1].periods][-1] == 6.0


async def test_decreases_are_held_before_increases_go_out(harness: Harness) -> None:
    await harness.plug("A")
    await harness.plug("B")
    await harness.port.apply([schedule("A", 16.0), schedule("B", 6.0)])
    first = len(harness.events)
    await harness.port.apply([schedule("B", 20.0), schedule("A", 6.0)])
    assert (harness.held_a("A"), harness.held_a("B")) == (pytest.approx(6.0), pytest.approx(20.0))
    later = harness.events[first:]
    down = next(k for k, e in enumerate(later) if isinstance(e, LimitConfirmed) and e.charger_id == "A")
    up = next(k for k, e in enumerate(later) if isinstance(e, LimitConfirmed) and e.charger_id == "B")
    assert later[down].limit_a == 6.0 and later[up].limit_a == 20.0 and down < up


async def test_a_refused_limit_is_reported_and_not_counted_as_held(harness: Harness) -> None:
    await harness.plug("A", refuses=True)
    await harness.port.apply([schedule("A", 10.0)])
    results = _of(harness.events, ProfileResult, "A")
    assert results and all(r.result != "Accepted" for r in results)
    assert not _of(harness.events, LimitConfirmed, "A")
    assert harness.port.charger_status("A")["limit_a"] is None


async def test_a_lost_connection_is_reported_and_nothing_more_is_applied(harness: Harness) -> None:
    await harness.plug("A")
    await harness.port.apply([schedule("A", 10.0)])
    await harness.unplug("A")
    assert harness.port.charger_status("A")["connected"] is False
    before = len(_of(harness.events, ProfileResult, "A"))
    await harness.port.apply([schedule("A", 8.0)])
    assert len(_of(harness.events, ProfileResult, "A")) == before
