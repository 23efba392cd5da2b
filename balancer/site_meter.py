"""The site meter: non-EV load at the grid connection and what it leaves for the chargers (DESIGN 3.8).

Pure: readings and the clock come in as arguments. The meter measures the *net* current at the
grid connection per grid phase, chargers included (import positive, export negative). The
non-EV load per phase is that reading less what the chargers draw on that phase; the chargers may
then share ``capacity in force - non-EV load - margin`` (never more than the connection limit).

Readings are combined with the chargers' measurements only when both are fresh. A stale meter
(no plausible reading for ``stale_after_s``) is replaced by ``fallback_base_load_a``: a fresh
charger measurement never offsets a stale meter reading. Implausible readings (NaN or infinite,
negative beyond the connection limit, the same value frozen for ``frozen_after_s``) are refused by
``MeterTracker.update`` with a reason that the adapter logs and counts; they never reach control.

**A ramp the meter sees first** (the meter and the chargers' MeterValues are rarely from the same
moment). A car raised to a higher limit draws more at the meter at once, while its charger's last
reading still shows the old draw: the reading stands for its draw (the conservative rule, above),
so the ramp counts as non-EV load, the chargers' share shrinks, they are lowered, the next readings
agree, they rise again: the whole fleet went on and off together in the demo. So after a change
lands, the adapter asks the charger for fresh readings once its car has followed (``ReadingDue``),
and until the meter has read after such a reading, a *rise* of the non-EV load above the last
estimate taken with no such ramp pending (``MeterTracker.settled_a``) is held back by at most
what those pending ramps explain (``hold_back_a``):

    non-EV = max(min(conservative, settled), conservative - pending)

``pending`` (3,) [A] is, per charger whose changed limit the meter may have seen and whose fresh
reading is not in yet, the part of its limit its counted draw does not show; likewise, for a raise
decided and not yet answered (a charger applies a profile as it gets it), the part of that raise,
for at most ``stale_after_s`` after the decision. Why this never lets the site draw more than the
conservative rule already may:

- It is never above the conservative estimate, and never below it by more than ``pending``; a
  fall of the non-EV load is taken at once. With nothing pending it *is* the conservative estimate.
- Below the truth it goes by at most the pending chargers' limits less what they really drew at
  the meter's reading (``truth - estimate <= sum(limit - actual)``, as the conservative estimate
  is the truth plus ``sum(actual - counted)``): capacity they were given and left unused. It lapses
  when the meter reads after the fresh readings, or ``stale_after_s`` after they were due (after
  the decision, for a raise not answered; a meter that has not read by then is stale, and the
  fallback applies). The conservative rule itself counts a charger at
  its last reading up to its limit for ``CHARGER_MEASUREMENT_MAX_AGE_S`` (900 s): a car that
  stopped meanwhile hides up to its limit of non-EV load for that long. The error here is of the
  same kind (a charger counted at no more than the limit it was given), for seconds.
- While a car has not ramped, the capacity its increase was given is unused, and covers a non-EV
  rise hidden in its place: the site draws more than it may only if non-EV load rose *and* the car
  then ramps before its fresh reading is in (or the decision that follows lowers that car and
  gives its room to others: its part shrinks at the next estimate), by at most the smaller of the
  two. When the readings agree (the meter's next reading after the fresh ones), the rise is the
  conservative estimate's again, and a decrease it causes goes out at once (``adapters.meter.hub``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import numpy.typing as npt

from balancer.model import MeterSettings

__all__ = [
    "CHARGER_MEASUREMENT_MAX_AGE_S",
    "NON_EV_STEP_A",
    "REJECT_REASONS",
    "MeterTracker",
    "MeterView",
    "charger_capacity_a",
    "charger_draw_a",
    "charger_draws_a",
    "hold_back_a",
    "non_ev_load_a",
]

FloatArray = npt.NDArray[np.float64]

CHARGER_MEASUREMENT_MAX_AGE_S = 900.0
"""A charger's measurement older than this is not subtracted from the meter reading (its draw then
counts as non-EV load). Chargers send MeterValues every 10 s to 15 min; the last one is the best
estimate of what a charger in a session draws. Subtracting a stale one errs by at most what that
charger is allowed (its limit stays allocated), and the next meter reading corrects it."""
NON_EV_STEP_A = 1.0
"""The non-EV load is rounded up to this step: a meter's jitter then does not move every charger's
limit at every reading (each move is a profile push), and the rounding errs on the safe side."""
REJECT_REASONS = ("not_a_number", "negative_beyond_limit", "frozen", "out_of_order")
"""Why a reading is refused (a label of ``balancer_meter_implausible_total``)."""


@dataclass(frozen=True, slots=True)
class MeterView:
    """What control used from the meter at one decision.

    meter_a : (3,) [A] the last plausible reading (NaN where unknown), net import per grid phase
    non_ev_load_a : (3,) [A] non-EV load assumed (measured, or the fallback where stale/unknown)
    fresh : True when the reading was fresh and was combined with the chargers' measurements
    cut_a : (3,) [A] how much the meter lowered the chargers' share of the connection:
        ``capacity - charger_capacity`` (0 or negative where it did not bind, e.g. PV export).
        A hook for the limit reason ``meter`` (DESIGN 3.6): when the connection node binds a
        charger and ``cut_a`` is positive on that phase, the meter is why.
    """

    meter_a: FloatArray
    non_ev_load_a: FloatArray
    fresh: bool
    cut_a: FloatArray


@dataclass
class MeterTracker:
    """The last plausible reading of one site meter, with the plausibility checks. Mutable."""

    settings: MeterSettings
    grid_limit_a: float
    last_a: tuple[float | None, float | None, float | None] | None = None
    last_at: datetime | None = None
    rejected: dict[str, int] = field(default_factory=dict)
    accepted: int = 0
    last_rejection: str | None = None
    """Why the most recent reading was refused, None when it was taken."""
    settled_a: FloatArray | None = None
    """(3,) [A] the non-EV load estimated while no charger's ramp was pending (``hold_back_a``);
    None while the meter is stale or before its first such estimate."""
    _same_value: tuple[float | None, ...] | None = None
    _same_since: datetime | None = None
    _seen_at: datetime | None = None

    def update(self, current_a: tuple[float | None, float | None, float | None], at: datetime) -> str | None:
        """Take a reading; returns why it was refused (one of ``REJECT_REASONS``) or None."""
        reason = self.last_rejection = self._implausible(current_a, at)
        if reason is not None:
            self.rejected[reason] = self.rejected.get(reason, 0) + 1
            return reason
        self.last_a, self.last_at = current_a, at
        self.accepted += 1
        return None

    def _implausible(self, current_a: tuple[float | None, ...], at: datetime) -> str | None:
        values = [c for c in current_a if c is not None]
        if any(not math.isfinite(c) for c in values):
            return "not_a_number"
        if any(c < -self.grid_limit_a for c in values):
            return "negative_beyond_limit"
        if self.last_at is not None and at < self.last_at:
            return "out_of_order"
        frozen_s = self.settings.frozen_after_s
        gap = self._seen_at is not None and (at - self._seen_at).total_seconds() > self.settings.stale_after_s
        self._seen_at = at
        if current_a != self._same_value or gap:  # a gap in the readings starts a new run
            self._same_value, self._same_since = tuple(current_a), at
        elif frozen_s > 0 and self._same_since is not None and (at - self._same_since).total_seconds() >= frozen_s:
            # A live meter's currents move in their last digits; the same three values for this
            # long is a meter (or gateway) that stopped updating its registers.
            return "frozen"
        return None

    def fresh(self, now: datetime) -> bool:
        """True when the last plausible reading is at most ``stale_after_s`` old (and not from the future)."""
        if self.last_at is None:
            return False
        age = (now - self.last_at).total_seconds()
        return -self.settings.stale_after_s <= age <= self.settings.stale_after_s

    def meter_a(self) -> FloatArray:
        """(3,) [A] the last plausible reading, NaN where never read or not measured."""
        if self.last_a is None:
            return np.full(3, np.nan)
        return np.array([np.nan if c is None else c for c in self.last_a], dtype=np.float64)

    def view(self, now: datetime, capacity_a: FloatArray, charger_a: FloatArray,
             pending_a: FloatArray | None = None) -> MeterView:
        """The non-EV load and the chargers' share of ``capacity_a`` (3,) at ``now``.

        charger_a : (3,) [A] what the chargers draw per grid phase by their own fresh measurements
        pending_a : (3,) [A] the part of accepted increases that the meter may show and the chargers'
            readings do not yet (module docstring); None or zeros: none
        """
        meter = self.meter_a()
        fallback = np.asarray(self.settings.fallback_base_load_a, dtype=np.float64)
        fresh = self.fresh(now)
        non_ev = non_ev_load_a(meter, charger_a, fallback, fresh=fresh)
        if not fresh:
            self.settled_a = None
        elif pending_a is None or not np.any(pending_a > 0):
            self.settled_a = non_ev
        elif self.settled_a is not None:
            non_ev = hold_back_a(non_ev, self.settled_a, pending_a)
        share = charger_capacity_a(capacity_a, non_ev, self.settings.margin_a, self.grid_limit_a)
        return MeterView(meter_a=meter, non_ev_load_a=non_ev, fresh=fresh,
                         cut_a=np.asarray(capacity_a - share, dtype=np.float64))


def non_ev_load_a(meter_a: FloatArray, charger_a: FloatArray, fallback_a: FloatArray, *, fresh: bool) -> FloatArray:
    """Non-EV load per grid phase (3,) [A]: meter less chargers where the meter is fresh and measures
    the phase, the fallback elsewhere. Negative where local generation exports."""
    meter = np.asarray(meter_a, dtype=np.float64)
    measured = np.ceil((meter - charger_a) / NON_EV_STEP_A - 1e-9) * NON_EV_STEP_A
    usable = np.isfinite(meter) & fresh
    return np.where(usable, measured, np.asarray(fallback_a, dtype=np.float64))


def hold_back_a(non_ev_a: FloatArray, settled_a: FloatArray, pending_a: FloatArray) -> FloatArray:
    """(3,) [A] the non-EV load with a rise above ``settled_a`` held back by at most ``pending_a``
    (module docstring): never above ``non_ev_a``, never below it by more than ``pending_a``."""
    floor = np.ceil((non_ev_a - pending_a) / NON_EV_STEP_A - 1e-9) * NON_EV_STEP_A
    return np.asarray(np.maximum(np.minimum(non_ev_a, settled_a), floor), dtype=np.float64)


def charger_capacity_a(capacity_a: FloatArray, non_ev_a: FloatArray, margin_a: float,
                       grid_limit_a: float) -> FloatArray:
    """What the chargers may draw per grid phase (3,) [A]: ``capacity - non-EV - margin``, never
    below 0 and never above the connection limit (export from PV may be used up to it)."""
    share = np.asarray(capacity_a, dtype=np.float64) - non_ev_a - margin_a
    return np.asarray(np.clip(share, 0.0, grid_limit_a), dtype=np.float64)


def charger_draw_a(measured_a: FloatArray, limit_a: FloatArray, usable: npt.NDArray[np.bool_],
                   capped: npt.NDArray[np.bool_], loaded: npt.NDArray[np.bool_] | None = None) -> FloatArray:
    """What the chargers draw per grid phase (3,) [A], to subtract from the meter reading: the
    sum of ``charger_draws_a``."""
    return np.asarray(charger_draws_a(measured_a, limit_a, usable, capped, loaded).sum(axis=0), dtype=np.float64)


def charger_draws_a(measured_a: FloatArray, limit_a: FloatArray, usable: npt.NDArray[np.bool_],
                    capped: npt.NDArray[np.bool_], loaded: npt.NDArray[np.bool_] | None = None) -> FloatArray:
    """What each charger draws per grid phase (n, 3) [A], as counted against the meter reading.

    measured_a : (n, 3) [A] each charger's measured current per grid phase
    limit_a : (n,) [A] each charger's latest limit
    usable : (n,) connected chargers with a measurement at most ``CHARGER_MEASUREMENT_MAX_AGE_S``
        old (the others count as non-EV load: their draw is in the meter reading, so leaving it
        there errs on the safe side)
    capped : (n,) chargers that follow their limits: a measurement taken before a decrease landed
        counts only up to the new limit, so a charger still ramping down is never subtracted for
        more than it may draw (that would hide non-EV load)
    A charger told to discharge (V2X, a negative limit) that follows its limits counts at that
    limit: its export is in the meter reading, and leaving it there would hide the non-EV load it
    carries (and the next decision would stop the discharge). If the car discharges less, the
    non-EV load is overestimated: the safe side. ``loaded`` (n, 3): the grid phases each car loads
    (default all), where a discharge flows.
    """
    if len(measured_a) == 0:
        return np.zeros((0, 3))
    draw = np.where(capped[:, None], np.minimum(measured_a, limit_a[:, None]), measured_a)
    discharging = (capped & (limit_a < 0))[:, None] & (True if loaded is None else loaded)
    return np.asarray(np.where(usable[:, None], np.where(discharging, draw, np.maximum(draw, 0.0)), 0.0),
                      dtype=np.float64)
