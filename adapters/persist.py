"""The controllers' state on disk: a snapshot every ``PERSIST_EVERY_S`` and soon after a session event.

Independent of the control loop and of pushes: a charger that never answers keeps a push task
alive for minutes, and the state must not wait for it beyond ``PERSIST_YIELD_S`` (the snapshot,
10-55 ms at 200-1,000 chargers, would delay a decrease). A failed write is retried by the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping

from adapters.store import StateStore
from balancer.control import Controller

__all__ = ["PERSIST_EVERY_S", "PERSIST_GAP_S", "PERSIST_YIELD_S", "Persister"]

log = logging.getLogger("balancer.service")

PERSIST_EVERY_S = 5.0
"""The controller state on disk is at most this old (plus one write) while the disk works."""
PERSIST_GAP_S = 0.25
"""Session events closer together than this share one snapshot (a reconnect storm writes a few)."""
PERSIST_YIELD_S = 1.0
"""A snapshot waits at most this long for the limits of a capacity change to go out first."""


class Persister:
    """Writes every controller's snapshot; ``busy`` says limits of a capacity change are going out."""

    def __init__(self, store: StateStore, controllers: Mapping[str, Controller], counters: dict[str, float],
                 busy: Callable[[], bool]) -> None:
        self.store = store
        self.controllers = controllers
        self.counters = counters
        self.busy = busy
        self._soon = asyncio.Event()

    def soon(self) -> None:
        """A session started or stopped: it must survive a crash right after."""
        self._soon.set()

    async def loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._soon.wait(), timeout=PERSIST_EVERY_S)
            self._soon.clear()
            deadline = loop.time() + PERSIST_YIELD_S
            while self.busy() and loop.time() < deadline:
                await asyncio.sleep(0.05)
            self.persist()
            await asyncio.sleep(PERSIST_GAP_S)

    def persist(self) -> None:
        """Write every controller's snapshot (and whatever else is pending); never raises."""
        try:
            for site_id, controller in self.controllers.items():
                self.store.put_json(f"controller:{site_id}", controller.snapshot(), flush=False)
            ok = self.store.flush()
        except Exception:  # a snapshot bug must not end the persist loop; the next round tries again
            log.exception("state snapshot failed")
            ok = False
        self.counters["state_saves" if ok else "state_save_failures"] += 1
        self.counters["state_write_failures"] = self.store.failures
