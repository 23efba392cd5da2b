"""Arrival forecast from a site's own session history (issue 17 item 6). Pure, no I/O.

A car park's planner only sees the cars plugged in now: it plans them as if the capacity of the
evening were theirs, and the visitors who then arrive find it taken (the 2-5 % the car park missed
of the perfect-foresight bound were traced to this). ``expected_load_a`` turns past sessions into
the current that cars *not yet arrived* are expected to draw in every slot ahead, per grid phase:
each past session that arrived at a later time of day (or of the week) than now is laid over the
planning window at the same time of day (week), drawing its energy evenly over its stay (at most
at its maximum), and the sum is divided by the number of days (weeks) of history. The planner
gets ``BID_SCALE`` times this as the expected cars' bids for the capacity ahead
(``control.arrival_forecast_days``, ``balancer.plan_expected``), so the cars present charge
earlier and leave room for the expected arrivals where that gains energy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import numpy.typing as npt

__all__ = ["BID_SCALE", "MAX_SESSIONS", "RESERVE_SHARE", "PastSession", "SessionHistory", "expected_load_a", "recent"]

FloatArray = npt.NDArray[np.float64]

BID_SCALE = 2.0
"""The planner gets this multiple of the expected load as bids (``balancer.plan_expected``): a
session's energy spread evenly over its stay understates the current it draws while it charges.
On the car park days of ``bench/quality_round2.py`` (with ``EXPECTED_VALUE`` 0.95) it completed
189 / 163 sessions (normal / tight) against 174 / 149 with the reservation below, for the same
energy (-0.05 / +0.27 points of the bound; bench/README.md)."""
RESERVE_SHARE = 0.5
"""The forecast as a hard reservation instead (``bench/quality_round2.py --forecast-as reserve``):
the capacity less this share of the expected load; on the car park days of
``bench/quality_round2.py`` half the forecast delivered more energy and the whole more completed
sessions (bench/README.md); some of the expected cars do not come, and those that come are planned
when they are there."""
MAX_SESSIONS = 50_000
"""At most this many past sessions are kept (1,000 chargers with two sessions a day for 28 days)."""
DAY_S = 86400.0
WEEK_S = 7 * DAY_S


@dataclass(frozen=True)
class PastSession:
    """One finished session: when the car came and went, the energy it took or asked for [Wh],
    the grid phases it loaded, its maximum current [A per phase]."""

    arrival: datetime
    departure: datetime
    energy_wh: float
    phases: tuple[bool, bool, bool] = (True, True, True)
    max_current_a: float = 32.0

    def to_json(self) -> list[object]:
        return [self.arrival.isoformat(), self.departure.isoformat(), round(self.energy_wh, 1),
                [int(p) for p in self.phases], self.max_current_a]

    @classmethod
    def from_json(cls, raw: object) -> PastSession:
        """The inverse of ``to_json``; ValueError on anything else."""
        if not isinstance(raw, list) or len(raw) != 5:
            raise ValueError(f"not a session record: {raw!r}")
        arrival, departure, energy, phases, max_a = raw
        if not (isinstance(arrival, str) and isinstance(departure, str) and isinstance(phases, list)
                and len(phases) == 3 and isinstance(energy, int | float) and isinstance(max_a, int | float)):
            raise ValueError(f"not a session record: {raw!r}")
        return cls(datetime.fromisoformat(arrival), datetime.fromisoformat(departure), float(energy),
                   (bool(phases[0]), bool(phases[1]), bool(phases[2])), float(max_a))


def expected_load_a(history: Sequence[PastSession], now: datetime, start: datetime, n_slots: int, *,
                    slot_s: int = 900, voltage_v: float = 230.0, days: float | None = None,
                    by_weekday: bool | None = None) -> FloatArray:
    """Current per slot and grid phase [A] that cars arriving after ``now`` are expected to draw,
    (n_slots, 3) from ``start`` (slots of ``slot_s``).

    days : the span of ``history`` in days (None: from its first to its last arrival, at least 1)
    by_weekday : lay sessions over the same weekday only (None: when the history spans two weeks
        or more); else over every day
    """
    out = np.zeros((n_slots, 3))
    if not history or n_slots <= 0:
        return out
    arrive = np.array([h.arrival.timestamp() for h in history])
    leave = np.array([h.departure.timestamp() for h in history])
    span_d = days if days is not None else max((arrive.max() - arrive.min()) / DAY_S, 1.0)
    weekly = span_d >= 14.0 if by_weekday is None else by_weekday
    period = WEEK_S if weekly else DAY_S
    periods = max(span_d * DAY_S / period, 1.0)
    now_s = now.timestamp()
    # The same time of day (week), next after now: arrivals in (now, now + period].
    shifted = now_s + np.mod(arrive - now_s, period)
    shifted = np.where(shifted <= now_s, shifted + period, shifted)
    stay_s = np.maximum(leave - arrive, 1.0)
    mask = np.array([h.phases for h in history], dtype=np.float64)
    n_phases = np.maximum(mask.sum(axis=1), 1.0)
    max_w = np.array([h.max_current_a for h in history]) * n_phases * voltage_v
    energy = np.maximum(np.array([h.energy_wh for h in history]), 0.0)
    power_w = np.minimum(energy / (stay_s / 3600.0), max_w)
    amps = power_w / (n_phases * voltage_v)  # per loaded phase
    t0 = start.timestamp()
    edges = t0 + slot_s * np.arange(n_slots + 1, dtype=np.float64)
    # Share of each slot each shifted session covers: (n_sessions, n_slots).
    lo = np.maximum(shifted[:, None], edges[None, :-1])
    hi = np.minimum((shifted + stay_s)[:, None], edges[None, 1:])
    cover = np.clip(hi - lo, 0.0, None) / slot_s
    out = (cover * amps[:, None]).T @ mask / periods
    return np.asarray(out, dtype=np.float64)


def recent(history: Sequence[PastSession], now: datetime, days: float) -> list[PastSession]:
    """The sessions that arrived within ``days`` before ``now`` (what the forecast keeps)."""
    since = now - timedelta(days=days)
    return [h for h in history if since <= h.arrival <= now]


@dataclass
class SessionHistory:
    """A site's finished sessions of the last ``keep_days`` (at most ``MAX_SESSIONS``), for the
    arrival forecast; ``changed`` tells the service to persist it (``sessions:<site>`` in the
    state store)."""

    keep_days: float = 28.0
    sessions: list[PastSession] | None = None
    changed: bool = False

    def add(self, session: PastSession) -> None:
        """Remember a finished session; older ones than ``keep_days`` before it are dropped."""
        kept = recent(self.sessions or [], session.arrival, self.keep_days)
        self.sessions = [*kept, session][-MAX_SESSIONS:]
        self.changed = True

    def to_json(self) -> list[list[object]]:
        return [s.to_json() for s in self.sessions or []]

    def load(self, raw: object) -> int:
        """Take the persisted history; records that do not parse are skipped. Returns how many."""
        if not isinstance(raw, list):
            return 0
        loaded = []
        for item in raw[-MAX_SESSIONS:]:
            try:
                loaded.append(PastSession.from_json(item))
            except (ValueError, TypeError):
                continue
        self.sessions = loaded
        return len(loaded)

    def expected_load_a(self, now: datetime, start: datetime, n_slots: int, *, slot_s: int = 900,
                        voltage_v: float = 230.0, days: float) -> FloatArray:
        """``expected_load_a`` over the sessions of the last ``days`` before ``now``; zeros with
        less than one day of history (no forecast from a few sessions)."""
        history = recent(self.sessions or [], now, days)
        if not history or (now - min(h.arrival for h in history)).total_seconds() < DAY_S:
            return np.zeros((max(n_slots, 0), 3))
        span = min(days, float(np.ceil((now - min(h.arrival for h in history)).total_seconds() / DAY_S)))
        return expected_load_a(history, now, start, n_slots, slot_s=slot_s, voltage_v=voltage_v, days=span)
