"""Decrease-then-increase steps on whole schedules (adapters/ocpp/steps.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from adapters.ocpp.steps import drop_a, pointwise_min, raise_a, value_at

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def test_value_at_is_a_step_function() -> None:
    periods = ((at(0), 10.0), (at(15), 6.0), (at(30), 12.0))
    assert value_at(periods, at(-1)) == 10.0
    assert value_at(periods, at(14.9)) == 10.0
    assert value_at(periods, at(15)) == 6.0
    assert value_at(periods, at(600)) == 12.0


def test_lower_now_higher_ahead_is_both_and_the_step_is_the_minimum() -> None:
    held = ((at(0), 16.0), (at(60), 8.0), (at(120), 6.0))
    new = ((at(5), 10.0), (at(60), 12.0), (at(90), 6.0))
    assert drop_a(held, new) == 6.0
    assert raise_a(held, new) == 4.0
    step = pointwise_min(held, new)
    assert step == ((at(5), 10.0), (at(60), 8.0), (at(90), 6.0))
    # The step is lower than or equal to both everywhere: a pure decrease from what is held.
    assert raise_a(held, step) == 0.0 and raise_a(new, step) == 0.0
    # And the new schedule from the step is a pure increase.
    assert drop_a(step, new) == 0.0


def test_only_the_slots_ahead_rise() -> None:
    held = ((at(0), 10.0), (at(30), 6.0))
    new = ((at(1), 10.0), (at(30), 8.0))
    assert drop_a(held, new) == 0.0
    assert raise_a(held, new) == 2.0
    assert pointwise_min(held, new) == ((at(1), 10.0), (at(30), 6.0))


def test_the_past_of_the_held_schedule_does_not_count() -> None:
    held = ((at(0), 4.0), (at(10), 10.0))
    new = ((at(20), 10.0),)
    assert raise_a(held, new) == 0.0 and drop_a(held, new) == 0.0
