"""V2X in the planner's LP (``balancer.plan_v2x``): discharge only against a deficit, within the
cars' bounds, fuses and export room, and never so much that a car's need is out of reach."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from balancer.allocate import node_load_a
from balancer.model import Charger, Circuit, Site
from balancer.plan import PlanSession, plan
from balancer.topology import Topology

START = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
TOL = 1e-6


def office(row_a: float | None = None) -> Topology:
    circuits = (Circuit(id="row", max_current_a=row_a),) if row_a else ()
    chargers = tuple(Charger(id=f"C{i}", max_current_a=32.0, allow_discharge=i < 2, circuit="row" if row_a else "")
                     for i in range(4))
    return Topology.from_site(Site(id="office", voltage_v=230.0, grid_limit_a=100.0, fallback_kw=20.0,
                                   circuits=circuits, chargers=chargers))


def session(cid: str, hours: float, need_kwh: float, dis_a: float | None) -> PlanSession:
    return PlanSession(charger_id=cid, arrival=START, departure=START + timedelta(hours=hours),
                       energy_wh=need_kwh * 1000.0, discharge_max_a=dis_a)


def test_a_noon_peak_is_carried_by_the_v2x_car_and_its_need_is_still_met() -> None:
    topo = office()
    n = 40  # 10 h
    capacity = np.full((n, 3), 60.0)
    deficit = np.zeros((n, 3))
    capacity[16:20] = 0.0  # noon: the building takes 70 A of 60 A in force
    deficit[16:20] = 10.0
    sessions = [session("C0", 10, 20.0, 16.0), session("C2", 10, 20.0, None)]
    out = plan(topo, capacity, sessions, START, deficit_a=deficit, export_room_a=np.full((n, 3), 70.0))
    assert out.status == "optimal", out.message
    assert out.plan is not None
    limit = out.plan.limit_a
    assert np.all(limit[0, 16:20] <= -10.0) and np.all(limit[0, 16:20] >= -16.0)
    assert np.all(limit[1:, 16:20] <= 0.0)  # nobody charges on the peak
    assert np.all(limit[:, :16] >= 0.0) and np.all(limit[:, 20:] >= 0.0)  # no deficit, no discharge
    wh_per_a = 3 * 230.0 * 0.25
    net_c0 = float(limit[0].sum() * wh_per_a)
    rounding = 0.1 * wh_per_a * np.count_nonzero(limit[0])  # limits go to 0.1 A steps
    assert net_c0 >= 20000.0 - rounding  # the car leaves with what it needs
    assert out.plan.planned_wh["C0"] <= 20000.0 + TOL


def test_without_v2x_the_model_is_unchanged() -> None:
    topo = office()
    n = 8
    capacity = np.full((n, 3), 40.0)
    sessions = [session("C0", 2, 10.0, None), session("C2", 2, 10.0, None)]
    a = plan(topo, capacity, sessions, START)
    b = plan(topo, capacity, sessions, START, deficit_a=np.zeros((n, 3)))
    assert a.plan is not None and b.plan is not None
    assert np.array_equal(a.plan.limit_a, b.plan.limit_a)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_plan_discharge_properties(data: st.DataObject) -> None:
    row = data.draw(st.one_of(st.none(), st.floats(20.0, 80.0)))
    topo = office(row)
    n = 16
    capacity = np.array(data.draw(st.lists(st.lists(st.floats(0.0, 60.0), min_size=3, max_size=3),
                                           min_size=n, max_size=n)))
    short = np.array(data.draw(st.lists(st.lists(st.floats(0.0, 30.0), min_size=3, max_size=3),
                                        min_size=n, max_size=n)))
    short = np.where(capacity > 20.0, 0.0, short)
    capacity = np.where(short > 0, 0.0, capacity)
    # The export room counts from the chargers' side: the export limit plus the non-EV load,
    # which is at least the deficit.
    export = short + np.array(data.draw(st.lists(st.floats(0.0, 40.0), min_size=3, max_size=3)))[None, :]
    sessions = []
    for i in range(4):
        if data.draw(st.booleans()):
            hours = data.draw(st.floats(0.5, 4.0))
            need = data.draw(st.floats(0.0, 40.0))
            dis = data.draw(st.floats(1.0, 32.0)) if i < 2 and data.draw(st.booleans()) else None
            sessions.append(session(f"C{i}", hours, need, dis))
    if not sessions:
        return
    out = plan(topo, capacity, sessions, START, deficit_a=short, export_room_a=export, fine_slots=None)
    assert out.status in ("optimal", "no_sessions"), out.message
    assert out.plan is not None
    limit = out.plan.limit_a
    mask = topo.charger_phase_mask
    charge, dis = np.maximum(limit, 0.0), np.maximum(-limit, 0.0)
    by_id = {s.charger_id: s for s in sessions}
    for i, cid in enumerate(topo.charger_ids):
        bound = by_id[cid].discharge_max_a if cid in by_id else None
        assert np.all(dis[i] <= (bound or 0.0) + TOL)
    for t in range(n):
        # Discharge only against a deficit on a phase the car loads.
        for i in np.flatnonzero(dis[:, t] > 0):
            assert np.any(short[t][mask[i]] > 0)
        # Fuses carry both directions; the connection: net within raw capacity unless the deficit
        # is beyond what the cars could carry, and never past the export room.
        through = node_load_a(topo, charge[:, t] + dis[:, t], mask)
        assert np.all(through[1:] <= topo.node_limit_a[1:, None] + TOL)
        net = (charge[:, t, None] * mask).sum(axis=0) - (dis[:, t, None] * mask).sum(axis=0)
        assert np.all(net >= -export[t] - 0.1 * 4 - TOL)  # a rounding step per car at most
        assert np.all(charge[:, t] @ mask <= np.maximum(capacity[t], 0.0) + (dis[:, t] @ mask) + TOL)
    # The need stays reachable at the car's maximum charge rate (DESIGN 3.9).
    wh_per_a = 3 * 230.0 * 0.25
    for i, cid in enumerate(topo.charger_ids):
        s = by_id.get(cid)
        if s is None or s.discharge_max_a is None or not dis[i].any():
            continue
        stay = min(int(np.ceil((s.departure - START).total_seconds() / 900.0 - 1e-9)), n)
        cover = np.clip((s.departure - START).total_seconds() / 900.0 - np.arange(n), 0.0, 1.0)
        busy = dis[i] / s.discharge_max_a
        reachable = float(np.sum(32.0 * wh_per_a * cover[:stay] * (1.0 - busy[:stay]))) \
            - float(np.sum(dis[i, :stay] * wh_per_a * cover[:stay]))
        # Rounding the discharge up to 0.1 A may take a few Wh more than the LP planned.
        assert reachable >= s.energy_wh - 0.1 * wh_per_a * stay * (1.0 + 32.0 / s.discharge_max_a) - 1.0
