"""Getting a safe limit into one charger: capabilities, failsafe, profiles, retries, obedience.

One ``Pusher`` per charger. At most one call is in flight per charger; the newest decision wins
(an older one still waiting is dropped). ``plan`` compares a decision with what the charger holds,
now and in every slot ahead (``steps``): a decrease anywhere is pushed in the fan-out's first
phase as min(held, new), an increase in its second (``fanout``); an increase within the deadband
at most every ``SMALL_INCREASE_AFTER_S``. Rejected, CALLERROR and timeouts are retried with
exponential backoff; a charger that rejects TxProfile gets the schedule as a TxDefaultProfile on
its EVSE instead; one that refuses its decrease altogether, or does not answer it, is flagged,
reserved at its real draw and retried in the background (``refused``). Every push and its result
is reported (``ProfileResult``, and ``LimitConfirmed`` when accepted). After an accepted push the
composite schedule is read back, and measured currents are compared with the limit: a charger
that does not follow is flagged (``ObedienceChanged``) and trusted again only after following it
for a while (``observe``).

Idle chargers (no transaction) hold the controller's *idle limit* as a stack-1 default, above the
stack-0 failsafe: what a car plugging in may draw until its TxProfile arrives. With
``profile_strategy`` TxDefaultProfile or ChargePointMax the one stack-1 profile (TxDefault or Max,
``DYNAMIC_PROFILE_ID``) carries the idle limit between sessions and the session's limit during
one, so what it holds is always what the controller counts for it. With TxProfile the idle limit
is a TxDefault of its own (``IDLE_PROFILE_ID``), which a session's TxProfile does not replace; it
would linger under the TxProfile and apply again, stale, to the next car once the session ends.
So once the session's TxProfile is held, the idle default is pushed down to 0 A until the horizon
(then the failsafe, like every schedule): a car arriving after the session draws nothing until
the balancer gives it a limit, and nothing beyond what was counted if the balancer is gone. The
idle default is only changed when the controller and the charger agree on the transaction (both
none, or the same one); in between (a session just started or ended) it stays as it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from adapters.ocpp.profiles import (
    DYNAMIC_PROFILE_ID,
    FAILSAFE_PROFILE_ID,
    IDLE_PROFILE_ID,
    Capabilities,
    charging_profile,
)
from adapters.ocpp.steps import EPS_A, Periods, drop_a, pointwise_min, raise_a, value_at
from adapters.ocpp.trusted_call import call_trusted, set_profile_payload
from balancer.events import (
    ChargerOnline,
    ChargerSchedule,
    LimitConfirmed,
    MeterSample,
    ObedienceChanged,
    ProfileResult,
)

if TYPE_CHECKING:
    from adapters.ocpp.link import ChargerLink

__all__ = ["Pusher"]

log = logging.getLogger(__name__)

RETRIES = 3
BACKOFF_S = 0.5
OBEY_TOLERANCE_A = 1.0
OBEY_SAMPLES = 3
OBEY_GRACE_S = 20.0
TRUST_SAMPLES = 5
TRUST_AFTER_S = 60.0
"""A charger flagged as not obeying is trusted again only after its measured current has followed
its limit in this many samples in a row, spanning at least this long (issue 19 item 7)."""
SMALL_INCREASE_AFTER_S = 120.0
"""An increase within ``deadband_a`` of what the charger holds (now and in every slot ahead) is
sent at most this often: fewer pushes against a little current left unused meanwhile."""
RETRY_TRY_S = 4.0
RETRY_EVERY_S = 5.0
"""A charger that refuses profiles (or is silent) is retried in the background: one call per
try, answered within ``RETRY_TRY_S``, every ``RETRY_EVERY_S``."""
READ_BACK_DELAY_S = 2.0
READ_BACK_MAX_WAIT_S = 30.0


class Pusher:
    """Push manager of one charger (see the module docstring)."""

    def __init__(self, link: ChargerLink) -> None:
        self.link = link
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
        self.lock = asyncio.Lock()
        self.obeys = True
        self.over_samples = 0
        self.last_change = -math.inf
        """When its limit last changed (service clock [s]): readings wait ``OBEY_GRACE_S`` after it."""
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
        self._draw_unknown = False
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

    def _forget_held(self) -> None:
        """Nothing is known about what the charger holds: the next decision re-pushes it all."""
        self.held_a = None
        self.held_periods = ()
        self.held_tx = None
        self.idle_a = None
        self.idle_periods = ()
        self.failsafe_a = None
        self.composite_a = None

    def on_connect(self) -> None:
        # After a reconnect nothing is known about what the charger holds: the first decision
        # after the capabilities are read re-pushes the failsafe and the limit (as decreases).
        # A TxProfile refusal is forgotten too: the charger may have been updated meanwhile.
        self._forget_held()
        self.ready = False
        self.registered = False
        self._tx_refused = None

    def on_disconnect(self) -> None:
        self.cancel()
        self.ready = False

    def on_boot(self) -> None:
        """The BootNotification is answered: read the capabilities, then hand it to the controller.

        A BootNotification on a connection that was already running is a reboot: the charger may
        have dropped its TxProfile, so what it holds is re-read as after a reconnect."""
        if self.registered:
            self.cancel()
            self._forget_held()
            self.ready = False
        self.registered = True
        self._spawn(self._after_boot())

    def on_heard(self) -> None:
        """The charger sent a request other than BootNotification before booting on this
        connection: it reconnected without rebooting and is registered already."""
        if not self.registered:
            self.registered = True
            self._spawn(self._after_boot())

    def on_session_changed(self) -> None:
        """A transaction started or ended. The event itself wakes the controller, whose next
        decision goes out through the fan-out (``OcppServer.apply``) like any other."""
        self.held_tx = None
        if self._separate_idle():
            # The TxProfile belongs to the transaction: at its start none is held yet, at its end
            # the charger drops it. What the charger may draw now is its idle default.
            self.held_a = None
            self.held_periods = ()

    async def _after_boot(self) -> None:
        """No profile goes out before this: a charger that accepts only W gets W profiles from
        the first one on. ``ChargerOnline`` then tells the controller the charger is under control
        (until then it is reserved like an offline charger); its next decision re-pushes."""
        await self._read_capabilities()
        if not self.link.connected:
            return
        self.ready = True
        self.link.emit(ChargerOnline(self.link.charger_id, self.link.now(), self.link.dialect.subprotocol))

    # ----------------------------------------------------------------- decisions in
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
        """True when the idle default the charger holds is exactly these periods."""
        return self.idle_a is not None and abs(self.idle_a - periods[0][1]) < 1e-9 \
            and tuple(periods[1:]) == tuple(self.idle_periods[1:])

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
        if self._separate_idle():
            idle = self.idle_periods if self.idle_a is not None and self.idle_periods else None
            if tx is None:
                return None if schedule.transaction_id is not None else (True, None, idle, True)
            if self.held_tx == tx and self.held_a is not None and self.held_periods:
                return False, tx, self.held_periods, True
            return False, tx, idle, False
        if self.held_a is None or not self.held_periods:
            return False, tx, None, False
        return False, tx, self.held_periods, self.held_tx == tx

    def _clock_s(self) -> float:
        """The service's clock [s]: the policy timers run on it (``balancer demo`` accelerates it)."""
        return self.link.now().timestamp()

    def _small_increase_due(self) -> bool:
        return self._clock_s() - self._limit_sent_at >= SMALL_INCREASE_AFTER_S

    def plan(self, schedule: ChargerSchedule) -> tuple[bool, bool]:
        """(decrease, increase): whether this decision lowers what the charger may draw now or in
        any slot ahead (sent in the fan-out's first phase, as min(held, new)), and whether it
        raises it anywhere (sent in the second phase, once every decrease is accepted).

        The deadband is the distance from what the charger holds, in every slot: a raise within
        it is sent at most every ``SMALL_INCREASE_AFTER_S``, a decrease always (a decrease that
        only undoes an unsent small increase is none: the charger never held that increase).
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
                decrease = True
            else:
                drop, rise = drop_a(allowed, schedule.periods), raise_a(allowed, schedule.periods)
                decrease = drop > EPS_A or (not same and rise <= EPS_A)
                if rise > EPS_A and (not same or rise > self.link.server.config.ocpp.deadband_a):
                    increase = True
                elif rise > EPS_A and self._small_increase_due() and self._floor is not None \
                        and raise_a(allowed, pointwise_min(self._floor, schedule.periods)) > EPS_A:
                    increase = True  # a small one, of what every decision since the last change kept
        if self._idle_zero_due(schedule):
            increase = True
        return decrease, increase

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

    # ----------------------------------------------------------------- pushing
    def _connected_cp(self) -> Any:
        """The charger's ``ocpp`` object, or ConnectionError when it is not connected."""
        cp = self.link.cp
        if cp is None or not self.link.connected:
            raise ConnectionError("charger not connected")
        return cp

    async def _call(self, payload: Any) -> Any:
        return await self._connected_cp().call(payload, suppress=False)

    async def _set_profile(self, profile: dict[str, Any], evse: int) -> str:
        """SetChargingProfile with a profile we built ourselves (profiles.py): it skips the ocpp
        package's schema check and serialising (``trusted_call``), most of the CPU of a 1,000-charger
        fan-out. The simulator, which validates everything it receives, tests these profiles."""
        payload = set_profile_payload(self.link.dialect, evse, profile)
        response = await call_trusted(self._connected_cp(), "SetChargingProfile", payload, timeout=self._try_timeout)
        return str(response.get("status", "Error"))

    async def push(self, schedule: ChargerSchedule | None = None, phase: int = 0, *,
                   background: bool = False) -> bool:
        """Send a decision (the newest when None); True when the charger holds what this phase
        sends (or nothing needed sending).

        ``phase`` 1: only what lowers the charger's limit, now or ahead: min(held, new) of the
        profile it draws by. ``phase`` 2: the decision itself, failsafe and idle default included;
        skipped when a newer decision came meanwhile (its own fan-out sends it, decreases first).
        ``phase`` 0: the decision at once (the background retries of a refusing charger).
        ``background``: one call, answered within ``RETRY_TRY_S``."""
        async with self.lock:
            schedule = schedule or self.desired
            if phase == 2 and schedule is not self.desired:
                return True
            if schedule is None or not self.link.connected or not self.ready:
                return False
            self._try_timeout = RETRY_TRY_S if background else None
            self._tx_moved = False
            try:
                return await self._push(schedule, phase)
            finally:
                self._try_timeout = None

    async def _push(self, schedule: ChargerSchedule, phase: int) -> bool:
        charger = self.link.charger
        lower = self.failsafe_a is None or schedule.failsafe_a < self.failsafe_a - EPS_A
        if (lower or phase != 1) and (self.failsafe_a is None or abs(self.failsafe_a - schedule.failsafe_a) > EPS_A):
            volts = self.link.server.voltage.get(charger.id, 230.0)
            failsafe = ChargerSchedule(charger.id, schedule.at, schedule.failsafe_a,
                                       ((schedule.at, schedule.failsafe_a),), schedule.failsafe_a,
                                       phases=schedule.phases)
            profile = charging_profile(failsafe, self.caps, purpose=self._failsafe_purpose(), stack_level=0,
                                       profile_id=FAILSAFE_PROFILE_ID, voltage_v=volts,
                                       integer_amps=charger.integer_amps, version=self.link.dialect)
            if await self._send(profile, 0, schedule.failsafe_a, "failsafe"):
                self.failsafe_a = schedule.failsafe_a
        target = self._limit_target(schedule)
        if target is None:
            return self.failsafe_a is not None  # see _limit_target: wait for the controller
        idle, tx, allowed, same = target
        send: ChargerSchedule | None = schedule
        if allowed is not None and phase in (1, 2):
            rise, drop = raise_a(allowed, schedule.periods), drop_a(allowed, schedule.periods)
            if phase == 1:
                if drop <= EPS_A and (same or rise > EPS_A):
                    send = None  # nothing to lower: whatever rises waits for the second phase
                elif rise > EPS_A:
                    step = pointwise_min(allowed, schedule.periods)
                    send = dataclasses.replace(schedule, limit_a=step[0][1], periods=step)
            elif same and rise <= EPS_A:
                send = None if drop <= EPS_A else schedule
            elif same and rise <= self.link.server.config.ocpp.deadband_a:
                # A small increase: only as far as every decision since the last change went
                # (limits that jitter by tenths of an ampere settle instead of following each one).
                low = pointwise_min(self._floor or schedule.periods, schedule.periods)
                send = dataclasses.replace(schedule, limit_a=low[0][1], periods=low) \
                    if self._small_increase_due() and raise_a(allowed, low) > EPS_A else None
        if send is None:
            if phase != 1 and not idle and self._idle_zero_due(schedule):
                await self._push_idle(schedule, schedule.idle_periods)
            return True
        if idle:
            return await self._push_idle(send, send.periods)
        ok = True
        if not self._holds(send, tx):
            ok = await self._push_limit(send, tx)
            if not ok:
                return False
        if phase != 1 and self._idle_zero_due(schedule):
            # Whether it lands does not change what the car may draw now (its TxProfile).
            await self._push_idle(schedule, schedule.idle_periods)
        return ok

    def start_push(self, schedule: ChargerSchedule, phase: int) -> asyncio.Task[bool]:
        """``push`` as a task of this charger's: it goes on (and is cancelled on a disconnect) when
        the fan-out stops waiting for it."""
        self.call_started = time.monotonic()
        task = asyncio.get_running_loop().create_task(self.push(schedule, phase))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ----------------------------------------------------------------- refusing chargers
    def refused(self, why: str) -> None:
        """Its decrease in a fan-out was refused or not answered in time (``fanout``): reserve
        its real draw (flag it as not obeying; its measured current, or its maximum while none is
        known), retry it in the background, and let no fan-out wait for it again until it accepts.
        A charger that went offline meanwhile is the offline reserve's business instead."""
        moved, self._tx_moved = self._tx_moved, False
        if moved or not self.link.connected or (self.last_push or {}).get("result") == "Offline":
            return
        self.refusing = True
        self._follow_n = 0
        self._draw_unknown = self.last_draw_a is None
        draw = self.link.charger.max_current_a if self.last_draw_a is None else self.last_draw_a
        self.reserved_a = draw
        detail = f"refuses its limits ({why}): its draw of {draw:.1f} A is reserved"
        if self.obeys:
            self._set_obeys(False, draw, detail)
        else:  # already flagged: say what it draws now
            self.link.emit(ObedienceChanged(self.link.charger_id, self.link.now(), False, draw, detail))
        self.retry_in_background()

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
                    log.info("charger %s accepts limits again", self.link.charger_id)
                    return
            await asyncio.sleep(RETRY_EVERY_S)

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

    async def _push_limit(self, schedule: ChargerSchedule, tx: str | None) -> bool:
        charger = self.link.charger
        volts = self.link.server.voltage.get(charger.id, 230.0)
        while True:
            purpose, evse, tx_arg, profile_id = self._limit_profile(tx)
            profile = charging_profile(schedule, self.caps, purpose=purpose, stack_level=1,
                                       profile_id=profile_id, voltage_v=volts,
                                       integer_amps=charger.integer_amps, version=self.link.dialect,
                                       transaction_id=tx_arg)
            # A fallback replaces the idle default (``IDLE_PROFILE_ID``): reported as such.
            ok = await self._send(profile, evse, schedule.limit_a, purpose, idle=profile_id == IDLE_PROFILE_ID)
            if ok or purpose != "TxProfile" or (self.last_push or {}).get("result") != "Rejected":
                break
            # Some chargers refuse TxProfile: carry this transaction's schedule as a
            # TxDefaultProfile instead (``_limit_profile`` picks it once this is set, so the loop
            # runs at most twice). Only a Rejected answer says so, never a timeout or a CALLERROR;
            # the next transaction, or a reconnect, tries the TxProfile again.
            self._tx_refused = tx
            if not self.tx_profile_refused:
                # The charger's transaction changed while the call was out (it ended, or another
                # began): ``_limit_profile`` would pick the TxProfile again, and a charger without
                # that transaction rejects it again, round after round. The next decision brings
                # the profile for the transaction it has now.
                self._tx_moved = True
                break
        if ok and profile_id == IDLE_PROFILE_ID:
            # The fallback replaced the idle default: it holds this limit until the next push.
            self.idle_a = schedule.limit_a
            self.idle_periods = tuple(schedule.periods)
        if ok:
            self.held_a = schedule.limit_a
            self.held_periods = tuple(schedule.periods)
            self.held_tx = tx
            self.last_change = self._clock_s()
            self.over_samples = 0
            self._limit_sent_at = self._clock_s()
            self._floor = None
            self.link.emit(LimitConfirmed(self.link.charger_id, self.link.now(), schedule.limit_a,
                                          tuple(schedule.periods), purpose))
            self._spawn(self._read_back(schedule.limit_a, evse if evse else charger.evse_id))
        return ok

    async def _push_idle(self, schedule: ChargerSchedule, periods: tuple[tuple[Any, float], ...]) -> bool:
        """The idle default (TxProfile strategy): TxDefaultProfile, stack 1, ``IDLE_PROFILE_ID``."""
        charger = self.link.charger
        if self._holds_idle(periods):
            return True
        idle = ChargerSchedule(charger.id, schedule.at, periods[0][1], tuple(periods), schedule.failsafe_a,
                               phases=schedule.phases)
        volts = self.link.server.voltage.get(charger.id, 230.0)
        profile = charging_profile(idle, self.caps, purpose="TxDefaultProfile", stack_level=1,
                                   profile_id=IDLE_PROFILE_ID, voltage_v=volts,
                                   integer_amps=charger.integer_amps, version=self.link.dialect)
        tx = self._link_tx()
        ok = await self._send(profile, charger.evse_id, idle.limit_a, "idle TxDefaultProfile", idle=True)
        if ok:
            self.idle_a = idle.limit_a
            self.idle_periods = idle.periods
            self._limit_sent_at = self._clock_s()
            self._floor = None
            self.link.emit(LimitConfirmed(self.link.charger_id, self.link.now(), idle.limit_a, tuple(idle.periods),
                                          "idle TxDefaultProfile"))
        elif tx is not None:
            self._idle_refused = (tx, tuple(periods[1:]))
        return ok

    async def _send(self, profile: dict[str, Any], evse: int, limit_a: float, purpose: str, *,
                    idle: bool = False) -> bool:
        detail = ""
        for attempt in range(1 if self._try_timeout is not None else RETRIES):
            result = "Error"
            self.call_started = time.monotonic()
            try:
                result = await self._set_profile(profile, evse)
            except TimeoutError:
                result, detail = "Timeout", "no answer in time"
            except ConnectionError as exc:
                result, detail = "Offline", str(exc)
            except Exception as exc:  # CALLERROR from the charger arrives as an OCPPError
                result, detail = "CallError", f"{type(exc).__name__}: {exc}"
            self.link.server.counters["pushes"] += 1
            record = {"at": self.link.now().isoformat(), "purpose": purpose, "limit_a": limit_a,
                      "result": result, "detail": detail, "attempt": attempt + 1}
            self.history.append(record)
            self.last_push = record
            self.link.emit(ProfileResult(self.link.charger_id, self.link.now(), limit_a, result,
                                         f"{purpose}: {detail}" if detail else purpose, idle=idle))
            if result == "Accepted":
                return True
            self.link.server.counters["push_failures"] += 1
            if result in ("Rejected", "NotSupported", "Offline"):
                return False
            await asyncio.sleep(BACKOFF_S * 2**attempt)
        return False

    # ----------------------------------------------------------------- capabilities
    async def _read_capabilities(self) -> None:
        caps = Capabilities()
        try:
            caps = await self.link.dialect.read_capabilities(self._call)
        except Exception as exc:
            log.info("charger %s: capabilities not read (%r); safe defaults", self.link.charger_id, exc)
        self.caps = caps

    # ----------------------------------------------------------------- obedience
    async def _read_back(self, limit_a: float, evse: int) -> None:
        """Compare the charger's composite schedule with what it accepted.

        Deferred a little, then taken a few at a time across the server, each only while no
        fan-out of new limits is under way: a charger has one call in flight at a time, so a
        read-back still waiting for its answer would hold up that charger's next limit, and a
        thousand at once would take the CPU the new limits need. The call skips the ocpp package's
        schema check (``trusted_call``); the answer is checked here for what is used of it, and
        anything unreadable is logged and ignored.
        """
        server = self.link.server
        await asyncio.sleep(READ_BACK_DELAY_S)
        async with server.read_back_slots:
            with contextlib.suppress(TimeoutError):  # a charger stuck in retries must not hold it forever
                await asyncio.wait_for(server.quiet.wait(), READ_BACK_MAX_WAIT_S)
            cp = self.link.cp
            if cp is None or not self.link.connected:
                return
            try:
                dialect = self.link.dialect
                response = await call_trusted(cp, "GetCompositeSchedule", dialect.composite_request(evse, 900))
                schedule = response.get(dialect.composite_answer_key)
                if response.get("status") != "Accepted" or not isinstance(schedule, dict):
                    return
                periods = schedule.get("charging_schedule_period")
                if not isinstance(periods, list) or not periods or not isinstance(periods[0], dict):
                    return
                first = float(periods[0]["limit"])
                if schedule.get("charging_rate_unit") == "W":
                    volts = server.voltage.get(self.link.charger_id, 230.0)
                    first = first / (volts * int(periods[0].get("number_phases") or 3))
            except Exception as exc:
                log.debug("charger %s: composite schedule not read: %r", self.link.charger_id, exc)
                return
        self.composite_a = first
        # A newer push may have raised the limit meanwhile: compare with the higher of the two.
        # So may the schedule have moved on to a later, higher period since (the read-back waits).
        ahead = value_at(self.held_periods, self.link.now()) if self.held_periods else 0.0
        held = max(limit_a, self.held_a or 0.0, ahead, 0.0)  # a V2X discharge (< 0) holds limit 0
        if first > held + 0.1:
            # Only ever flags: trust comes back from what it draws (``observe``), not from a schedule.
            self._follow_n = 0
            self._set_obeys(False, first, f"composite schedule {first:.1f} A vs {limit_a:.1f} A")

    def observe(self, sample: MeterSample) -> None:
        """Compare measured current with the limit the charger holds.

        Flagged after ``OBEY_SAMPLES`` samples in a row over it; trusted again only after
        ``TRUST_SAMPLES`` samples in a row within it spanning ``TRUST_AFTER_S`` (a charger that
        ignores its limit may draw less for a while: a car ramping, a full battery)."""
        drawn = max((c for c in sample.current_a if c is not None), default=None)
        if drawn is None:
            return
        self.last_draw_a = drawn
        if self.refusing and self._draw_unknown:
            # Reserved at its maximum until a reading came: now at what it really draws.
            self._draw_unknown = False
            self.reserved_a = drawn
            self.link.emit(ObedienceChanged(self.link.charger_id, self.link.now(), False, drawn,
                                            f"refuses its limits: its draw of {drawn:.1f} A is reserved"))
        if self.held_a is None or self._clock_s() - self.last_change < OBEY_GRACE_S:
            return
        now = self._clock_s()
        held = max(self.held_a, 0.0)  # told to discharge (V2X): drawing nothing is obeying
        if drawn > held + max(OBEY_TOLERANCE_A, 0.1 * held):
            self._follow_n = 0
            self.over_samples += 1
            if self.over_samples >= OBEY_SAMPLES:
                self._set_obeys(False, drawn, f"draws {drawn:.1f} A over its {self.held_a:.1f} A limit")
        else:
            self.over_samples = 0
            if self._follow_n == 0:
                self._follow_since = now
            self._follow_n += 1
            if not self.obeys and not self.refusing and self._follow_n >= TRUST_SAMPLES \
                    and now - self._follow_since >= TRUST_AFTER_S:
                self._set_obeys(True, drawn, f"has followed its limit for {now - self._follow_since:.0f} s")

    def _set_obeys(self, obeys: bool, draw_a: float, detail: str) -> None:
        if obeys == self.obeys:
            return
        self.obeys = obeys
        log.warning("charger %s %s: %s", self.link.charger_id, "obeys" if obeys else "does NOT obey", detail)
        self.link.emit(ObedienceChanged(self.link.charger_id, self.link.now(), obeys, draw_a, detail))

    def status(self) -> dict[str, Any]:
        return {"limit_a": self.held_a, "obeys": self.obeys, "capabilities": self.caps.as_dict(),
                "last_push": self.last_push, "failsafe_a": self.failsafe_a, "composite_a": self.composite_a,
                "idle_limit_a": self.idle_a,
                "refuses_profiles": self.refusing}
