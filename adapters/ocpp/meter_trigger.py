"""Fresh readings after a limit change: OCPP TriggerMessage MeterValues, once the car has followed.

A site meter sees a car ramp the moment it does; the charger's own MeterValues come every 10 s to
15 min, so for that long the meter and the readings disagree, and the ramp counts as non-EV load
(``balancer.site_meter``: the fleet was lowered and raised again, on and off together). So after a
charger accepts a limit that changes what it may draw now, it is asked for MeterValues
``TRIGGER_DELAY_S`` later, and the controller is told when (``ReadingDue``): until the meter has
read after that reading, a meter step the ramp explains is not taken for non-EV load.

One request per charger at a time: a change landing while one waits moves it later, and requests
are at least ``TRIGGER_MIN_INTERVAL_S`` apart. A charger that answers Rejected or NotImplemented
(or a CALLERROR) is not asked again on this connection (``Capabilities.trigger_meter_values``);
nothing else depends on the answer. The delay runs on the service's clock (``balancer demo``
accelerates it).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from adapters.clock import wall_seconds
from adapters.ocpp.trusted_call import call_trusted
from balancer.events import ReadingDue

if TYPE_CHECKING:
    from adapters.ocpp.push_plan import PushState

__all__ = ["TRIGGER_DELAY_S", "TRIGGER_MIN_INTERVAL_S", "MeterTrigger"]

log = logging.getLogger("adapters.ocpp.pusher")

TRIGGER_DELAY_S = 5.0
"""How long after a charger accepts a new limit its readings are asked for [s]: IEC 61851-1 gives
the car 5 s to follow a change of the pilot signal (``obedience.OBEY_GRACE_S`` cites it for the way
down), so by then the reading shows what the car draws under the new limit."""
TRIGGER_MIN_INTERVAL_S = 10.0
"""At most one TriggerMessage per charger this often [s] (a later one waits)."""
TRIGGER_ANSWER_S = 10.0
"""How long to wait for the answer to a TriggerMessage [s]."""


class MeterTrigger:
    """The fresh-readings request of one charger (module docstring)."""

    def __init__(self, pusher: PushState) -> None:
        self.pusher = pusher
        self.due_at: datetime | None = None
        """When the waiting request goes out (None: none waits)."""
        self.sent_at: datetime | None = None
        self.sent = 0
        self._task: asyncio.Task[None] | None = None

    def after_change(self) -> None:
        """A limit that changes what the charger may draw now landed: ask for its readings."""
        pusher = self.pusher
        link = pusher.link
        if not pusher.caps.trigger_meter_values or link.transaction_id is None:
            return
        now = pusher.clock()
        due = now + timedelta(seconds=TRIGGER_DELAY_S)
        if self.sent_at is not None:
            due = max(due, self.sent_at + timedelta(seconds=TRIGGER_MIN_INTERVAL_S))
        self.due_at = due
        link.emit(ReadingDue(link.charger_id, now, due))
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())
            pusher._tasks.add(self._task)  # cancelled with the pusher's on a disconnect
            self._task.add_done_callback(pusher._tasks.discard)

    async def _run(self) -> None:
        pusher = self.pusher
        while self.due_at is not None:
            wait_s = (self.due_at - pusher.clock()).total_seconds()
            if wait_s <= 0:
                break
            before = pusher.clock()
            await asyncio.sleep(wall_seconds(pusher.link.server.now, wait_s))
            if pusher.clock() <= before:
                break  # the clock does not move (a test's fixed clock): go now
        self.due_at = None
        await self._send()

    async def _send(self) -> None:
        pusher = self.pusher
        link = pusher.link
        cp = link.cp
        if cp is None or not link.connected or not pusher.caps.trigger_meter_values:
            return
        self.sent_at = pusher.clock()
        self.sent += 1
        try:
            answer = await call_trusted(cp, "TriggerMessage", link.dialect.trigger_meter_values(link.charger.evse_id),
                                        timeout=TRIGGER_ANSWER_S)
            status = str(answer.get("status"))
        except (TimeoutError, ConnectionError):
            return
        except Exception as exc:  # a CALLERROR (NotImplemented, NotSupported...) arrives as an OCPPError
            status = f"{type(exc).__name__}: {exc}"
        if status != "Accepted":
            pusher.caps.trigger_meter_values = False
            log.info("charger %s: TriggerMessage MeterValues answered %s; not asked again on this connection",
                     link.charger_id, status)
