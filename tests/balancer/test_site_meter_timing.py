"""A car's ramp that the site meter sees before the charger's own reading (DESIGN 3.8, 4): not
taken for non-EV load while the fresh reading asked for is on its way (``ReadingDue``), and a real
step of the non-EV load at the same moment is caught at the meter's reading after the fresh ones."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from balancer.control import Controller
from balancer.events import MeterSample, ProfileResult, ReadingDue, SiteMeterReading
from balancer.site_meter import hold_back_a
from tests.balancer.test_site_meter import T0, load_per_phase, meter_site, started

BUILDING_A = 10.0


def s(seconds: float):  # type: ignore[no-untyped-def]
    return T0 + timedelta(seconds=seconds)


def raised(n: int, before_a: list[float]) -> tuple[Controller, dict[str, float]]:
    """``n`` chargers on a 100 A connection (building 10 A): each accepted its first limit (the
    meter not read yet: 30 A of building assumed) and read ``before_a`` (its car's draw, at most
    that limit) at 1-2 s; the meter read at 3 s and the controller raised them (decided at 3 s,
    accepted at 4 s, fresh readings due at 9 s). Returns the raised limits."""
    ctrl = started(meter_site(n))
    cids = ctrl.topology.charger_ids
    ctrl.decide(T0)
    first = {cid: ctrl.states[cid].limit_a for cid in cids}
    for cid in cids:
        ctrl.handle(ProfileResult(cid, s(1), first[cid], "Accepted"))
    for cid, drawn in zip(cids, before_a, strict=True):
        ctrl.handle(MeterSample(cid, s(2), current_a=(min(drawn, first[cid]),) * 3))
    ctrl.handle(SiteMeterReading("s", s(3), (BUILDING_A + sum(min(d, first[c]) for c, d in
                                                                zip(cids, before_a, strict=True)),) * 3))
    ctrl.decide(s(3))
    limits = {cid: ctrl.states[cid].limit_a for cid in cids}
    for cid in cids:
        ctrl.handle(ProfileResult(cid, s(4), limits[cid], "Accepted"))
        ctrl.handle(ReadingDue(cid, s(4), s(9)))
    return ctrl, limits


def test_a_ramp_the_meter_sees_first_is_not_taken_for_building_load() -> None:
    """Four cars raised from 17 to 22 A (the building is 10 A, not the 30 A assumed): the meter
    reads them at their new limits before their chargers do. Taken for building load (main:
    10 + 4 x 5 A), the chargers' share shrank and the cars were lowered again."""
    ctrl, limits = raised(4, [32.0] * 4)
    assert min(limits.values()) >= 22.0  # they were raised
    ctrl.handle(SiteMeterReading("s", s(5), (BUILDING_A + sum(limits.values()),) * 3))
    ctrl.decide(s(5))
    assert ctrl.meter_view is not None
    np.testing.assert_allclose(ctrl.meter_view.non_ev_load_a, [BUILDING_A] * 3)
    assert all(ctrl.states[c].limit_a >= limits[c] for c in limits)  # not lowered
    # The fresh readings, and the meter after them: the same, now from the readings themselves.
    for cid, limit in limits.items():
        ctrl.handle(MeterSample(cid, s(9.1), current_a=(limit,) * 3))
    ctrl.handle(SiteMeterReading("s", s(10), (BUILDING_A + sum(limits.values()),) * 3))
    ctrl.decide(s(10))
    np.testing.assert_allclose(ctrl.meter_view.non_ev_load_a, [BUILDING_A] * 3)


def test_a_raise_on_its_way_is_not_taken_for_building_load() -> None:
    """A charger applies a profile as it gets it: the meter may see the car ramp before the
    answer is handled. Main took that for 20 A of building load as well."""
    ctrl = started(meter_site(4))
    cids = ctrl.topology.charger_ids
    ctrl.decide(T0)
    first = {cid: ctrl.states[cid].limit_a for cid in cids}
    for cid in cids:
        ctrl.handle(ProfileResult(cid, s(1), first[cid], "Accepted"))
        ctrl.handle(MeterSample(cid, s(2), current_a=(first[cid],) * 3))
    ctrl.handle(SiteMeterReading("s", s(3), (BUILDING_A + sum(first.values()),) * 3))
    ctrl.decide(s(3))
    raised_to = {cid: ctrl.states[cid].limit_a for cid in cids}
    assert sum(raised_to.values()) > sum(first.values()) + 10.0
    ctrl.handle(SiteMeterReading("s", s(3.2), (BUILDING_A + sum(raised_to.values()),) * 3))
    view = ctrl.meter_now(s(3.2), np.full(3, 100.0))
    assert view is not None
    np.testing.assert_allclose(view.non_ev_load_a, [BUILDING_A] * 3)


def test_a_building_step_during_a_ramp_is_caught_after_the_fresh_readings() -> None:
    """The building steps up by 15 A as four cars are raised from 17 to 22 A, and the cars do not
    ramp: the step hides behind the raises (at most the 20 A they were raised by) until the fresh
    readings show the cars did not ramp; at the meter's next reading it is the building's, and
    the cars give way."""
    ctrl, limits = raised(4, [32.0] * 4)
    first = {c: ctrl.states[c].held_before_a for c in limits}
    before = sum(first.values())
    step = 15.0
    ctrl.handle(SiteMeterReading("s", s(5), (BUILDING_A + step + before,) * 3))  # the cars still at 17 A
    ctrl.decide(s(5))
    assert ctrl.meter_view is not None
    hidden = BUILDING_A + step - ctrl.meter_view.non_ev_load_a
    assert np.all(hidden > 0)  # the price: hidden behind the raises...
    assert np.all(hidden <= min(step, sum(limits.values()) - before) + 1e-9)
    # ... while the site draws no more than it may: the cars' unused raise covers the step.
    assert BUILDING_A + step + before <= 100.0 - 1.0
    for cid in limits:
        ctrl.handle(MeterSample(cid, s(9.1), current_a=(first[cid],) * 3))
    ctrl.handle(SiteMeterReading("s", s(9.5), (BUILDING_A + step + before,) * 3))
    ctrl.decide(s(9.5))
    np.testing.assert_allclose(ctrl.meter_view.non_ev_load_a, [BUILDING_A + step] * 3)
    assert load_per_phase(ctrl).max() <= 100.0 - BUILDING_A - step - 1.0 + 1e-9


def test_a_hold_back_ends_when_the_fresh_reading_never_comes() -> None:
    """No reading came (the charger did not answer): the meter's own ``stale_after_s`` after it
    was due, the conservative estimate is back, whatever it says."""
    ctrl, limits = raised(4, [32.0] * 4)
    metered = (BUILDING_A + sum(limits.values()),) * 3
    ctrl.handle(SiteMeterReading("s", s(5), metered))
    ctrl.decide(s(5))
    assert ctrl.meter_view is not None
    np.testing.assert_allclose(ctrl.meter_view.non_ev_load_a, [BUILDING_A] * 3)
    late = 9 + ctrl.site.meter.stale_after_s + 0.5  # type: ignore[union-attr]
    ctrl.handle(SiteMeterReading("s", s(late), metered))
    view = ctrl.meter_now(s(late), np.full(3, 100.0))
    assert view is not None
    first = sum(ctrl.states[c].held_before_a for c in limits)  # what the cars' readings show
    np.testing.assert_allclose(view.non_ev_load_a, [np.ceil(BUILDING_A + sum(limits.values()) - first - 1e-9)] * 3)


@settings(max_examples=60, deadline=None)
@given(before=st.lists(st.floats(0.0, 32.0), min_size=1, max_size=4), ramp=st.floats(0.0, 1.0),
       step=st.floats(-5.0, 40.0))
def test_property_never_below_the_truth_but_by_a_real_step_the_cars_have_not_ramped_into(
        before: list[float], ramp: float, step: float) -> None:
    """Cars raised, ramped any part of the way, the building stepped by any amount at that moment:
    the estimate is never below the building's true load by more than the step, nor by more than
    the part of the raises the cars have not drawn yet (what the site may still take on top); with
    no step it is never below the truth. After the fresh readings and a meter reading, never
    below the truth at all."""
    ctrl, limits = raised(len(before), before)
    cids = ctrl.topology.charger_ids
    drawn_before = [min(b, ctrl.states[c].held_before_a) for c, b in zip(cids, before, strict=True)]
    # A car ramps towards its new limit, at most to what it drew under the old one if lowered.
    drawn = [d + ramp * max(limits[c] - d, 0.0) if limits[c] >= d else limits[c]
             for c, d in zip(cids, drawn_before, strict=True)]
    truth = BUILDING_A + step
    ctrl.handle(SiteMeterReading("s", s(5), (truth + sum(drawn),) * 3))
    ctrl.decide(s(5))
    assert ctrl.meter_view is not None
    hidden = float(truth - ctrl.meter_view.non_ev_load_a.min())
    unramped = sum(max(limits[c] - d, 0.0) for c, d in zip(cids, drawn, strict=True))
    assert hidden <= max(step, 0.0) + 1e-6
    assert hidden <= unramped + 1e-6
    for cid in cids:  # what that decision changed lands (no fresh reading asked for)
        if ctrl.states[cid].limit_a != ctrl.states[cid].held_a:
            ctrl.handle(ProfileResult(cid, s(5.5), ctrl.states[cid].limit_a, "Accepted"))
    for cid, d in zip(cids, drawn, strict=True):
        ctrl.handle(MeterSample(cid, s(9.1), current_a=(d,) * 3))
    ctrl.handle(SiteMeterReading("s", s(9.5), (truth + sum(drawn),) * 3))
    ctrl.decide(s(9.5))
    assert np.all(ctrl.meter_view.non_ev_load_a >= truth - 1e-6)


@given(non_ev=st.integers(-50, 150), settled=st.integers(-50, 150), pending=st.floats(0.0, 200.0))
def test_property_hold_back_within_the_pending_ramps(non_ev: int, settled: int, pending: float) -> None:
    """Never above the conservative estimate, never below it by more than the pending ramps,
    and the conservative estimate itself with nothing pending."""
    out = hold_back_a(np.full(3, float(non_ev)), np.full(3, float(settled)), np.full(3, pending))
    assert np.all(out <= non_ev) and np.all(out >= non_ev - pending - 1e-9)
    same = hold_back_a(np.full(3, float(non_ev)), np.full(3, float(settled)), np.zeros(3))
    np.testing.assert_array_equal(same, np.full(3, float(non_ev)))


def test_a_charger_lowered_and_raised_again_around_the_meter_reading_counts_at_what_it_held_then() -> None:
    """The charger's readings before and after the meter's both show the car at its full limit,
    but between them it was lowered to 6 A, the meter read it there, and it was raised again.
    Counted at either reading (main: the lower of the two, both 32 A), the 26 A the car did not
    draw then hid that much building load: the estimate went below the truth (the unsafe side;
    the service test saw -10 A against a true 10 A). It counts at most what it held then."""
    ctrl = started(meter_site(1))
    cid = ctrl.topology.charger_ids[0]
    ctrl.decide(T0)
    full = ctrl.states[cid].limit_a
    assert full > 20.0
    ctrl.handle(ProfileResult(cid, s(1), full, "Accepted"))
    ctrl.handle(MeterSample(cid, s(2), current_a=(full,) * 3))
    ctrl.handle(ProfileResult(cid, s(3), 6.0, "Accepted"))
    ctrl.handle(SiteMeterReading("s", s(10), (BUILDING_A + 6.0,) * 3))
    ctrl.handle(ProfileResult(cid, s(11), full, "Accepted"))
    ctrl.handle(MeterSample(cid, s(20), current_a=(full,) * 3))
    ctrl.decide(s(20))
    assert ctrl.meter_view is not None
    assert min(ctrl.meter_view.non_ev_load_a) >= BUILDING_A - 1e-9, ctrl.meter_view.non_ev_load_a
