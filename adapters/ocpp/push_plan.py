"""What one decision changes for one charger, and the state a charger's pusher keeps.

``PushState`` is everything a ``Pusher`` knows of its charger (what it holds, its flags, its clock);
``LimitPlan`` compares a decision with what the charger holds, now and in every slot ahead
(``steps``): whether it is a decrease (first phase of the fan-out, as min(held, new)) or an
increase (second phase), the deadband and the small-increase pace, and which profile carries the
limit (``profile_strategy``). See ``pusher`` for the whole story.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
from collections import deque
from datetime import datetime
from typing import TYPE_CHECKING, Any

from adapters.clock import Clock
from adapters.ocpp.meter_trigger import MeterTrigger
from adapters.ocpp.profiles import DYNAMIC_PROFILE_ID, IDLE_PROFILE_ID, Capabilities
from adapters.ocpp.steps import (
    EPS_A,
    Periods,
    drop_a,
    now_then_min,
    pointwise_max,
    pointwise_min,
    raise_a,
    raise_now_a,
    renew_tail,
)
from balancer.events import ChargerSchedule

if TYPE_CHECKING:
    from adapters.ocpp.link import ChargerLink

__all__ = ["SMALL_INCREASE_AFTER_S", "LimitPlan", "PushState"]

SMALL_INCREASE_AFTER_S = 120.0
"""An increase now within ``deadband_a`` of what the charger holds is sent at most this often:
fewer pushes against a little current left unused meanwhile."""


class PushState:
    """What a pusher knows of its charger (see ``Pusher``)."""

    def __init__(self, link: ChargerLink, clock: Clock | None = None) -> None:
        self.link = link
        self.clock: Clock = clock or link.now
        """The service's clock: timestamps and the policy timers (a test passes a fake one)."""
        self.desired: ChargerSchedule | None = None
        self.version = 0
        self.held_a: float | None = None
        self.held_periods: tuple[tuple[Any, float], ...] = ()
        self.held_tx: str | None = None
        self.idle_a: float | None = None
        self.idle_periods: tuple[tuple[Any, float], ...] = ()
        self._idle_refused: tuple[str | None, tuple[tuple[Any, float], ...]] | None = None
        self.failsafe_a: float | None = None
        self.composite_a: float | None = None
        """What the charger's composite schedule allowed at the last read-back [A]: what it
        really may draw, all its profiles combined (None: not read since it connected)."""
        self.caps = Capabilities()
        self.meter_trigger = MeterTrigger(self)
        self.lock = asyncio.Lock()
        self.obeys = True
        self.on_its_way: Periods | None = None
        """A stack-1 schedule sent and not answered yet: the charger may hold it already (it applies
        a profile as it gets it), or any moment now; a decision lower than it is a decrease."""
        self._allowed_log: deque[tuple[datetime, Periods]] = deque(maxlen=64)
        """(since when, schedule) of what its profiles let it draw, newest last: a reading is
        judged against the highest of them within ``OBEY_GRACE_S`` (none yet: not judged)."""
        self.refusal: str | None = None
        """Why it is not waited for: "rejected" (Rejected or CALLERROR answers) or "no_answer"
        (none in time; a late Accepted clears it at once). None while it takes its limits."""
        self._flagged_by: str | None = None
        """What flagged it as not obeying: "refusal", "draw" or "composite" (None: obeys)."""
        self.last_push: dict[str, Any] | None = None
        self.history: deque[dict[str, Any]] = deque(maxlen=50)
        self._tx_refused: str | None = None
        """The transaction whose TxProfile the charger answered Rejected (see ``_push_limit``)."""
        self.ready = False
        """Booted and its capabilities read on this connection: only then do profiles go out."""
        self.registered = False
        """The charger booted, or showed it is registered already, on this connection."""
        self._tasks: set[asyncio.Task[Any]] = set()
        self.refusing = False
        """Its last decrease was refused or not answered in time: its real draw is reserved
        (flagged as not obeying) and it is retried in the background, never waited for."""
        self.last_draw_a: float | None = None
        """The highest phase current of its last meter sample [A] (None: none yet)."""
        self.reserved_a = 0.0
        """The draw reported for it when it was found refusing (what the controller reserves)."""
        self._limit_sent_at = -math.inf
        self._floor: tuple[tuple[Any, float], ...] | None = None
        """Pointwise minimum of the decisions since its limit last changed: how far a small
        increase goes."""
        """When its stack-1 limit last changed (service clock [s]): small increases wait for
        ``SMALL_INCREASE_AFTER_S`` after it."""
        self._try_timeout: float | None = None
        self._retry: asyncio.Task[None] | None = None
        self._follow_n = 0
        self._follow_since = 0.0
        self.call_started = 0.0
        self._tx_moved = False
        """Its last limit push stopped because its transaction changed meanwhile (no refusal)."""
        """When its call in flight was sent (monotonic): the fan-out waits that long at most."""

    # ----------------------------------------------------------------- lifecycle hooks
    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def cancel(self) -> None:
        for task in list(self._tasks):
            task.cancel()


    def _clock_s(self) -> float:
        """The service's clock [s]: the policy timers run on it (``balancer demo`` accelerates it)."""
        return self.clock().timestamp()



class LimitPlan(PushState):
    """Decisions against what the charger holds (module docstring)."""

    @property
    def tx_profile_refused(self) -> bool:
        """True while the charger's transaction is the one whose TxProfile it rejected."""
        return self._tx_refused is not None and self._tx_refused == self._link_tx()

    def _link_tx(self) -> str | None:
        """The charger's transaction: what it told this server; before it told anything (after a
        restart of the balancer), the transaction the controller restored, which the newest
        decision carries. A 1.6 charger says nothing of a running transaction until its next
        meter values, and its limit must not wait for them."""
        tx = self.link.transaction_id
        if tx is None and not self.link.tx_known and self.desired is not None:
            return self.desired.transaction_id
        return tx

    def _separate_idle(self) -> bool:
        """True when the idle limit is a profile of its own (``IDLE_PROFILE_ID``): TxProfile
        strategy on a charger that takes TxProfiles. Else one stack-1 profile carries both."""
        return self.link.charger.profile_strategy == "TxProfile" and not self.tx_profile_refused

    def _allowed_a(self) -> float | None:
        """What the charger may draw now by the profiles it holds [A] (None: not known)."""
        if not self._separate_idle():
            return self.held_a
        tx = self._link_tx()
        if tx is not None and self.held_tx == tx:
            return self.held_a
        return self.idle_a  # no TxProfile (yet): the car draws by the idle default

    def _idle_zero_due(self, schedule: ChargerSchedule) -> bool:
        """True when the session's TxProfile is held and the idle default still has to go to 0 A
        (or follow a new horizon): ``schedule.idle_periods`` for a charger in a transaction."""
        tx = self._link_tx()
        want = schedule.idle_periods
        if not self._separate_idle() or tx is None or schedule.transaction_id != tx or not want:
            return False
        if self.held_tx != tx:
            return False
        if self._holds_idle(want):
            return False
        return self._idle_refused != (tx, tuple(want[1:]))  # a refused one is not sent again

    def _holds_idle(self, periods: tuple[tuple[Any, float], ...]) -> bool:
        """True when the idle default the charger holds is these periods, from their start on
        (its horizon may be a little behind theirs: ``steps.renew_tail``)."""
        if self.idle_a is None or not self.idle_periods:
            return False
        held = renew_tail(self.idle_periods, periods)
        return drop_a(held, periods) <= EPS_A and raise_a(held, periods) <= EPS_A

    def _holds(self, schedule: ChargerSchedule, tx: str | None) -> bool:
        """True when the stack-1 profile the charger holds is exactly this schedule."""
        return self.held_a is not None and self.held_tx == tx and abs(self.held_a - schedule.limit_a) < 1e-9 \
            and tuple(self.held_periods[1:]) == tuple(schedule.periods[1:])

    def _limit_target(self, schedule: ChargerSchedule) -> tuple[bool, str | None, Periods | None, bool] | None:
        """What a decision changes in the stack-1 profile that governs what the car may draw:
        (idle, tx, allowed, same). ``idle``: the idle default is that profile (TxProfile strategy,
        no transaction); ``allowed``: the periods the charger may draw by now (None: not known);
        ``same``: the new schedule replaces the profile it draws by (else the session's first
        TxProfile takes over from the idle default). None: nothing to send (a session just ended
        here and the controller has not seen it yet)."""
        tx = self._link_tx()
        new = schedule.periods
        if self._separate_idle():
            idle = renew_tail(self.idle_periods, new) if self.idle_a is not None and self.idle_periods else None
            if tx is None:
                return None if schedule.transaction_id is not None else (True, None, idle, True)
            if self.held_tx == tx and self.held_a is not None and self.held_periods:
                return False, tx, renew_tail(self.held_periods, new), True
            return False, tx, idle, False
        if self.held_a is None or not self.held_periods:
            return False, tx, None, False
        return False, tx, renew_tail(self.held_periods, new), self.held_tx == tx

    def given_periods(self) -> Periods | None:
        """What it was last given to draw by (kept across a reconnect, ``_forget_held``; after a
        restart its maximum, ``seed_allowed``): what the controller reserved for it meanwhile."""
        return self._allowed_log[-1][1] if self._allowed_log else None

    def _small_increase_due(self) -> bool:
        return self._clock_s() - self._limit_sent_at >= SMALL_INCREASE_AFTER_S

    def plan(self, schedule: ChargerSchedule) -> tuple[bool, bool]:
        """(decrease, increase): whether this decision lowers what the charger may draw now or in
        any slot ahead (sent in the fan-out's first phase, as min(held, new)), and whether it
        raises it anywhere (sent in the second phase, once every decrease is accepted).

        A decrease is one where what the charger holds exceeds the new schedule, now or in any
        slot ahead, and always goes out. An increase is a rise *now* (``increase_step``): by more
        than the deadband at once, within it at most every ``SMALL_INCREASE_AFTER_S``; a rise only
        in the slots ahead is none (a decrease that only undoes an unsent rise is none either:
        the charger never held it).
        A failsafe goes with the decreases when it is new (every charger holds one before its
        limit) or lower, with the increases when higher. The idle default at 0 A under a session's
        TxProfile goes in the second phase: it does not govern what the car draws then."""
        if not self.link.connected or not self.ready:
            return False, False
        decrease = self.failsafe_a is None or schedule.failsafe_a < self.failsafe_a - EPS_A
        increase = self.failsafe_a is not None and schedule.failsafe_a > self.failsafe_a + EPS_A
        target = self._limit_target(schedule)
        if target is not None:
            _idle, _tx, allowed, same = target
            if allowed is None:
                decrease = True  # what it holds is unknown: at most what it was last given, then the rest
                given = self.given_periods()
                increase = increase or (given is not None and raise_a(given, schedule.periods) > EPS_A)
            else:
                # A push still on its way (the last fan-out's increase) lands before this decision's
                # fan-out runs: lower than it, this decision is a decrease (else the others' increases
                # went out while it landed: 163.6 A held against 150 A in test_ocpp_fanout).
                held = allowed if self.on_its_way is None else \
                    pointwise_max(allowed, renew_tail(self.on_its_way, schedule.periods))
                drop, rise = drop_a(held, schedule.periods), raise_a(allowed, schedule.periods)
                decrease = drop > EPS_A or (not same and rise <= EPS_A)
                if rise > EPS_A and (not same or raise_now_a(allowed, schedule.periods)
                                     > self.link.server.config.ocpp.deadband_a):
                    increase = True
                elif rise > EPS_A and self._small_increase_due() and self._floor is not None \
                        and raise_now_a(allowed, pointwise_min(self._floor, schedule.periods)) > EPS_A:
                    increase = True  # a small one, of what every decision since the last change kept
        if self._idle_zero_due(schedule):
            increase = True
        return decrease, increase

    def increase_step(self, allowed: Periods, schedule: ChargerSchedule) -> ChargerSchedule | None:
        """What the second phase sends when the charger keeps its profile (``plan``): the rise now,
        with every slot ahead left where it was or lower (``steps.now_then_min``). Plans that move
        between equally good ones (10 A, 0 A, 10 A an hour ahead, in another order at every replan)
        then leave nothing to undo; a slot's rise goes out when that slot comes. A small rise (within
        ``deadband_a``) goes only as far as every decision since the last change went, once
        ``SMALL_INCREASE_AFTER_S`` have passed: limits jittering by tenths of an ampere settle at
        the bottom of their range. None: nothing rises now."""
        new = schedule.periods
        small = raise_now_a(allowed, new) <= self.link.server.config.ocpp.deadband_a
        step = now_then_min(allowed, pointwise_min(self._floor or new, new) if small else new)
        if raise_now_a(allowed, step) <= EPS_A or (small and not self._small_increase_due()):
            return None
        return dataclasses.replace(schedule, limit_a=step[0][1], periods=step)

    def offer(self, schedule: ChargerSchedule) -> str:
        """Take a new decision; says what there is to send: "decrease", "increase", "both" or
        "none" (see ``plan``)."""
        self.desired = schedule
        self.version += 1
        self._floor = tuple(schedule.periods) if self._floor is None else \
            pointwise_min(self._floor, schedule.periods)
        decrease, increase = self.plan(schedule)
        return {(True, True): "both", (True, False): "decrease", (False, True): "increase"}.get(
            (decrease, increase), "none")


    def _max_purpose(self) -> str:
        return self.link.dialect.station_max_purpose

    def _failsafe_purpose(self) -> str:
        """The failsafe's purpose (stack 0, EVSE 0). A charger draws the minimum of its station
        maximum and its Tx/TxDefault profile (PROTOCOLS.md B.3, B.4): with the limit in a
        stack-1 station maximum, a TxDefault failsafe would cap it at the failsafe. So there the
        failsafe is a station maximum too, which the stack-1 one overrides (higher stack wins
        within a purpose) and which applies alone once that one's schedule is gone."""
        return self._max_purpose() if self.link.charger.profile_strategy == "ChargePointMax" else "TxDefaultProfile"

    def _limit_profile(self, tx: str | None) -> tuple[str, int, str | None, int]:
        """(purpose, evse, transaction id, profile id) of the stack-1 profile carrying the limit."""
        charger = self.link.charger
        if charger.profile_strategy == "ChargePointMax":
            return self._max_purpose(), 0, None, DYNAMIC_PROFILE_ID
        if charger.profile_strategy == "TxProfile":
            if tx is not None and not self.tx_profile_refused:
                return "TxProfile", charger.evse_id, tx, DYNAMIC_PROFILE_ID
            # A charger that refuses TxProfile carries the limit in its idle default (same purpose,
            # stack level and EVSE: one profile, so the same id that replaces it everywhere).
            return "TxDefaultProfile", charger.evse_id, None, IDLE_PROFILE_ID
        return "TxDefaultProfile", charger.evse_id, None, DYNAMIC_PROFILE_ID

