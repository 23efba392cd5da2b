"""A real OcppServer on loopback with simulated chargers, for the OCPP tests."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from adapters.ocpp.server import OcppServer
from adapters.ocpp.simulator import Misbehaviour, SimCar, SimulatedCharger
from balancer.config import parse_config
from balancer.events import ChargerSchedule, Event
from balancer.model import Config


def ocpp_config(chargers: list[dict[str, Any]], **ocpp: Any) -> Config:
    return parse_config({
        "sites": [{"id": "s", "grid_limit_a": 200, "fallback_kw": 20, "chargers": chargers}],
        "ocpp": {"host": "127.0.0.1", "port": 0, "response_timeout_s": 2.0, **ocpp},
    })


async def wait_for(predicate: Callable[[], Any], timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not predicate():
        assert loop.time() < end, "timed out waiting"
        await asyncio.sleep(0.02)


class Env:
    def __init__(self, config: Config) -> None:
        self.events: list[Event] = []
        self.server = OcppServer(config, on_event=self.events.append)
        self.chargers: list[SimulatedCharger] = []

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.server.port}/ocpp"

    async def start(self) -> None:
        await self.server.start()

    def charger(self, charger_id: str, protocol: str, *, car: bool = True, misbehaviour: Misbehaviour | None = None,
                password: str | None = None, max_current_a: float = 32.0) -> SimulatedCharger:
        now = datetime.now(UTC)
        sim_car = SimCar(arrival=now - timedelta(seconds=1), departure=now + timedelta(hours=5), energy_wh=30000,
                         iso15118=protocol == "ocpp2.0.1") if car else None
        sim = SimulatedCharger(charger_id, self.url, protocol=protocol, car=sim_car, password=password,
                               meter_interval_s=0.2, tick_s=0.05, misbehaviour=misbehaviour,
                               max_current_a=max_current_a)
        self.chargers.append(sim)
        sim.start()
        return sim

    async def online(self, *charger_ids: str) -> None:
        """Until the chargers are under control (booted, capabilities read): what the controller
        waits for too (``ChargerOnline``); before it, the server sends them no profile."""
        await wait_for(lambda: all(self.server.links[cid].pusher.ready for cid in charger_ids))

    def of(self, kind: type) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]

    async def stop(self) -> None:
        for sim in self.chargers:
            await sim.stop()
        await self.server.stop()


def schedule(charger_id: str, limit_a: float, *, failsafe_a: float = 6.0, ahead: list[tuple[int, float]] | None = None,
             transaction_id: str | None = None) -> ChargerSchedule:
    now = datetime.now(UTC)
    periods = [(now, limit_a)] + [(now + timedelta(seconds=s), v) for s, v in (ahead or [])]
    return ChargerSchedule(charger_id, now, limit_a, tuple(periods), failsafe_a, transaction_id=transaction_id)


@contextlib.asynccontextmanager
async def running_env(config: Config) -> AsyncIterator[Env]:
    """An Env started on ``config`` and stopped (chargers first) on the way out."""
    env = Env(config)
    await env.start()
    try:
        yield env
    finally:
        await env.stop()
