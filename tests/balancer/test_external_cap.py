"""An external cap (OCPI ChargingProfile) on one session: the lower of cap and allocation wins."""

from __future__ import annotations

import itertools
from datetime import timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from balancer.control import Controller
from balancer.events import ExternalCapSet, SessionStarted, SessionStopped
from balancer.model import Charger, Site
from tests.balancer.test_control import T0, connect_all, full_capacity


def make_site(grid_limit_a: float) -> Site:
    chargers = tuple(Charger(id=f"CP{i}", max_current_a=32.0, min_current_a=6.0) for i in (2, 3))
    return Site(id="s", voltage_v=230.0, grid_limit_a=grid_limit_a, fallback_kw=11.0, chargers=chargers)


def limits(ctrl: Controller, at=T0) -> dict[str, float]:  # type: ignore[no-untyped-def]
    return {s.charger_id: s.limit_a for s in ctrl.decide(at)}


def test_cap_lowers_the_limit_frees_capacity_and_clears() -> None:
    ctrl = Controller(make_site(grid_limit_a=40.0))
    full_capacity(ctrl, 40.0)
    connect_all(ctrl, ["CP2", "CP3"])
    before = limits(ctrl)
    assert before == {"CP2": 20.0, "CP3": 20.0}
    ctrl.handle(ExternalCapSet("CP2", T0, periods=((T0, 10.0),), transaction_id="tx-CP2"))
    capped = limits(ctrl)
    assert capped["CP2"] == 10.0 and capped["CP3"] == 30.0  # work-conserving: CP3 takes the rest
    assert ctrl.status(T0).chargers[0]["external_cap_a"] == 10.0
    ctrl.handle(ExternalCapSet("CP2", T0, periods=(), transaction_id="tx-CP2"))
    assert limits(ctrl) == before


def test_cap_never_raises_and_periods_shape_the_schedule_ahead() -> None:
    ctrl = Controller(make_site(grid_limit_a=20.0))
    full_capacity(ctrl, 20.0)
    connect_all(ctrl, ["CP2", "CP3"])
    later = T0 + timedelta(minutes=30)
    ctrl.handle(ExternalCapSet("CP2", T0, periods=((T0, 32.0), (later, 7.0)), transaction_id="tx-CP2"))
    schedules = {s.charger_id: s for s in ctrl.decide(T0)}
    assert schedules["CP2"].limit_a == 10.0  # a cap above the allocation changes nothing
    ahead = dict(schedules["CP2"].periods)
    assert ahead[later] == 7.0  # the schedule the charger holds follows the cap from 18:30
    assert max(v for t, v in schedules["CP2"].periods if later <= t < later + timedelta(hours=23)) <= 7.0
    assert limits(ctrl, later)["CP2"] == 7.0


def test_cap_ends_with_its_session_and_with_its_duration() -> None:
    ctrl = Controller(make_site(grid_limit_a=40.0))
    full_capacity(ctrl, 40.0)
    connect_all(ctrl, ["CP2", "CP3"])
    ctrl.handle(ExternalCapSet("CP2", T0, periods=((T0, 8.0),), until=T0 + timedelta(minutes=10),
                               transaction_id="tx-CP2"))
    assert limits(ctrl)["CP2"] == 8.0
    assert limits(ctrl, T0 + timedelta(minutes=11))["CP2"] == 20.0
    ctrl.handle(ExternalCapSet("CP2", T0, periods=(), transaction_id="tx-CP2"))
    ctrl.handle(ExternalCapSet("CP2", T0, periods=((T0, 8.0),), transaction_id="tx-old"))  # stale session
    assert limits(ctrl)["CP2"] == 20.0
    ctrl.handle(ExternalCapSet("CP2", T0, periods=((T0, 8.0),), transaction_id="tx-CP2"))
    ctrl.handle(SessionStopped("CP2", T0, transaction_id="tx-CP2"))
    ctrl.handle(SessionStarted("CP2", T0, transaction_id="tx-new"))
    assert limits(ctrl)["CP2"] == 20.0


@settings(max_examples=60, deadline=None)
@given(capacity=st.floats(0.0, 100.0), caps=st.lists(st.one_of(st.none(), st.floats(0.0, 40.0)), min_size=2,
                                                    max_size=2),
       later=st.lists(st.floats(0.0, 40.0), min_size=2, max_size=2), minutes=st.integers(1, 600))
def test_caps_never_raise_and_the_site_stays_within_capacity(capacity: float, caps: list[float | None],
                                                             later: list[float], minutes: int) -> None:
    ctrl = Controller(make_site(grid_limit_a=100.0))
    full_capacity(ctrl, capacity)
    connect_all(ctrl, ["CP2", "CP3"])
    step = T0 + timedelta(minutes=minutes)
    for cid, cap, after in zip(["CP2", "CP3"], caps, later, strict=True):
        if cap is not None:
            ctrl.handle(ExternalCapSet(cid, T0, periods=((T0, cap), (step, after)), transaction_id=f"tx-{cid}"))
    schedules = {s.charger_id: s for s in ctrl.decide(T0)}
    assert sum(s.limit_a for s in schedules.values()) <= capacity + 1e-9
    for cid, cap, after in zip(["CP2", "CP3"], caps, later, strict=True):
        schedule = schedules[cid]
        if cap is None:
            continue
        assert schedule.limit_a <= cap + 1e-9
        periods = schedule.periods
        for (at, value), (until, _) in itertools.pairwise(periods):  # the last: the failsafe
            bound = min(cap if at < step else after, after if until > step else cap)
            assert value <= bound + 1e-9, (at, until, value)
