"""``capped_periods``: the pointwise minimum of a schedule and a cap, never raising a limit."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from balancer.external_cap import cap_at, capped_periods

T = datetime(2026, 3, 2, 18, 0, tzinfo=UTC)


def at(minutes: float) -> datetime:
    return T + timedelta(minutes=minutes)


def test_a_cap_change_mid_slot_starts_a_period_and_the_failsafe_stays() -> None:
    periods = [(at(0), 16.0), (at(15), 20.0), (at(1440), 10.0)]
    cap = [[at(0).timestamp(), 32.0], [at(5).timestamp(), 7.5], [at(20).timestamp(), 3.0]]
    out = capped_periods(periods, cap, None, min_a=6.0, step_a=1.0)
    assert out == [(at(0), 16.0), (at(5), 7.0), (at(20), 0.0), (at(1440), 10.0)]  # 7.5 floored, 3 < 6 -> 0


def test_no_cap_before_its_start_and_after_until() -> None:
    periods = [(at(0), 16.0), (at(1440), 10.0)]
    cap = [[at(10).timestamp(), 8.0]]
    out = capped_periods(periods, cap, at(30).timestamp(), min_a=6.0, step_a=0.1)
    assert out == [(at(0), 16.0), (at(10), 8.0), (at(30), 16.0), (at(1440), 10.0)]
    assert cap_at(cap, at(30).timestamp(), at(5).timestamp()) is None
    assert cap_at(cap, at(30).timestamp(), at(29).timestamp()) == 8.0
    assert capped_periods(periods, [], None, 6.0, 1.0) == periods
