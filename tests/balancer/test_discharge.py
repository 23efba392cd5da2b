"""V2X discharge in the allocator (DESIGN 3.9): peak shaving within capacity, fuses and export,
never below what a car needs by departure, and a compliance error only where nothing could help."""

from __future__ import annotations

import dataclasses

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.optimize import linprog

from balancer.allocate import AllocationRequest, allocate, code_number
from balancer.discharge import discharge_bound_a
from balancer.model import Charger, LimitCode, Site
from balancer.topology import Topology, phase_mask
from tests.balancer.strategies import sites

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TOL = 1e-6


def v2x_request(site: Site, data: st.DataObject) -> tuple[AllocationRequest, np.ndarray]:
    """A random instant: charging cars, V2X cars with discharge bounds, and a connection whose
    non-EV load may exceed the capacity (the deficit). Returns the request and the connection's
    capacity less non-EV load (negative where there is a deficit)."""
    topo = Topology.from_site(site)
    n = topo.n_chargers
    car_phases = np.array(data.draw(st.lists(st.sampled_from([1, 3]), min_size=n, max_size=n)))
    wants = np.array(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    max_a = np.where(wants, topo.max_current_a, 0.0)
    v2x = np.array(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    bound = np.where(v2x, np.array(data.draw(st.lists(st.floats(0.0, 40.0), min_size=n, max_size=n))), 0.0)
    net = np.array(data.draw(st.lists(st.floats(-60.0, 150.0), min_size=3, max_size=3)))  # capacity - non-EV
    net = np.minimum(net, topo.node_limit_a[0])
    capacity = np.repeat(topo.node_limit_a[:, None], 3, axis=1).astype(np.float64)
    capacity[0] = np.maximum(net, 0.0)
    export = np.array(data.draw(st.lists(st.floats(0.0, 80.0), min_size=3, max_size=3)))
    req = AllocationRequest(
        topology=topo, capacity_a=capacity, phase_mask=phase_mask(topo, car_phases), min_a=topo.min_current_a,
        max_a=max_a, deficit_a=np.maximum(-net, 0.0), discharge_max_a=bound, export_room_a=export,
    )
    return req, net


def coverable(req: AllocationRequest, step: float) -> bool:
    """Can the V2X cars cover the deficit plus ``step`` per phase (continuous, bounds floored to
    their granularity) within every fuse and the export room? An LP feasibility check."""
    topo = req.topology
    deficit = np.asarray(req.deficit_a)
    assert req.discharge_max_a is not None and req.export_room_a is not None
    gran = topo.granularity_a
    hi = np.floor(req.discharge_max_a / gran + 1e-9) * gran
    mask = np.asarray(req.phase_mask, dtype=float)
    anc = topo.ancestors.toarray()
    a_ub, b_ub = [], []
    for p in range(3):
        if deficit[p] > 0:
            a_ub.append(-mask[:, p])
            b_ub.append(-(deficit[p] + step))
        a_ub.append(mask[:, p])
        b_ub.append(float(req.export_room_a[p]))
        for node in range(1, topo.n_nodes):
            a_ub.append(anc[node] * mask[:, p])
            b_ub.append(float(req.capacity_a[node, p]))
    res = linprog(np.zeros(topo.n_chargers), A_ub=np.array(a_ub), b_ub=np.array(b_ub),
                  bounds=list(zip(np.zeros(topo.n_chargers), hi, strict=True)), method="highs")
    return bool(res.status == 0)


@SETTINGS
@given(sites(max_chargers=12, max_circuits=4), st.data())
def test_discharge_keeps_the_connection_within_capacity_where_possible(site: Site, data: st.DataObject) -> None:
    req, net = v2x_request(site, data)
    topo = req.topology
    out = allocate(req)
    mask = np.asarray(req.phase_mask, dtype=float)
    limit = out.limit_a
    charge, discharge = np.maximum(limit, 0.0), np.maximum(-limit, 0.0)
    assert req.discharge_max_a is not None and req.export_room_a is not None and req.deficit_a is not None
    # Bounds: never beyond a charger's discharge bound, never both.
    assert np.all(discharge <= req.discharge_max_a + TOL)
    assert np.all(charge <= req.max_a + TOL)
    # Fuses carry both directions: charge plus discharge within every circuit's room.
    anc = topo.ancestors.toarray()
    for node in range(1, topo.n_nodes):
        through = anc[node] @ ((charge + discharge)[:, None] * mask)
        assert np.all(through <= req.capacity_a[node] + TOL)
    # The connection: net import within capacity less non-EV load, net export within the room.
    net_draw = (charge[:, None] * mask).sum(axis=0) - (discharge[:, None] * mask).sum(axis=0)
    assert np.all(net_draw >= -np.asarray(req.export_room_a) - TOL)
    if out.status != "infeasible":
        assert np.all(net_draw <= net + TOL), (net_draw, net)
    else:
        assert "V2X" in out.message or "cannot pause" in out.message
    # No deficit, no discharge; a deficit that the cars can cover is covered.
    if not np.any(req.deficit_a > 0):
        assert not discharge.any()
    step = float(topo.granularity_a.max())
    if np.any(req.deficit_a > 0) and coverable(req, step):
        assert out.status != "infeasible", out.message
    # Discharging chargers say so.
    for i in np.flatnonzero(discharge > 0):
        assert out.reason[i] == code_number(LimitCode.DISCHARGE)
        assert out.reason_node[i] == 0


def test_a_building_peak_is_carried_by_the_v2g_car_and_nobody_else_charges_on_it() -> None:
    site = Site(id="office", voltage_v=230.0, grid_limit_a=63.0, fallback_kw=20.0, chargers=(
        Charger(id="V2G", max_current_a=32.0, allow_discharge=True),
        Charger(id="AC1", max_current_a=32.0),
    ))
    topo = Topology.from_site(site)
    capacity = np.repeat(topo.node_limit_a[:, None], 3, axis=1).astype(np.float64)
    capacity[0] = 0.0  # non-EV load 50 A against 40 A in force: 10 A short on every phase
    req = AllocationRequest(topology=topo, capacity_a=capacity, phase_mask=topo.charger_phase_mask,
                            min_a=topo.min_current_a, max_a=np.array([32.0, 32.0]),
                            deficit_a=np.array([10.0, 10.0, 10.0]), discharge_max_a=np.array([16.0, 0.0]),
                            export_room_a=np.array([50.0, 50.0, 50.0]))
    out = allocate(req)
    assert out.status == "short"
    assert -16.0 <= out.limit_a[0] <= -10.0
    assert out.limit_a[1] == 0.0
    assert out.code(0) is LimitCode.DISCHARGE
    # Without the V2G car the deficit stands: a compliance error that says why.
    none = allocate(dataclasses.replace(req, discharge_max_a=np.zeros(2)))
    assert none.status == "infeasible"
    assert "10.0 A on L1" in none.message
    assert np.all(none.limit_a == 0.0)


@settings(max_examples=300, deadline=None)
@given(need_kwh=st.floats(0.0, 80.0), left_h=st.floats(0.0, 24.0), charge_a=st.floats(6.0, 32.0),
       dis_a=st.floats(0.0, 32.0), phases=st.sampled_from([1, 3]), hold_s=st.sampled_from([5.0, 60.0, 900.0]))
def test_discharge_never_leaves_a_car_short_when_its_need_was_reachable(
        need_kwh: float, left_h: float, charge_a: float, dis_a: float, phases: int, hold_s: float) -> None:
    need = need_kwh * 1000.0
    bound = float(discharge_bound_a(need_wh=np.array([need]), seconds_left=np.array([left_h * 3600.0]),
                                    charge_max_a=np.array([charge_a]), discharge_max_a=np.array([dis_a]),
                                    phases=np.array([phases]), voltage_v=230.0, hold_s=hold_s)[0])
    assert 0.0 <= bound <= dis_a
    if bound > 0:
        wh_per_a_s = phases * 230.0 / 3600.0
        need_after = need + bound * wh_per_a_s * hold_s
        reachable_after = charge_a * wh_per_a_s * (left_h * 3600.0 - hold_s)
        assert need_after <= reachable_after + 1e-6


def test_unknown_need_or_spent_minimum_soc_means_no_discharge() -> None:
    common = dict(seconds_left=np.array([36000.0, 36000.0]), charge_max_a=np.array([16.0, 16.0]),
                  discharge_max_a=np.array([16.0, 16.0]), phases=np.array([3, 3]), voltage_v=230.0, hold_s=900.0)
    unknown = discharge_bound_a(need_wh=np.array([np.nan, 1000.0]), **common)  # type: ignore[arg-type]
    assert unknown[0] == 0.0 and unknown[1] == 16.0
    spent = discharge_bound_a(need_wh=np.array([1000.0, 1000.0]), spare_wh=np.array([0.0, np.nan]),
                              **common)  # type: ignore[arg-type]
    assert spent[0] == 0.0 and spent[1] == 16.0
