"""Planner invariants with the issue-17 inputs (car maximum incl. 0, car minimum, single-phase
cars, needs below one slot at the minimum, a whole request larger than what is left): the plan
never exceeds a node's capacity on any phase in any slot, never plans a car above its maximum or
outside its stay, never plans between 0 and its minimum, never plans more energy than needed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from balancer.allocate import node_load_a
from balancer.model import Site
from balancer.plan import PlanSession, plan
from balancer.topology import Topology, phase_mask
from tests.balancer.strategies import sites

START = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
N_SLOTS = 16


@st.composite
def sessions_for(draw: st.DrawFn, topo: Topology) -> list[PlanSession]:
    out = []
    for cid in draw(st.lists(st.sampled_from(topo.charger_ids), unique=True, min_size=1, max_size=5)):
        first_min = draw(st.integers(0, 10 * 15))  # minutes: partly covered first and last slots too
        stay_min = draw(st.integers(5, N_SLOTS * 15 - first_min))
        energy = draw(st.one_of(st.floats(10.0, 1500.0), st.floats(1500.0, 60000.0)))
        requested = draw(st.one_of(st.none(), st.floats(energy, 3 * energy)))
        out.append(PlanSession(
            cid, START + timedelta(minutes=first_min), START + timedelta(minutes=first_min + stay_min), energy,
            max_current_a=draw(st.one_of(st.none(), st.sampled_from([0.0, 6.0, 10.0, 16.0, 32.0]))),
            min_current_a=draw(st.one_of(st.none(), st.sampled_from([0.0, 6.0, 8.0]))),
            phases=draw(st.one_of(st.none(), st.sampled_from([1, 3]))),
            requested_wh=requested,
        ))
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sites(max_chargers=6, max_circuits=3), st.data())
def test_plan_keeps_every_limit_with_car_limits_small_needs_and_protected_shares(site: Site,
                                                                               data: st.DataObject) -> None:
    topo = Topology.from_site(site)
    capacity = np.array(data.draw(st.lists(st.floats(0.0, site.grid_limit_a), min_size=N_SLOTS,
                                           max_size=N_SLOTS)))[:, None].repeat(3, axis=1)
    sessions = data.draw(sessions_for(topo))
    out = plan(topo, capacity, sessions, START, budget_s=10)
    assert out.plan is not None, out
    limit = out.plan.limit_a
    car_phases = np.full(topo.n_chargers, 3)
    for s in sessions:
        if s.phases is not None:
            car_phases[topo.index(s.charger_id)] = s.phases
    mask = phase_mask(topo, car_phases)
    node_cap = np.repeat(topo.node_limit_a[:, None], 3, axis=1)
    for t in range(N_SLOTS):
        cap = node_cap.copy()
        cap[0] = np.minimum(cap[0], capacity[t])
        assert np.all(node_load_a(topo, limit[:, t], mask) <= cap + 1e-6), t
    slot_start = np.array([START + timedelta(minutes=15 * t) for t in range(N_SLOTS)])
    for s in sessions:
        i = topo.index(s.charger_id)
        car_max = topo.max_current_a[i] if s.max_current_a is None else min(s.max_current_a, topo.max_current_a[i])
        car_min = topo.min_current_a[i] if s.min_current_a is None else max(s.min_current_a, topo.min_current_a[i])
        assert np.all(limit[i] <= car_max + 1e-9), (s, limit[i])
        assert np.all((limit[i] == 0) | (limit[i] >= car_min - 1e-9)), (s, limit[i])
        outside = (slot_start + timedelta(minutes=15) <= s.arrival) | (slot_start >= s.departure)
        assert np.all(limit[i, outside] == 0), s
        assert out.plan.planned_wh[s.charger_id] <= s.energy_wh + 1e-6
