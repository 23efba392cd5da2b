"""A real controller driving a real OcppServer and simulated chargers, like ``Service`` does:
every event wakes a control step, each step's decision goes out as its own ``apply`` task."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from adapters.ocpp.server import OcppServer
from adapters.ocpp.simulator import SimulatedCharger
from balancer.config import parse_config
from balancer.control import SLOT_S, Controller, slot_floor
from balancer.events import Event, LimitConfirmed, MeterSample, ProfileResult
from balancer.model import Config


def site_config(chargers: list[dict[str, Any]], **site: Any) -> Config:
    return parse_config({
        "sites": [{"id": "s", "grid_limit_a": 63, "fallback_kw": 20, "chargers": chargers, **site}],
        "ocpp": {"host": "127.0.0.1", "port": 0, "response_timeout_s": 5.0},
        "control": {"interval_s": 0.5},
    })


class ControlledSite:
    """Capacity: ``now_a`` per phase in the slot of the moment, ``ahead_a`` in every later slot;
    each change is logged with its time, for the held-limit ledger."""

    def __init__(self, config: Config, now_a: float, ahead_a: float | None = None) -> None:
        self.config = config
        self.controller = Controller(config.sites[0], config.control)
        self.server = OcppServer(config, on_event=self._on_event)
        self.wake = asyncio.Event()
        self.chargers: list[SimulatedCharger] = []
        self.capacity: list[tuple[datetime, float, float]] = []
        self.set_capacity(now_a, ahead_a)
        self._task: asyncio.Task[None] | None = None
        self._pushes: set[asyncio.Task[None]] = set()
        self.events: list[Event] = []

    def _on_event(self, event: Event) -> None:
        self.events.append(event)
        self.controller.handle(event)
        if not isinstance(event, (MeterSample, ProfileResult, LimitConfirmed)):
            self.wake.set()

    def set_capacity(self, now_a: float, ahead_a: float | None = None) -> None:
        self.capacity.append((datetime.now(UTC), now_a, now_a if ahead_a is None else ahead_a))
        with contextlib.suppress(RuntimeError):
            self.wake.set()

    def capacity_at(self, at: datetime, t: datetime) -> float:
        """The capacity in force at ``at`` for the instant ``t``."""
        _, now_a, ahead_a = [c for c in self.capacity if c[0] <= at][-1] if at >= self.capacity[0][0] \
            else self.capacity[0]
        return now_a if slot_floor(t) <= slot_floor(at) else ahead_a

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.server.port}/ocpp"

    async def start(self) -> None:
        await self.server.start()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def _loop(self) -> None:
        horizon = self.config.control.plan_horizon_h * 3600 // SLOT_S
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), self.config.control.interval_s)
            self.wake.clear()
            now = datetime.now(UTC)
            _, now_a, ahead_a = self.capacity[-1]
            capacity = np.full((horizon, 3), ahead_a)
            capacity[0] = now_a
            self.controller.set_capacity(slot_floor(now), capacity, ["test"] * horizon)
            schedules = self.controller.decide(now)
            if schedules:
                task = asyncio.get_running_loop().create_task(self.server.apply(schedules))
                self._pushes.add(task)
                task.add_done_callback(self._pushes.discard)

    def horizon_end(self) -> datetime:
        return slot_floor(datetime.now(UTC)) + timedelta(hours=self.config.control.plan_horizon_h)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        for sim in self.chargers:
            await sim.stop()
        for task in list(self._pushes):
            task.cancel()
        await self.server.stop()
