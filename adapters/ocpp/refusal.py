"""Chargers that refuse their limits, or do not answer: reserved, retried, never waited for.

A decrease refused (Rejected, CALLERROR) or not answered in time in a fan-out flags the charger and
reserves what it may draw (its maximum while it holds no limit of ours); it is retried in the
background, one short call every ``RETRY_EVERY_S``, and no fan-out waits for it again until it
accepts. No answer is not a refusal: a late Accepted clears the flag at once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import TYPE_CHECKING

from adapters.ocpp.obedience import Obedience
from balancer.events import ChargerSchedule, ObedienceChanged

__all__ = ["RETRY_EVERY_S", "RETRY_TRY_S", "Refusals"]

log = logging.getLogger("adapters.ocpp.pusher")

RETRY_TRY_S = 4.0
RETRY_EVERY_S = 5.0
"""A charger that refuses profiles (or is silent) is retried in the background: one call per
try, answered within ``RETRY_TRY_S``, every ``RETRY_EVERY_S``."""


class Refusals(Obedience):
    """Flags and background retries of a charger that refuses or does not answer."""

    if TYPE_CHECKING:
        async def push(self, schedule: ChargerSchedule | None = None, phase: int = 0, *,
                       background: bool = False) -> bool: ...

    def refused(self, why: str) -> None:
        """Its decrease in a fan-out was refused, or not answered in time (``fanout``): reserve
        what it may draw (flag it as not obeying; the higher of its measured current and what its
        profiles let it draw, or its maximum while neither is known), retry it in the background,
        and let no fan-out wait for it again until it accepts. A Rejected or CALLERROR answer is a
        refusal; no answer (yet) is not: a late Accepted clears the flag at once. A charger that
        went offline meanwhile is the offline reserve's business instead."""
        moved, self._tx_moved = self._tx_moved, False
        if moved or not self.link.connected or why == "Offline":
            return
        answered = why in ("Rejected", "NotSupported", "CallError", "Error")
        self.refusal = "rejected" if answered else "no_answer"
        self.refusing = True
        self._follow_n = 0
        peak = self.peak_allowed_a(self.clock())
        # Holding no limit of ours it may draw its maximum at any moment, whatever it draws now.
        draw = self.link.charger.max_current_a if peak is None else max(self.last_draw_a or 0.0, peak)
        self.reserved_a = draw
        detail = f"refuses its limits ({why}): its draw of {draw:.1f} A is reserved" if answered \
            else f"no answer to its limit ({why}): {draw:.1f} A reserved until it answers"
        if self.obeys:
            self._set_obeys(False, draw, detail, by="refusal")
        else:  # already flagged: say what it draws now
            self.link.emit(ObedienceChanged(self.link.charger_id, self.clock(), False, draw, detail))
        self.retry_in_background()

    def _answered_late(self) -> None:
        """A call it had not answered in time is Accepted: it was slow, it does not refuse."""
        if self.refusal != "no_answer":
            return
        self.refusing = False
        self.refusal = None
        if self._flagged_by == "refusal":
            self._set_obeys(True, self.last_draw_a or 0.0, "answered late: it takes its limits")


    def retry_in_background(self) -> None:
        if self._retry is None or self._retry.done():
            self._retry = asyncio.get_running_loop().create_task(self._retry_loop())
            self._tasks.add(self._retry)
            self._retry.add_done_callback(self._tasks.discard)

    async def _retry_loop(self) -> None:
        """Until it accepts: the newest decision, capped at the draw reserved for it (what it may
        draw is counted at that, so accepting a limit must not let it draw more)."""
        while self.refusing and self.link.connected:
            schedule = self.desired
            if schedule is not None:
                capped = tuple((t, min(v, self.reserved_a)) for t, v in schedule.periods)
                if await self.push(dataclasses.replace(schedule, limit_a=capped[0][1], periods=capped),
                                   background=True):
                    self.refusing = False
                    self.refusal = None
                    log.info("charger %s accepts limits again", self.link.charger_id)
                    return
            await asyncio.sleep(RETRY_EVERY_S)

