"""A car charging now that the LP gives some current below its minimum in the first slot stays at
its minimum there (``balancer.plan_minimums._keep_charging``) instead of being paused."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np

from balancer.model import Charger, Site
from balancer.plan import PlanSession, plan
from balancer.topology import Topology

T0 = datetime(2026, 3, 2, 17, 0, tzinfo=UTC)


def topo() -> Topology:
    chargers = tuple(Charger(id=f"CP{i}", max_current_a=32.0, min_current_a=6.0) for i in range(2))
    return Topology.from_site(Site(id="s", voltage_v=230.0, grid_limit_a=16.0, fallback_kw=0.0, circuits=(),
                                   chargers=chargers))


def sessions(charging: bool) -> list[PlanSession]:
    # 16 A for 4 h; CP1's car takes 13 A at most and cannot finish (40 kWh against 35.9 kWh at
    # 13 A): the LP leaves CP0's car the 3 A left over, below its 6 A minimum, in every slot.
    end = T0 + timedelta(hours=4)
    return [PlanSession("CP0", T0, end, 5000.0, charging=charging, limit_now_a=6.0 if charging else None),
            PlanSession("CP1", T0, end, 40000.0, max_current_a=13.0)]


def test_a_charging_car_left_less_than_its_minimum_keeps_it_now() -> None:
    out = plan(topo(), np.full((16, 3), 16.0), sessions(charging=True), T0, mip_s=0.0)
    assert out.plan is not None
    limit = out.plan.limit_a
    assert limit[0, 0] == 6.0  # it goes on at its minimum (was 0: paused)
    assert limit[1, 0] == 10.0  # the other car gives way in that slot
    assert np.all(limit.sum(axis=0) <= 16.0 + 1e-9)
    assert np.all((limit == 0.0) | (limit >= 6.0 - 1e-9))
    assert out.plan.planned_wh["CP0"] <= 5000.0 + 1e-6


def test_a_car_not_charging_is_not_started_on_a_current_below_its_minimum() -> None:
    out = plan(topo(), np.full((16, 3), 16.0), sessions(charging=False), T0, mip_s=0.0)
    assert out.plan is not None
    assert out.plan.limit_a[0, 0] == 0.0
    assert out.plan.limit_a[1, 0] == 13.0
