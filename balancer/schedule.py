"""Schedule shaping: from a decision's limit now to a charger's schedule ahead. Pure.

Ahead, a charger never goes above today's limit scaled by how much the capacity shrinks: summed
over chargers that stays within every future slot's capacity even when plans are stale or the
balancer vanishes (DESIGN 4).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from balancer.allocation_inputs import reserved_load_a
from balancer.events import ChargerSchedule
from balancer.external_cap import capped_periods
from balancer.planning import non_ev_ahead
from balancer.rounding import floor_to
from balancer.timeline import SLOT_S, horizon_slots, slot_floor

if TYPE_CHECKING:
    from balancer.control import Controller

__all__ = ["INCREASE_LAG", "Ahead", "ahead", "charger_schedule"]

FloatArray = npt.NDArray[np.float64]
Ahead = tuple[list[datetime], FloatArray, dict[str, FloatArray]]
"""What every schedule of one decision shares (``ahead``)."""
INCREASE_LAG = timedelta(seconds=60)
"""How long after a slot boundary a rise in a schedule ahead starts (see ``charger_schedule``)."""


def ahead(ctl: Controller, now: datetime) -> Ahead:
    """What every schedule of this decision shares: the start of each slot ahead, the capacity
    ratio of each slot ahead to now (lowest phase), and the plan's rows aligned to those slots.

    The ratio is taken on the capacity *less the reserved loads* (offline, disobedient
    chargers), which do not shrink with it: the limits handed out share ``cap_now - reserved``,
    so scaled by this ratio they fit ``cap_ahead - reserved`` in every slot.
    """
    horizon = horizon_slots(ctl.settings.plan_horizon_h)
    start = slot_floor(now)
    cap_now, _ = ctl.capacity_now(now)
    cap_ahead = ctl.capacity_ahead(start, horizon)
    load = reserved_load_a(ctl, now)
    if ctl.meter_view is not None:
        # Ahead, the non-EV load of now is assumed to stay, and PV export to stop.
        cap_now = cap_now - ctl.meter_view.cut_a
        now_load = ctl.meter_view.non_ev_load_a + ctl.meter.settings.margin_a if ctl.meter else 0.0
        cap_ahead = cap_ahead - np.maximum(non_ev_ahead(ctl, start, horizon, now, export=False), now_load)
    net_now = np.maximum(cap_now - load, 1e-9)
    ratio = np.clip(np.min((cap_ahead - load[None, :]) / net_now[None, :], axis=1), 0.0, 1.0)
    rows: dict[str, FloatArray] = {}
    plan = ctl.plan
    if plan is not None:
        offset = int((start - plan.start).total_seconds() // plan.slot_s)
        index = offset + np.arange(horizon)
        valid = (index >= 0) & (index < plan.limit_a.shape[1])
        for j, cid in enumerate(plan.charger_ids):
            row = np.zeros(horizon)
            row[valid] = plan.limit_a[j, index[valid]]
            rows[cid] = row
    times = [start + timedelta(seconds=k * SLOT_S) for k in range(horizon + 1)]
    return times, ratio, rows


def charger_schedule(ctl: Controller, i: int, cid: str, now: datetime, limit_a: float,
                     shared: Ahead, *, idle: bool = False) -> ChargerSchedule:
    """The limit now, then the planned limits of the slots ahead, then the failsafe.

    Ahead, a charger never goes above today's limit scaled by how much the capacity shrinks.
    The plan may only lower it further. An idle charger's schedule (``idle``) follows the same
    rule with its idle limit (no plan row: no session), and always ends in the failsafe at the
    horizon like the others, even at 0 A now.

    ``idle_periods`` is the stack-1 default an idle-limit profile should hold: the schedule
    itself for an idle charger; for a charger in a transaction 0 A until the horizon, then the
    failsafe, so that an idle limit from before the session never applies to the next car
    (the adapter pushes it once the session's TxProfile is held).
    """
    state = ctl.states[cid]
    charger = ctl.site.chargers[i]  # the topology keeps the site's order
    times, ratio, rows = shared
    end = times[len(ratio)]
    failsafe = float(ctl.failsafe_a[i])
    periods: list[tuple[datetime, float]] = [(now, limit_a)]
    if idle or (state.transaction_id is not None and limit_a > 0):
        values = limit_a * ratio
        row = None if idle else rows.get(cid)
        if row is not None:
            values = np.minimum(values, row)
        values = floor_to(values, charger.granularity_a, charger.min_current_a)
        values[0] = limit_a
        changes = np.flatnonzero(values[1:] != values[:-1]) + 1
        # A rise starts INCREASE_LAG after the slot boundary, a fall on it: chargers' clocks
        # differ by a few seconds, and one charger rising before another falls would overload
        # the site for that moment (decreases before increases, within the schedules too).
        rises = values[changes] > values[changes - 1]
        periods.extend((times[k] + INCREASE_LAG if up else times[k], float(values[k]))
                       for k, up in zip(changes.tolist(), rises.tolist(), strict=True))
        periods.append((end + INCREASE_LAG if failsafe > values[-1] else end, failsafe))
    elif limit_a < 0:  # V2X discharge: until the end of this slot at most (balancer.v2x)
        periods.extend(((times[1], 0.0), (end + INCREASE_LAG, failsafe)))
    if not idle and state.external_cap:  # another party's cap, from the moment it changes
        periods = capped_periods(periods, state.external_cap, state.external_cap_until,
                                 charger.min_current_a, charger.granularity_a)
    idle_periods = tuple(periods) if idle else ((now, 0.0), (end + INCREASE_LAG, failsafe))
    return ChargerSchedule(
        charger_id=cid, at=now, limit_a=limit_a, periods=tuple(periods),
        failsafe_a=failsafe, transaction_id=state.transaction_id,
        phases=charger.phases if state.car_phases is None else min(state.car_phases, charger.phases),
        idle_periods=idle_periods,
    )
