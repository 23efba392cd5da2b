"""Getting a safe limit into one charger: capabilities, failsafe, profiles, retries, obedience.

One ``Pusher`` per charger, built in layers by job: ``push_plan`` (what it knows of the charger,
and what a decision changes), ``obedience`` (readings and read-backs, the flag), ``refusal``
(chargers that refuse or do not answer), ``capabilities``, and here the calls themselves and the
connection's life. The policy timers read ``clock`` (the service's; a test passes a fake one).
At most one call is in flight per charger; the newest decision wins (an older one still waiting
is dropped). ``plan`` compares a decision with what the charger holds, now and in every slot
ahead (``steps``): a decrease anywhere is pushed in the fan-out's first phase as min(held, new),
a rise now in its second (``fanout``) without the rises ahead (sent when their slot comes); a
rise now within the deadband at most every ``SMALL_INCREASE_AFTER_S``. The failsafe goes out right after the
capability read. Rejected, CALLERROR and timeouts are retried with exponential backoff; a charger
that rejects TxProfile gets the schedule as a TxDefaultProfile on its EVSE instead; one that
refuses its decrease altogether, or does not answer it (or the capability read), is flagged,
reserved and retried in the background (``refused``). Every push and its result is reported
(``ProfileResult``, and ``LimitConfirmed`` when accepted). After an accepted push the composite
schedule is read back, and every reading is compared with the limits the charger held: a charger
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
import dataclasses
import logging
import time
from datetime import datetime
from typing import Any

from adapters.ocpp.capability_read import read_capabilities
from adapters.ocpp.profiles import FAILSAFE_PROFILE_ID, IDLE_PROFILE_ID, charging_profile
from adapters.ocpp.refusal import RETRY_TRY_S, Refusals
from adapters.ocpp.steps import EPS_A, drop_a, pointwise_min, raise_a
from adapters.ocpp.trusted_call import call_trusted, set_profile_payload
from balancer.events import ChargerOnline, ChargerSchedule, LimitConfirmed, ProfileResult

__all__ = ["Pusher"]

log = logging.getLogger(__name__)

RETRIES = 3
BACKOFF_S = 0.5


class Pusher(Refusals):
    """Push manager of one charger (see the module docstring)."""

    # ----------------------------------------------------------------- lifecycle hooks
    def _forget_held(self) -> None:
        """Nothing is known about what the charger holds: the next decision re-pushes it all."""
        self.held_a = None
        self.held_periods = ()
        self.held_tx = None
        self.idle_a = None
        self.idle_periods = ()
        self.failsafe_a = None
        self.composite_a = None
        # ``_allowed_log`` stays: a charger holds what it was given until a new limit lands, across
        # a reconnect or a reboot too, so readings are still judged against what it was given.


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
        decision goes out through the fan-out (``OcppServer.apply``) like any other. After a
        restart a charger tells its running transaction late (its first meter values): when it is
        the one the restored decision named, what was pushed for it is held still."""
        if self.held_tx is not None and self.held_tx == self.link.transaction_id:
            return
        self.held_tx = None
        self.last_draw_a = None  # a reading from before the change says nothing of this session
        if self._separate_idle():
            # The TxProfile belongs to the transaction: at its start none is held yet, at its end
            # the charger drops it. What the charger may draw now is its idle default.
            self.held_a = None
            self.held_periods = ()

    async def _after_boot(self) -> None:
        """No profile goes out before this: a charger that accepts only W gets W profiles from
        the first one on. ``ChargerOnline`` then tells the controller the charger is under control
        (until then it is reserved like an offline charger); its next decision re-pushes."""
        answered = await self._read_capabilities()
        if not self.link.connected:
            return
        self.ready = True
        if not answered:
            # It does not answer calls: flagged and reserved before the controller counts it as
            # under control, so no decision raises others on a limit it will never get.
            self.refused("no answer to the capability read")
        else:
            self._spawn(self._early_failsafe())  # first in line for the charger's lock
        self.link.emit(ChargerOnline(self.link.charger_id, self.clock(), self.link.dialect.subprotocol))

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
        lower = self.failsafe_a is None or schedule.failsafe_a < self.failsafe_a - EPS_A
        if (lower or phase != 1) and (self.failsafe_a is None or abs(self.failsafe_a - schedule.failsafe_a) > EPS_A):
            await self._send_failsafe(schedule.failsafe_a, schedule.at, schedule.phases)
        target = self._limit_target(schedule)
        if target is None:
            return self.failsafe_a is not None  # see _limit_target: wait for the controller
        idle, tx, allowed, same = target
        send: ChargerSchedule | None = schedule
        given = self.given_periods() if allowed is None and phase == 1 else None
        if given is not None and raise_a(given, schedule.periods) > EPS_A:
            # Held unknown (a reconnect): the first phase goes no higher than what it was given,
            # which the controller reserved while it was away; the rest waits for the increases.
            step = pointwise_min(given, schedule.periods)
            send = dataclasses.replace(schedule, limit_a=step[0][1], periods=step)
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
            elif same:
                send = self.increase_step(allowed, schedule)
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

    async def _send_failsafe(self, value_a: float, at: datetime, phases: int = 3) -> bool:
        charger = self.link.charger
        volts = self.link.server.voltage.get(charger.id, 230.0)
        failsafe = ChargerSchedule(charger.id, at, value_a, ((at, value_a),), value_a, phases=phases)
        profile = charging_profile(failsafe, self.caps, purpose=self._failsafe_purpose(), stack_level=0,
                                   profile_id=FAILSAFE_PROFILE_ID, voltage_v=volts,
                                   integer_amps=charger.integer_amps, version=self.link.dialect)
        ok = await self._send(profile, 0, value_a, "failsafe")
        if ok:
            self.failsafe_a = value_a
        return ok

    async def _early_failsafe(self) -> None:
        """The failsafe right after the capability read, before the controller's first decision
        reaches the charger: a car starting a session meanwhile draws at most that (what the
        controller reserves for a charger it has no limit of), not the charger's maximum. One
        call, answered within ``RETRY_TRY_S``; the decision's push sends it again if it failed."""
        value = self.link.server.failsafe_a.get(self.link.charger_id)
        if value is None:
            return
        async with self.lock:
            if self.failsafe_a is not None or not self.ready or not self.link.connected:
                return
            self._try_timeout = RETRY_TRY_S
            try:
                await self._send_failsafe(value, self.clock())
            finally:
                self._try_timeout = None

    def start_push(self, schedule: ChargerSchedule, phase: int) -> asyncio.Task[bool]:
        """``push`` as a task of this charger's: it goes on (and is cancelled on a disconnect) when
        the fan-out stops waiting for it."""
        self.call_started = time.monotonic()
        task = asyncio.get_running_loop().create_task(self.push(schedule, phase))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

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
            ok = await self._send_limit(profile, evse, schedule, purpose, idle=profile_id == IDLE_PROFILE_ID)
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
            if abs((self.held_a if self.held_a is not None else -1.0) - schedule.limit_a) > EPS_A:
                self.meter_trigger.after_change()
            self.held_a = schedule.limit_a
            self.held_periods = tuple(schedule.periods)
            self.held_tx = tx
            self._note_allowed()
            self._limit_sent_at = self._clock_s()
            self._floor = None
            self.link.emit(LimitConfirmed(self.link.charger_id, self.clock(), schedule.limit_a,
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
        ok = await self._send_limit(profile, charger.evse_id, idle, "idle TxDefaultProfile", idle=True)
        if ok:
            self.idle_a = idle.limit_a
            self.idle_periods = idle.periods
            self._note_allowed()
            self._limit_sent_at = self._clock_s()
            self._floor = None
            self.link.emit(LimitConfirmed(self.link.charger_id, self.clock(), idle.limit_a, tuple(idle.periods),
                                          "idle TxDefaultProfile"))
        elif tx is not None:
            self._idle_refused = (tx, tuple(periods[1:]))
        return ok

    async def _send_limit(self, profile: dict[str, Any], evse: int, schedule: ChargerSchedule, purpose: str, *,
                          idle: bool = False) -> bool:
        """``_send`` of a stack-1 schedule, ``on_its_way`` until its answer (``_note_pending``)."""
        self._note_pending(tuple(schedule.periods))
        ok = False
        try:
            ok = await self._send(profile, evse, schedule.limit_a, purpose, idle=idle)
            return ok
        finally:
            self.on_its_way = None
            if not ok:
                self._note_allowed()  # it did not land: judged by what it holds again

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
            record = {"at": self.clock().isoformat(), "purpose": purpose, "limit_a": limit_a,
                      "result": result, "detail": detail, "attempt": attempt + 1}
            self.history.append(record)
            self.last_push = record
            self.link.emit(ProfileResult(self.link.charger_id, self.clock(), limit_a, result,
                                         f"{purpose}: {detail}" if detail else purpose, idle=idle))
            if result == "Accepted":
                self._answered_late()
                return True
            self.link.server.counters["push_failures"] += 1
            if result in ("Rejected", "NotSupported", "Offline"):
                return False
            await asyncio.sleep(BACKOFF_S * 2**attempt)
        return False

    async def _read_capabilities(self) -> bool:
        self.caps, answered = await read_capabilities(self.link, self._call)
        return answered

    def status(self) -> dict[str, Any]:
        return {"limit_a": self.held_a, "obeys": self.obeys, "capabilities": self.caps.as_dict(),
                "last_push": self.last_push, "failsafe_a": self.failsafe_a, "composite_a": self.composite_a,
                "idle_limit_a": self.idle_a,
                "refuses_profiles": self.refusing and self.refusal == "rejected",
                "no_answer": self.refusing and self.refusal == "no_answer"}


