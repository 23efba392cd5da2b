"""Non-EV load forecast: a synthetic week with a known profile, then short histories."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np

from forecast.non_ev import forecast_non_ev, week_slot

MONDAY = datetime(2026, 3, 2, tzinfo=UTC)  # a Monday


def known_profile(t: datetime) -> float:
    """Weekdays: 10 A at night, 50 A from 11:00 to 14:00; weekends 5 A all day [A]."""
    if t.weekday() >= 5:
        return 5.0
    return 50.0 if 11 <= t.hour < 14 else 10.0


def synthetic_history(weeks: int, noise_a: float, seed: int = 7) -> dict[datetime, list[float]]:
    rng = np.random.default_rng(seed)
    history: dict[datetime, list[float]] = {}
    for k in range(weeks * 7 * 96):
        t = MONDAY + timedelta(minutes=15 * k)
        base = known_profile(t)
        history[t] = [base + float(x) for x in rng.uniform(-noise_a, noise_a, size=3)]
    return history


def test_week_slot_starts_monday() -> None:
    epoch = np.array([int(MONDAY.timestamp()), int((MONDAY + timedelta(days=6, hours=23, minutes=45)).timestamp())])
    assert week_slot(epoch).tolist() == [0, 7 * 96 - 1]


def test_synthetic_week_profile_high_quantile() -> None:
    history = synthetic_history(weeks=4, noise_a=3.0)
    start = MONDAY + timedelta(weeks=4)
    out = forecast_non_ev(history, start, 7 * 96, last_a=[0.0, 0.0, 0.0], fallback_a=[30.0] * 3)
    expected = np.array([known_profile(start + timedelta(minutes=15 * k)) for k in range(7 * 96)])
    # A high quantile: never below the profile by more than the noise, above the mean on average.
    assert np.all(out >= expected[:, None] - 3.0)
    assert np.all(out <= expected[:, None] + 3.0)
    assert float(np.mean(out - expected[:, None])) > 0.5
    noon_tuesday = (24 + 12) * 4
    assert out[noon_tuesday].min() >= 47.0
    saturday_noon = (5 * 24 + 12) * 4
    assert out[saturday_noon].max() <= 8.0


def test_quantile_is_not_the_mean() -> None:
    # Three quiet Mondays and one busy one at 09:00: the plan must reckon with the busy one.
    history = {MONDAY + timedelta(weeks=w, hours=9): [10.0, 10.0, 10.0] for w in range(3)}
    history[MONDAY + timedelta(weeks=3, hours=9)] = [60.0, 60.0, 60.0]
    out = forecast_non_ev(history, MONDAY + timedelta(weeks=4, hours=9), 1, last_a=None, fallback_a=[0.0] * 3)
    np.testing.assert_allclose(out[0], [60.0] * 3)


def test_short_history_falls_back_to_last_value_then_config() -> None:
    history = {MONDAY + timedelta(hours=9): [40.0, 40.0, 40.0]}  # one sample only
    start = MONDAY + timedelta(weeks=1, hours=9)
    out = forecast_non_ev(history, start, 4, last_a=[12.0, 13.0, 14.0], fallback_a=[30.0] * 3)
    np.testing.assert_allclose(out, [[12.0, 13.0, 14.0]] * 4)
    out = forecast_non_ev({}, start, 2, last_a=None, fallback_a=[30.0, 31.0, 32.0])
    np.testing.assert_allclose(out, [[30.0, 31.0, 32.0]] * 2)
