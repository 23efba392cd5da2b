"""The fan-out of one decision to a site's chargers: decreases accepted before increases are sent.

DESIGN 4: the limits the chargers hold must sum to no more than the capacity at every instant and
in every slot of the schedules ahead, also while a decision is on its way. The answers come back
in any order (a charger may take seconds), so the fan-out is serialized in two phases:

1. every charger whose new schedule lowers what it may draw, now or in any slot ahead, gets the
   pointwise minimum of what it holds and the new schedule (``steps.pointwise_min``): a pure
   decrease. The fan-out waits for these answers;
2. only once all are accepted does every charger get its new schedule (the increases: a new
   session's first TxProfile above its idle default, a higher idle limit, a failsafe, a slot ahead
   going up).

A charger that refuses its decrease, or does not answer a call of it within ``PHASE1_WAIT_S`` (plus
a little per charger for large fleets), is flagged (``Pusher.refused``: its real draw reserved, like a
charger that accepts and ignores), retried in the background and not waited for again: the
increases of this decision stay back (they were computed without its reserve) and the decision
its flag triggers sends them. Fan-outs of one site never overlap (one lock per site); a fan-out
whose decision a newer one replaced leaves the increases to that newer one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from balancer.events import ChargerSchedule

if TYPE_CHECKING:
    from adapters.ocpp.link import ChargerLink

__all__ = ["PHASE1_WAIT_PER_CHARGER_S", "PHASE1_WAIT_S", "fan_out"]

log = logging.getLogger(__name__)

PHASE1_WAIT_S = 2.0
"""How long the decreases of a fan-out are waited for before a charger counts as refusing [s]."""
PHASE1_WAIT_PER_CHARGER_S = 0.004
"""Added per charger in the first phase: 1,000 chargers' answers take about a second of CPU, more
on a busy machine; a charger counted as refusing by mistake is reserved at its draw for a minute."""
POLL_S = 0.05


def _ok(task: asyncio.Task[Any]) -> bool:
    return not task.cancelled() and task.exception() is None and bool(task.result())


async def fan_out(items: Sequence[tuple[ChargerLink, ChargerSchedule]]) -> bool:
    """Send one decision's schedules in two phases (module docstring); True when all went out."""
    first: list[tuple[ChargerLink, ChargerSchedule]] = []
    second: list[tuple[ChargerLink, ChargerSchedule]] = []
    for link, schedule in items:
        pusher = link.pusher
        if schedule is not pusher.desired:
            continue  # a newer decision replaced it: its own fan-out comes next
        decrease, increase = pusher.plan(schedule)
        if pusher.refusing:
            if decrease or increase:
                pusher.retry_in_background()
            continue
        if decrease:
            first.append((link, schedule))
        if increase:
            second.append((link, schedule))
    if first:
        tasks = {link.pusher.start_push(schedule, 1): link for link, schedule in first}
        wait_s = PHASE1_WAIT_S + PHASE1_WAIT_PER_CHARGER_S * len(tasks)
        failed: list[tuple[ChargerLink, str]] = []
        pending: set[asyncio.Task[bool]] = set(tasks)
        timeout = wait_s
        while pending:
            done, pending = await asyncio.wait(pending, timeout=timeout)
            failed += [(tasks[t], str((tasks[t].pusher.last_push or {}).get("result", "not sent")))
                       for t in done if not _ok(t)]
            if not pending:
                break
            now = time.monotonic()
            late = [t for t in pending if now - tasks[t].pusher.call_started > wait_s]
            if late:  # the increases stay back anyway: no need to wait for the others
                failed += [(tasks[t], "no answer in time") for t in late]
                break
            # Calls sent later (a retry, a call that waited for the charger's previous one).
            timeout = max(POLL_S, min(wait_s - (now - tasks[t].pusher.call_started) for t in pending))
        if failed:
            for link, why in failed:
                link.pusher.refused(why)
            log.info("fan-out: %d of %d decreases not accepted in time; increases wait for the next decision",
                     len(failed), len(tasks))
            return False
    if second:
        await asyncio.gather(*(link.pusher.push(schedule, 2) for link, schedule in second))
    return True
