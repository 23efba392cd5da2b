"""Whether a charger follows its limits: its readings, its composite schedule, its flag.

A reading above every limit the charger held within ``OBEY_GRACE_S`` flags it at once (no car
coming down from a higher limit explains it), and the controller reserves its draw before anyone
else is raised; trust comes back only from readings that follow the limit for ``TRUST_AFTER_S``.
After an accepted push the composite schedule is read back: a charger holding more than it
accepted is flagged too. The timers read the pusher's clock (``PushState.clock``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime, timedelta

from adapters.ocpp.push_plan import LimitPlan
from adapters.ocpp.steps import Periods, peak_between, pointwise_max, value_at
from adapters.ocpp.trusted_call import call_trusted
from balancer.charger_state import IDLE_DRAW_A
from balancer.events import MeterSample, ObedienceChanged

__all__ = ["OBEY_GRACE_S", "READ_BACK_DELAY_S", "TRUST_AFTER_S", "Obedience"]

log = logging.getLogger("adapters.ocpp.pusher")

OBEY_TOLERANCE_A = 1.0
OBEY_GRACE_S = 10.0
"""How long a car may take to come down to a lower limit [s] (IEC 61851-1 gives the car 5 s after
the charger changes its signal; the rest is the charger's own delay): a reading above every limit
the charger held within this long flags it at once (its draw is reserved before others are raised)."""
TRUST_MARGIN_A = 0.5
"""A flagged charger's reading counts as following its limit only this close to it [A]: trusted
again by the wider tolerance, a car drawing a little over its limit went uncounted."""
TRUST_SAMPLES = 5
TRUST_AFTER_S = 60.0
"""A charger flagged as not obeying is trusted again only after its measured current has followed
its limit in this many samples in a row, spanning at least this long (issue 19 item 7)."""
READ_BACK_DELAY_S = 2.0
READ_BACK_MAX_WAIT_S = 30.0


class Obedience(LimitPlan):
    """Readings and read-backs against what the charger holds (module docstring)."""

    verified = False
    """A reading has shown it keeps a limit it was sent (``ChargerState.verified``; after a restart
    the controller's persisted value): told to the controller once."""

    def _allowed_periods(self) -> Periods | None:
        """The schedule of the profile the car draws by now (None: not known).

        With an idle default of its own, the TxProfile governs while its transaction is the
        charger's; when the transaction we know differs from the one the TxProfile was sent for
        (a 1.6 charger's transaction told late, a start or stop seen mid-push), the charger may
        still draw by that TxProfile: a reading is judged against the higher of the two (taking
        the idle default alone flagged healthy chargers "over their 0 A limit")."""
        held = self.held_periods if self.held_a is not None and self.held_periods else None
        if self._separate_idle():
            tx = self._link_tx()
            if tx is None or self.held_tx != tx:
                idle = self.idle_periods if self.idle_a is not None and self.idle_periods else None
                if idle is None or held is None or self.held_tx is None:
                    return idle
                return pointwise_max(idle, held)
        return held

    def _note_allowed(self) -> None:
        periods = self._allowed_periods()
        if periods is not None:
            self._allowed_log.append((self.clock(), periods))

    def _note_pending(self, periods: Periods) -> None:
        """A limit on its way (``on_its_way``): a charger applies a profile as it gets it, and its
        next reading can come before its answer (a charger answering in 0.3 s was flagged for
        drawing the 21.5 A it had just been raised to, over its 6 A before). Until the answer a
        reading is judged against this limit too: the controller has given it that much. Not
        judged before: still not. One that does not land is taken back (``Pusher._send_limit``)."""
        self.on_its_way = periods
        held = self._allowed_periods()
        if held is not None:
            self._allowed_log.append((self.clock(), pointwise_max(held, periods)))

    def seed_allowed(self) -> None:
        """After a restart: until a limit of this process lands, and for ``OBEY_GRACE_S`` after,
        a reading is judged against the charger's maximum. The persisted state lags what the
        charger holds: the previous process may have pushed a higher limit after its last write
        (a kill -9 10 ms after a push of 6.2 A over a persisted 0 A flagged healthy chargers for
        a minute). A charger that was flagged is restored flagged (``restore_flag``), and a session
        on one never seen keeping a limit is reserved at its maximum by the controller."""
        self._allowed_log.append((self.clock(), ((self.clock(), self.link.charger.max_current_a),)))

    def peak_allowed_a(self, now: datetime) -> float | None:
        """The highest limit its profiles let it draw at any moment of the last ``OBEY_GRACE_S``
        (None: none known yet): a car above it follows none of them."""
        since = now - timedelta(seconds=OBEY_GRACE_S)
        log_ = list(self._allowed_log)
        peak: float | None = None
        for k, (start, periods) in enumerate(log_):
            end = log_[k + 1][0] if k + 1 < len(log_) else now
            if end < since:
                continue
            value = peak_between(periods, max(start, since), max(end, since))
            peak = value if peak is None else max(peak, value)
        return peak


    def restore_flag(self, draw_a: float | None) -> None:
        """After a restart: the controller's persisted state says it did not obey (refused its
        limits, or drew more): flagged from the start, so no reading or answer has to find it
        again; its reserve is the controller's (the draw it persisted)."""
        self.obeys = False
        self._flagged_by = "restored"
        self.reserved_a = self.link.charger.max_current_a if draw_a is None else draw_a


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
        ahead = value_at(self.held_periods, self.clock()) if self.held_periods else 0.0
        held = max(limit_a, self.held_a or 0.0, ahead, 0.0)  # a V2X discharge (< 0) holds limit 0
        if first > held + 0.1:
            # Only ever flags: trust comes back from what it draws (``observe``), not from a schedule.
            self._follow_n = 0
            self._set_obeys(False, first, f"composite schedule {first:.1f} A vs {limit_a:.1f} A", by="composite")

    def observe(self, sample: MeterSample) -> None:
        """Compare measured current with what the charger's profiles let it draw.

        Flagged at the first reading above every limit it held within ``OBEY_GRACE_S`` (no car
        coming down from a higher limit explains it): its draw is reserved before anyone else is
        raised. Trusted again only after ``TRUST_SAMPLES`` readings in a row within its limit
        spanning ``TRUST_AFTER_S`` (a charger that ignores its limit may draw less for a while: a
        car ramping, a full battery)."""
        drawn = max((c for c in sample.current_a if c is not None), default=None)
        if drawn is None:
            return
        self.last_draw_a = drawn
        now = self.clock()
        peak = self.peak_allowed_a(now)
        if peak is None:
            return
        peak = max(peak, 0.0)  # told to discharge (V2X): drawing nothing is obeying
        if drawn > peak + max(OBEY_TOLERANCE_A, 0.1 * peak):
            self._follow_n = 0
            self._set_obeys(False, drawn, f"draws {drawn:.1f} A over its {peak:.1f} A limit", by="draw")
            return
        periods = self._allowed_periods()
        allowed = max(value_at(periods, now), 0.0) if periods else peak
        if drawn > allowed + (TRUST_MARGIN_A if not self.obeys else max(OBEY_TOLERANCE_A, 0.1 * allowed)):
            # Still coming down to a lower limit, or (flagged) not close enough to it: a flagged
            # charger drawing 32 A under a 30 A limit is within the tolerance, not following it.
            self._follow_n = 0
            return
        if self.obeys and not self.verified and self._link_tx() is not None and drawn > IDLE_DRAW_A \
                and allowed < self.link.charger.max_current_a - OBEY_TOLERANCE_A:
            self._verify(drawn, allowed)
        if self._follow_n == 0:
            self._follow_since = now.timestamp()
        self._follow_n += 1
        if not self.obeys and not self.refusing and self._follow_n >= TRUST_SAMPLES \
                and now.timestamp() - self._follow_since >= TRUST_AFTER_S:
            self._set_obeys(True, drawn, f"has followed its limit for {now.timestamp() - self._follow_since:.0f} s",
                            verified=True)

    def _verify(self, drawn: float, allowed: float) -> None:
        """Its car draws and stays within a limit below the charger's maximum: it keeps the limits
        it is sent, so its sessions need no longer be reserved at its maximum (``verified``)."""
        self.verified = True
        detail = f"keeps its limit: draws {drawn:.1f} A under {allowed:.1f} A"
        log.info("charger %s %s", self.link.charger_id, detail)
        self.link.emit(ObedienceChanged(self.link.charger_id, self.clock(), True, drawn, detail, verified=True))

    def _set_obeys(self, obeys: bool, draw_a: float, detail: str, *, by: str | None = None,
                   verified: bool = False) -> None:
        """``verified``: trusted again from its readings, which shows it keeps its limits."""
        if obeys == self.obeys:
            return
        self.obeys = obeys
        self._flagged_by = None if obeys else by
        self.verified = self.verified or verified
        log.warning("charger %s %s: %s", self.link.charger_id, "obeys" if obeys else "does NOT obey", detail)
        self.link.emit(ObedienceChanged(self.link.charger_id, self.clock(), obeys, draw_a, detail, verified=verified))

