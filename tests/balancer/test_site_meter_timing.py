"""The site meter's reading and the chargers' readings are taken at different times: what each
charger drew *when the meter read* is what comes off the reading (DESIGN 3.8, 4)."""

from __future__ import annotations

from datetime import timedelta

import numpy as np

from balancer.events import MeterSample, ProfileResult, SiteMeterReading
from tests.balancer.test_site_meter import T0, load_per_phase, meter_site, started


def test_a_car_paused_when_the_meter_read_hides_no_building_load() -> None:
    """A car read at 32 A, then paused: the meter reading taken while it held 0 A has none of
    its draw, so its old reading must not come off it (that hid 32 A of building load)."""
    ctrl = started(meter_site(2))
    ctrl.handle(SiteMeterReading("s", T0, (20.0, 20.0, 20.0)))
    ctrl.decide(T0)
    ctrl.handle(ProfileResult("CP0", T0 + timedelta(seconds=1), 32.0, "Accepted"))
    ctrl.handle(MeterSample("CP0", T0 + timedelta(seconds=5), current_a=(32.0, 32.0, 32.0)))
    ctrl.handle(ProfileResult("CP0", T0 + timedelta(seconds=6), 0.0, "Accepted"))  # paused
    t = T0 + timedelta(seconds=8)
    ctrl.handle(SiteMeterReading("s", t, (20.0, 20.0, 20.0)))  # the building alone
    ctrl.decide(t + timedelta(seconds=1))
    assert ctrl.meter_view is not None
    np.testing.assert_allclose(ctrl.meter_view.non_ev_load_a, [20.0] * 3)
    assert load_per_phase(ctrl).max() <= 100.0 - 20.0 - 1.0 + 1e-9


def test_a_reading_under_the_limit_held_at_the_meter_reading_comes_off_it() -> None:
    """A car read at 0 A while paused, raised to 16 A (accepted), metered at 16 A and read at
    16 A after the meter: the reading from before the raise says nothing of the meter's moment.
    Taking it (0 A) counted the car as building load, and the whole fleet went on and off."""
    ctrl = started(meter_site(2))
    ctrl.handle(SiteMeterReading("s", T0, (20.0, 20.0, 20.0)))
    ctrl.decide(T0)
    ctrl.handle(ProfileResult("CP0", T0 + timedelta(seconds=1), 0.0, "Accepted"))
    ctrl.handle(MeterSample("CP0", T0 + timedelta(seconds=2), current_a=(0.0, 0.0, 0.0)))
    ctrl.handle(ProfileResult("CP0", T0 + timedelta(seconds=3), 16.0, "Accepted"))
    t = T0 + timedelta(seconds=20)
    ctrl.handle(SiteMeterReading("s", t, (36.0, 36.0, 36.0)))  # 20 A building + 16 A car
    ctrl.handle(MeterSample("CP0", t + timedelta(seconds=2), current_a=(16.0, 16.0, 16.0)))
    ctrl.decide(t + timedelta(seconds=3))
    assert ctrl.meter_view is not None
    np.testing.assert_allclose(ctrl.meter_view.non_ev_load_a, [20.0] * 3)
