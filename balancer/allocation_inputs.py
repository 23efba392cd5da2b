"""What the allocator gets at one moment: node capacity less what is not ours to move, each
charger's allowance, and the idle limits. Pure functions of the controller's state.

Safety bookkeeping (DESIGN 4):
- a charger that is offline keeps what it may still draw (its last held limit: in a transaction
  its TxProfile, else its idle limit; its failsafe once that schedule ends or when nothing is
  known) reserved at every node above it until it reconnects;
- a charger flagged as not obeying is reserved at what it really draws, and at least at what it
  holds (as if it were offline);
- a charger in a session that was never seen keeping a limit (``unverified``) is reserved at its
  maximum against the others, and itself held at most at its failsafe, until its first reading
  shows it keeps that (once per charger: the verified status is persisted);
- every charger's failsafe (TxDefaultProfile) is its share of ``fallback_kw`` found by the
  allocator itself, so all failsafes together respect ``fallback_kw``, the connection and fuses;
- idle chargers get an *idle limit*: a share of what the chargers in a transaction leave over,
  never more than their failsafe (``idle_limits``).
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from balancer.allocate import AllocationRequest, allocate, code_number, node_load_a
from balancer.charger_state import ChargerState, is_idle, unverified, wants_current
from balancer.model import LimitCode, Site
from balancer.site_meter import CHARGER_MEASUREMENT_MAX_AGE_S, MeterView, charger_draws_a
from balancer.topology import Topology, phase_mask
from balancer.v2x import discharge_draw_limits

if TYPE_CHECKING:
    from balancer.control import Controller

__all__ = ["MEASUREMENT_FRESH_S", "Allowance", "allowance", "failsafe_limits", "idle_limits", "judged_limit_a",
           "meter_now", "node_capacity", "offline_reserve_a", "ramp_pending", "reserved_a", "reserved_load_a",
           "unverified_mask"]

FloatArray = npt.NDArray[np.float64]
Allowance = tuple[FloatArray, FloatArray, FloatArray, npt.NDArray[np.bool_], npt.NDArray[np.int8]]
"""Per-charger min, max [A], urgency, the cars' phase mask and what set each max (``allowance``)."""

MEASUREMENT_FRESH_S = 120.0
"""A meter sample older than this (in the controller's clock) no longer caps a car's allowance."""
_CHARGER_MAX, _CAR_MAX, _NOT_DRAWING, _EXTERNAL_CAP = (
    code_number(c) for c in (LimitCode.CHARGER_MAX, LimitCode.CAR_MAX, LimitCode.NOT_DRAWING, LimitCode.EXTERNAL_CAP))


def failsafe_limits(site: Site, topo: Topology) -> FloatArray:
    """Each charger's share of ``fallback_kw`` (DESIGN 4), for every charger loaded at its max
    on all its phases; the allocator guarantees the sum respects fallback, connection, fuses.
    With a site meter the building keeps drawing when the balancer is gone: its
    ``fallback_base_load_a`` (and the margin) come off the connection first (DESIGN 3.8)."""
    if topo.n_chargers == 0:
        return np.zeros(0)
    capacity = np.repeat(topo.node_limit_a[:, None], 3, axis=1).astype(np.float64)
    capacity[0, :] = np.minimum(capacity[0, :], site.fallback_a)
    meter = site.meter
    if meter is not None:
        base = np.asarray(meter.fallback_base_load_a, dtype=np.float64) + meter.margin_a
        capacity[0, :] = np.maximum(capacity[0, :] - base, 0.0)
    request = AllocationRequest(
        topology=topo,
        capacity_a=capacity,
        phase_mask=topo.charger_phase_mask,
        min_a=topo.min_current_a,
        max_a=topo.max_current_a,
    )
    return np.asarray(allocate(request).limit_a, dtype=np.float64)


def offline_reserve_a(ctl: Controller, i: int, state: ChargerState, now: datetime) -> float:
    """What an offline charger may still draw [A] while the schedule it holds runs: in a
    transaction its TxProfile, or the limit last sent if higher (it may have landed unseen),
    or its idle default (no TxProfile held yet); without one what it held after the session
    (a TxProfile-strategy charger drops its TxProfile and falls to its idle default, the
    others keep their stack-1 profile). Its failsafe once that schedule ends, or when nothing
    is known."""
    failsafe = max(float(ctl.failsafe_a[i]), 0.0)
    if state.held_until is not None and now >= state.held_until:
        return failsafe
    if state.transaction_id is not None:
        return max(state.held_a, state.limit_a, state.held_idle_a or 0.0)
    if not state.held_known:
        return failsafe
    if ctl.site.chargers[i].profile_strategy == "TxProfile":
        return failsafe if state.held_idle_a is None else state.held_idle_a
    return state.held_a


UNVERIFIABLE_WITHIN_A = 1.0
"""A charger is verified only by a reading within a limit this far below its maximum (the OCPP
obedience check's tolerance), so one whose own share is at least that high cannot be."""


def unverified_mask(ctl: Controller) -> npt.NDArray[np.bool_]:
    """(n,) bool: the chargers in a session never seen keeping a limit (``charger_state.unverified``),
    except those whose share (their failsafe or minimum) is within ``UNVERIFIABLE_WITHIN_A`` of their
    maximum: reserved at its maximum, such a charger is allowed about as much as it is reserved, and
    no reading could ever verify it (a charger alone on a roomy site was planned 0 A for good)."""
    topo = ctl.topology
    share = np.maximum(ctl.failsafe_a, topo.min_current_a)
    verifiable = share < topo.max_current_a - UNVERIFIABLE_WITHIN_A
    return np.array([unverified(ctl.states[cid]) for cid in topo.charger_ids], dtype=bool) & verifiable


def reserved_a(ctl: Controller, now: datetime, *,
               at_max: npt.NDArray[np.bool_] | None = None) -> tuple[FloatArray, FloatArray]:
    """Per-charger current that is not ours to move (offline, disobedient, and the chargers of
    ``at_max``, by default every session on a charger never seen keeping a limit: its maximum,
    as a charger that accepts its limits and ignores them would draw) and its phase mask."""
    topo = ctl.topology
    reserve = np.zeros(topo.n_chargers)
    if at_max is None:
        at_max = unverified_mask(ctl)
    for i, cid in enumerate(topo.charger_ids):
        state = ctl.states[cid]
        if at_max[i]:
            reserve[i] = float(topo.max_current_a[i])
        elif not state.connected:
            # Not under control (offline, or connected and not yet booted and read): what it
            # may hold, and in a session at least what it was last seen drawing.
            reserve[i] = offline_reserve_a(ctl, i, state, now)
            if state.transaction_id is not None and not (state.held_known and state.seen):
                # In a session and no limit of ours ever held, or not seen since a restart (the
                # previous process may have raised it after its last snapshot): its maximum.
                reserve[i] = float(topo.max_current_a[i])
            if state.transaction_id is not None or not state.obeys:
                reserve[i] = max(reserve[i], max(state.measured_a))
            if not state.obeys:
                reserve[i] = max(reserve[i], state.draw_a or 0.0)
        elif not state.obeys:
            # Not under control either: what it holds as well as what it draws. A charger flagged
            # by a reading taken while it came up to a raise (or before its answer came) keeps
            # that limit, and may draw it: reserved at the reading alone, the others were raised
            # into it (CI: 160.5 A held against 150 A).
            reserve[i] = max(offline_reserve_a(ctl, i, state, now), state.draw_a or 0.0, max(state.measured_a))
    return reserve, topo.charger_phase_mask.astype(np.float64)


def reserved_load_a(ctl: Controller, now: datetime, *,
                    at_max: npt.NDArray[np.bool_] | None = None) -> FloatArray:
    """Per-phase sum of the reserved loads at the connection, (3,) [A] (``at_max``: see ``reserved_a``)."""
    reserve, mask = reserved_a(ctl, now, at_max=at_max)
    return np.asarray(reserve @ mask, dtype=np.float64) if len(reserve) else np.zeros(3)


def meter_now(ctl: Controller, now: datetime, cap_now: FloatArray) -> MeterView | None:
    """The site meter's non-EV load and the chargers' share of ``cap_now`` (None: no meter)."""
    if ctl.meter is None:
        return None
    topo = ctl.topology
    states = [ctl.states[cid] for cid in topo.charger_ids]
    measured = np.array([s.measured_a for s in states], dtype=np.float64).reshape(-1, 3)
    meter_at = ctl.meter.last_at
    newer = np.array([meter_at is not None and s.measured_at is not None and s.measured_at > meter_at
                      for s in states], dtype=bool)
    if newer.any():
        # A car may have ramped up after the meter reading: subtract no more than it drew before.
        previous = np.array([s.prev_measured_a for s in states], dtype=np.float64).reshape(-1, 3)
        measured = np.where(newer[:, None], np.minimum(measured, previous), measured)
    # No charger counts at more than it held when the meter read: a car lowered before that reading
    # and raised again since drew the lower limit then, whatever its readings either side show
    # (counted at them, the limit it did not draw hid as much building load: the unsafe side).
    held = [None if meter_at is None else judged_limit_a(s, meter_at) for s in states]
    limits = np.array([s.limit_a if h is None or s.limit_a < 0 else min(s.limit_a, max(h, 0.0))
                       for s, h in zip(states, held, strict=True)], dtype=np.float64)
    usable = np.array([s.connected and s.measured_at is not None
                       and abs((now - s.measured_at).total_seconds()) <= CHARGER_MEASUREMENT_MAX_AGE_S
                       for s in states], dtype=bool)
    capped = np.array([s.obeys for s in states], dtype=bool)
    loaded = phase_mask(topo, np.array([s.car_phases or 3 for s in states], dtype=np.int64))
    limits = discharge_draw_limits(limits, states, meter_at)
    draws = charger_draws_a(measured, limits, usable, capped, loaded)
    pending = np.zeros(3)
    if meter_at is not None:
        wait_s = ctl.meter.settings.stale_after_s
        for i, s in enumerate(states):
            if not (s.connected and s.obeys):
                continue
            increase, to_a = 0.0, s.limit_a
            changed = s.limit_changed_at
            if s.limit_a > s.held_a and changed is not None and meter_at >= changed and \
                    (now - changed).total_seconds() <= wait_s:
                # A raise on its way: a charger applies a profile as it gets it, and its car may
                # ramp before the answer is handled (the simulator does at once).
                increase = s.limit_a - max(s.held_a, 0.0)
            if ramp_pending(s, meter_at, now, wait_s):
                to_a = min(s.held_a, s.limit_a)
                increase = max(increase, to_a)
            if increase > 0:  # a discharge ramps no load
                pending += np.where(loaded[i], np.clip(to_a - draws[i], 0.0, increase), 0.0)
    return ctl.meter.view(now, cap_now, draws.sum(axis=0), pending)


def ramp_pending(state: ChargerState, meter_at: datetime, now: datetime, wait_s: float) -> bool:
    """True while the meter may show a ramp of the charger's that its readings do not (``site_meter``,
    module docstring): fresh readings were asked for after a change it accepted (``ReadingDue``),
    the meter read after that change landed, no meter reading since came after a reading taken
    once they were due, and no more than ``wait_s`` (the meter's ``stale_after_s``) has passed
    since then. A lower limit landing meanwhile does not end it: the readings may still be from
    before the raise (a charger lowered by 0.3 A lost its wait, its ramp counted as 16 A of
    building load, and the fleet was lowered after all)."""
    due, asked, read_at = state.reading_due_at, state.reading_asked_at, state.measured_at
    if due is None or asked is None or meter_at < asked or (now - due).total_seconds() > wait_s:
        return False
    return not (read_at is not None and due <= read_at <= meter_at)


def node_capacity(ctl: Controller, now: datetime, *,
                  at_max: npt.NDArray[np.bool_] | None = None) -> tuple[FloatArray, FloatArray, str]:
    """(n_nodes, 3) capacity now less reserved loads [A], the capacity in force and its source
    (``at_max``: see ``reserved_a``). Sets ``ctl.meter_view`` (what the schedules ahead of this
    decision read)."""
    topo = ctl.topology
    cap_now, source = ctl.capacity_now(now)
    capacity = np.repeat(topo.node_limit_a[:, None], 3, axis=1).astype(np.float64)
    capacity[0, :] = np.minimum(capacity[0, :], cap_now)
    ctl.meter_view = meter_now(ctl, now, cap_now)
    if ctl.meter_view is not None:
        # The chargers share what the non-EV load leaves of the connection (DESIGN 3.8).
        capacity[0, :] = np.minimum(topo.node_limit_a[0], cap_now - ctl.meter_view.cut_a)
    if at_max is None:
        at_max = unverified_mask(ctl)
    reserve, mask = reserved_a(ctl, now, at_max=at_max)
    reserved = np.asarray(topo.ancestors @ (reserve[:, None] * mask)) if topo.n_chargers else np.zeros((1, 3))
    capacity -= reserved
    # What the connection lacks with no charger drawing, for V2X discharge (balancer.v2x). A
    # never-verified session's maximum is held back from the others, not a load it draws: no
    # deficit (it made V2X cars discharge, and told the grid operator the site cannot comply).
    held_back = (np.where(at_max, reserve, 0.0) @ mask) if topo.n_chargers else np.zeros(3)
    root = capacity[0] + held_back
    if ctl.meter_view is not None and ctl.meter is not None:
        raw = cap_now - ctl.meter_view.non_ev_load_a - ctl.meter.settings.margin_a
        root = np.minimum(topo.node_limit_a[0], raw) - reserved[0] + held_back
    ctl.deficit_a = np.asarray(np.maximum(-root, 0.0), dtype=np.float64)
    return np.maximum(capacity, 0.0), cap_now, source


def allowance(ctl: Controller, now: datetime) -> Allowance:
    """Per-charger min, max [A] and urgency, the phase mask of the cars, and what set each max
    (``code_number`` of charger_max, car_max or not_drawing)."""
    topo = ctl.topology
    n = topo.n_chargers
    min_a = topo.min_current_a.copy()
    max_a = np.zeros(n)
    urgency = np.zeros(n)
    max_code = np.full(n, _CHARGER_MAX, dtype=np.int8)
    car_phases = np.full(n, 3, dtype=np.int64)
    headroom = ctl.site.headroom_a
    for i, cid in enumerate(topo.charger_ids):
        state = ctl.states[cid]
        if state.car_phases is not None:
            car_phases[i] = state.car_phases
        if not wants_current(state):
            continue
        cap = topo.max_current_a[i]
        if state.car_max_a is not None and state.car_max_a < cap:
            cap, max_code[i] = state.car_max_a, _CAR_MAX
        external = state.external_cap_a(now.timestamp())
        if external is not None and external < cap:  # another party's cap only ever lowers the limit
            cap, max_code[i] = external, _EXTERNAL_CAP
        if state.car_min_a is not None:
            min_a[i] = max(min_a[i], state.car_min_a)
        drawn = max(state.measured_a)
        fresh = state.measured_at is not None and (now - state.measured_at).total_seconds() <= \
            MEASUREMENT_FRESH_S
        judged = None if state.measured_at is None else judged_limit_a(state, state.measured_at)
        taken = max(drawn + headroom, min_a[i])
        if fresh and judged is not None and judged > 0 and drawn < judged - headroom / 2 and taken < cap:
            # The car takes less than it may: free the rest, keep a headroom to ramp back. Half the
            # headroom is the hysteresis: a car capped at draw + headroom that draws the same stays
            # capped (at "less by the whole headroom" the cap was lifted and set again, a push each
            # reading); a car that takes more than half its headroom is ramping and is freed.
            cap, max_code[i] = taken, _NOT_DRAWING
        remaining = state.remaining_wh()
        if remaining is not None and remaining <= 0 and min_a[i] < cap:
            cap, max_code[i] = min_a[i], _NOT_DRAWING
        max_a[i] = cap if cap >= min_a[i] else 0.0
        if state.departure is not None and remaining is not None and cap > 0:
            power_w = cap * min(car_phases[i], 3) * ctl.site.voltage_v
            laxity_s = (state.departure - now).total_seconds() - remaining / power_w * 3600.0
            urgency[i] = -laxity_s
        else:
            urgency[i] = -1e9
    mask = phase_mask(topo, car_phases)
    return min_a, max_a, urgency, mask, max_code


def judged_limit_a(state: ChargerState, at: datetime) -> float | None:
    """The limit [A] a reading taken ``at`` is judged against: what the charger surely held then.
    A reading taken after a raise was decided but before the charger accepted it shows the car
    under its old limit: judged against the new one it capped cars at their old draw + headroom,
    8, 10, 12 A in turn, and the decisions flapped (a push each). None: not known (no cap)."""
    if not state.held_known:  # no answers from this charger: the decision's time is all there is
        changed = state.limit_changed_at
        return state.limit_a if changed is None or at > changed else None
    since = state.held_at or state.session_start  # from its start a session draws by the idle default
    if since is not None and at > since:
        return min(state.limit_a, state.held_a)
    before = state.held_before_at if state.held_at is not None else None
    if before is not None and at > before:  # taken before the last one landed: the lower of the two
        return min(state.limit_a, state.held_a, state.held_before_a)
    return None


def idle_limits(ctl: Controller, capacity: FloatArray, active_a: FloatArray,
                active_mask: npt.NDArray[np.bool_]) -> FloatArray:
    """Idle limit per charger [A], shape (n_chargers,); 0 for chargers that are not idle.

    An idle charger holds its idle limit as its default profile, so a car that plugs in draws
    at most that until the balancer's TxProfile arrives (and for ever if the balancer is gone).
    It is what is *left over* at every node and phase once the chargers in a transaction have
    their limits, so an idle charger never takes anything from a charging car (work-conserving
    for real cars is unchanged). At most the charger's failsafe: that is what a car may draw
    when the balancer is gone and what an offline charger is reserved at. The full phase mask
    of the charger is loaded, since nothing is known about the next car; 0 or at least the
    charger's minimum, as for every limit. The sum of the limits of chargers in a transaction and
    the idle limits so stays within every node and phase.

    capacity : (n_nodes, 3) [A] node capacity now, less reserved loads (``node_capacity``)
    active_a, active_mask : (n,) [A] and (n, 3) bool, the limits of the first allocation
    """
    topo = ctl.topology
    n = topo.n_chargers
    idle = np.array([is_idle(ctl.states[cid]) for cid in topo.charger_ids], dtype=bool)
    if n == 0 or not idle.any():
        return np.zeros(n)
    left = np.maximum(capacity - node_load_a(topo, active_a, active_mask), 0.0)
    request = AllocationRequest(
        topology=topo, capacity_a=left, phase_mask=topo.charger_phase_mask,
        min_a=topo.min_current_a, max_a=np.where(idle, ctl.failsafe_a, 0.0),
        # No rotation: an idle limit that moves every period only costs pushes.
        can_pause=topo.can_pause | ~idle,
    )
    return np.asarray(allocate(request).limit_a, dtype=np.float64)
