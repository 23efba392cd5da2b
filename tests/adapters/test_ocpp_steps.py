"""Decrease-then-increase steps on whole schedules (adapters/ocpp/steps.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.ocpp.steps import breakpoints, drop_a, now_then_min, pointwise_min, raise_a, renew_tail, value_at

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


def _schedule(start_min: float, steps: list[tuple[float, float]], tail_at_min: float, tail_a: float) -> tuple[
        tuple[datetime, float], ...]:
    out = [(at(start_min), steps[0][1])]
    for offset, value in steps[1:]:
        out.append((at(start_min + offset), value))
    return (*out, (at(tail_at_min), tail_a))


limits = st.floats(min_value=0.0, max_value=32.0, allow_nan=False).map(lambda v: round(v, 1))
shapes = st.lists(st.tuples(st.floats(min_value=1.0, max_value=1380.0), limits), min_size=1, max_size=6).map(
    lambda xs: [(0.0, xs[0][1]), *sorted(xs[1:])])


@settings(max_examples=300, deadline=None)
@given(held=shapes, new=shapes, shift_min=st.floats(min_value=0.0, max_value=300.0), held_tail=limits,
       new_tail=limits, elapsed_min=st.floats(min_value=0.0, max_value=120.0))
def test_what_is_held_never_exceeds_what_is_allowed(held: list[tuple[float, float]], new: list[tuple[float, float]],
                                                     shift_min: float, held_tail: float, new_tail: float,
                                                     elapsed_min: float) -> None:
    """Whatever is left held (nothing sent: no drop from the renewed held) or sent (the pointwise
    minimum in the first phase, a rise now alone in the second), the charger never holds more than the new schedule allows, at any instant, but in a
    failsafe tail in the last twelfth of the new horizon, at most the new failsafe."""
    h = _schedule(0.0, held, 1440.0, held_tail)
    n = _schedule(elapsed_min, new, 1440.0 + elapsed_min + shift_min, new_tail)
    renewed = renew_tail(h, n)
    step, rise = pointwise_min(renewed, n), now_then_min(renewed, n)
    points = breakpoints(h, n)
    assert all(value_at(step, t) <= value_at(n, t) + 1e-9 for t in points)
    assert all(value_at(rise, t) <= value_at(n, t) + 1e-9 for t in points) and rise[0] == n[0]
    if drop_a(renewed, n) <= 1e-9:
        horizon = n[-1][0] - n[0][0]
        for t in points:
            if value_at(h, t) > value_at(n, t) + 1e-9:  # only a failsafe tail, late in the horizon
                assert t >= h[-1][0] and (n[-1][0] - h[-1][0]) * 12 <= horizon and h[-1][1] <= n[-1][1] + 1e-9


def test_a_horizon_a_slot_behind_is_renewed_a_lower_failsafe_or_an_old_one_is_not() -> None:
    held = ((at(0), 10.0), (at(60), 4.0), (at(1440), 6.0))
    moved = ((at(15), 10.0), (at(60), 4.0), (at(1455), 6.0))
    assert drop_a(renew_tail(held, moved), moved) == 0.0 and raise_a(renew_tail(held, moved), moved) == 0.0
    assert drop_a(held, moved) == 2.0  # without it: a decrease a day ahead at every slot boundary
    lower = ((at(15), 10.0), (at(60), 4.0), (at(1455), 5.0))
    assert drop_a(renew_tail(held, lower), lower) == 2.0
    far = ((at(300), 10.0), (at(1740), 6.0))  # the held horizon 5 h behind: more than a twelfth
    assert renew_tail(held, far) == held
