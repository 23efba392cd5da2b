"""Limits that carry their reason (DESIGN 3.6): the allocator's codes name a constraint that is tight,
and the controller adds the reasons only it knows."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from balancer.allocate import AllocationRequest, allocate, code_number, node_load_a
from balancer.control import Controller
from balancer.events import ChargerOffline, MeterSample, NeedsUpdated, ObedienceChanged
from balancer.model import LIMIT_CODES, Charger, Circuit, LimitCode, Site
from balancer.plan import Plan, PlanSession
from balancer.reasons import node_name, session_limits
from balancer.topology import Topology
from tests.balancer.chargers import online
from tests.balancer.strategies import sites
from tests.balancer.test_allocate_properties import SETTINGS, request_for
from tests.balancer.test_control import T0, connect_all, full_capacity

PAUSED_CODES = {LimitCode.PLAN, LimitCode.PRIORITY, LimitCode.PAUSED_MIN_NOT_ADMITTED}


def check_reasons(req: AllocationRequest) -> None:
    """Every charger's reason names a bound that is tight: a charger at its maximum says so; any
    other names the node and phase with the least room above it, and that room is less than one
    more step (its minimum when paused), give or take what rounding left at that node."""
    topo = req.topology
    out = allocate(req)
    assert len(out.reason) == len(out.reason_node) == len(out.reason_phase) == topo.n_chargers
    gran = topo.granularity_a
    hi = np.floor(np.maximum(np.asarray(req.max_a), 0.0) / gran + 1e-9) * gran
    lo = np.ceil(np.asarray(req.min_a) / gran - 1e-9) * gran
    mask = np.asarray(req.phase_mask, dtype=bool)
    wants = (hi > 0) & (hi >= lo) & mask.any(axis=1)
    room = np.maximum(np.asarray(req.capacity_a), 0.0) - node_load_a(topo, out.limit_a, mask)
    target = np.full(topo.n_chargers, np.nan) if req.target_a is None else np.asarray(req.target_a)
    for i in range(topo.n_chargers):
        code, node, phase = out.code(i), int(out.reason_node[i]), int(out.reason_phase[i])
        name = topo.charger_ids[i]
        if not wants[i] or out.limit_a[i] >= hi[i] - 1e-9:
            expected = LimitCode.CHARGER_MAX if req.max_a[i] >= topo.max_current_a[i] else LimitCode.CAR_MAX
            assert (code, node, phase) == (expected, -1, -1), (name, code, node, phase)
            continue
        nodes = topo.ancestors[:, i].nonzero()[0]
        phases = np.flatnonzero(mask[i])
        assert node in nodes and phase in phases, (name, node, phase)
        assert room[node, phase] <= room[np.ix_(nodes, phases)].min() + 1e-9, (name, "not the tightest")
        below = np.asarray(topo.ancestors[node].todense()).ravel() > 0
        rounding = float((gran * below).sum())  # as in test_work_conserving
        if out.limit_a[i] > 0:
            assert code is LimitCode.CAPACITY, (name, code)
            assert room[node, phase] < gran[i] + rounding + 1e-6, (name, room[node, phase])
            continue
        assert code in PAUSED_CODES, (name, code)
        assert room[node, phase] < max(lo[i], gran[i]) + rounding + 1e-6, (name, room[node, phase])
        held_back = np.isfinite(target[i]) and target[i] < max(lo[i], gran[i])  # a 0 A minimum needs a step
        assert (code is LimitCode.PLAN) == held_back, (name, code, target[i])
        if code is LimitCode.PRIORITY:
            running = below & (out.limit_a > 0)
            assert (topo.priority[running] > topo.priority[i]).any(), name


@SETTINGS
@given(sites(), st.data())
def test_every_reason_names_a_tight_bound(site: Site, data: st.DataObject) -> None:
    check_reasons(request_for(site, data))


@SETTINGS
@given(sites(), st.data())
def test_reasons_when_nothing_is_planned(site: Site, data: st.DataObject) -> None:
    req = request_for(site, data)
    check_reasons(AllocationRequest(topology=req.topology, capacity_a=req.capacity_a, phase_mask=req.phase_mask,
                                    min_a=req.min_a, max_a=req.max_a, now_s=req.now_s))


def test_max_code_from_the_caller_is_kept_at_the_bound() -> None:
    site = Site(id="s", voltage_v=230.0, grid_limit_a=100.0, fallback_kw=10.0,
                chargers=(Charger(id="A", max_current_a=32.0), Charger(id="B", max_current_a=32.0)))
    topo = Topology.from_site(site)
    external = code_number(LimitCode.EXTERNAL_CAP)
    out = allocate(AllocationRequest(topology=topo, capacity_a=np.full((1, 3), 100.0),
                                     phase_mask=topo.charger_phase_mask, min_a=topo.min_current_a,
                                     max_a=np.array([10.0, 32.0]),
                                     max_code=np.array([external, code_number(LimitCode.CHARGER_MAX)])))
    assert [out.code(0), out.code(1)] == [LimitCode.EXTERNAL_CAP, LimitCode.CHARGER_MAX]
    assert out.limit_a.tolist() == [10.0, 32.0]


def test_codes_are_small_integers_in_a_fixed_order() -> None:
    assert len(LIMIT_CODES) < 127 and LIMIT_CODES[code_number(LimitCode.CAPACITY)] is LimitCode.CAPACITY
    assert {c.value for c in LimitCode} >= {"capacity", "charger_max", "car_max", "plan", "paused_min_not_admitted",
                                           "priority", "not_drawing", "reserved_disobeying", "failsafe", "meter",
                                           "discharge", "external_cap"}


def two_rows() -> Site:
    chargers = (Charger(id="A", max_current_a=32.0, circuit="row"), Charger(id="B", max_current_a=32.0, circuit="row"),
                Charger(id="C", max_current_a=16.0), Charger(id="D", max_current_a=32.0),
                Charger(id="E", max_current_a=32.0), Charger(id="F", max_current_a=32.0))
    return Site(id="depot", voltage_v=230.0, grid_limit_a=63.0, fallback_kw=11.0,
                circuits=(Circuit(id="row", max_current_a=20.0),), chargers=chargers)


def test_controller_reasons_for_every_state() -> None:
    ctrl = Controller(two_rows())
    full_capacity(ctrl, 63.0)
    connect_all(ctrl, ["A", "B", "C", "D"])
    online(ctrl, "E", T0, "ocpp2.0.1")  # connected, no car
    ctrl.handle(NeedsUpdated("D", T0, max_current_a=13.0))
    ctrl.decide(T0)
    reasons = {c["id"]: c["limit_reason"] for c in ctrl.status(T0).chargers}
    assert reasons["A"] == {"code": "capacity", "node": "row", "phase": "L1", "detail": reasons["A"]["detail"]}
    assert "row on L1" in reasons["A"]["detail"]
    assert reasons["C"]["code"] == "charger_max" and reasons["C"]["node"] is None
    assert reasons["D"]["code"] == "car_max"
    assert reasons["E"]["code"] == "not_drawing" and "idle limit" in reasons["E"]["detail"]
    assert reasons["F"]["code"] == "failsafe" and reasons["F"]["node"] is None
    assert all(set(r) == {"code", "node", "phase", "detail"} and r["detail"] for r in reasons.values())

    # Less capacity: the connection binds (its node is the site id); a car drawing little is not_drawing.
    later = T0 + timedelta(seconds=30)
    full_capacity(ctrl, 30.0, later)
    ctrl.handle(MeterSample("C", later, current_a=(2.0, 2.0, 2.0)))
    ctrl.handle(ObedienceChanged("B", later, obeys=False, draw_a=12.0))
    ctrl.decide(later)
    reasons = {c["id"]: c["limit_reason"] for c in ctrl.status(later).chargers}
    assert reasons["A"]["code"] == "capacity" and reasons["A"]["node"] == "depot"
    assert reasons["B"]["code"] == "reserved_disobeying" and "12.0 A" in reasons["B"]["detail"]
    assert reasons["C"]["code"] == "not_drawing" and "draws 2.0 A" in reasons["C"]["detail"]
    changes = {cid: (old[0], new.code) for cid, old, new in ctrl.take_reason_changes()}
    assert changes["B"] == (LimitCode.CAPACITY, LimitCode.RESERVED_DISOBEYING)
    assert changes["C"] == (LimitCode.CHARGER_MAX, LimitCode.NOT_DRAWING)
    assert "F" not in changes  # still offline
    assert ctrl.take_reason_changes() == []  # taken once

    ctrl.handle(ChargerOffline("D", later))
    reasons = {c["id"]: c["limit_reason"] for c in ctrl.status(later).chargers}
    assert reasons["D"]["code"] == "failsafe" and "reserved" in reasons["D"]["detail"]


def test_paused_by_priority_and_by_rotation() -> None:
    chargers = (Charger(id="hi", max_current_a=32.0, priority=2), Charger(id="lo", max_current_a=32.0, priority=1),
                Charger(id="eq1", max_current_a=32.0, circuit="row"),
                Charger(id="eq2", max_current_a=32.0, circuit="row"))
    site = Site(id="s", voltage_v=230.0, grid_limit_a=100.0, fallback_kw=10.0,
                circuits=(Circuit(id="row", max_current_a=10.0),), chargers=chargers)
    topo = Topology.from_site(site)

    def run(capacity: list[list[float]], max_a: list[float]) -> dict[str, tuple[float, LimitCode, str | None]]:
        out = allocate(AllocationRequest(topology=topo, capacity_a=np.array(capacity),
                                         phase_mask=topo.charger_phase_mask, min_a=topo.min_current_a,
                                         max_a=np.array(max_a)))
        return {cid: (float(out.limit_a[i]), out.code(i), node_name(topo, int(out.reason_node[i])))
                for i, cid in enumerate(topo.charger_ids)}

    # 10 A at the connection: "hi" comes first and takes it all; "lo" waits for priority.
    got = run([[10.0] * 3, [10.0] * 3], [32.0, 32.0, 0.0, 0.0])
    assert got["hi"] == (10.0, LimitCode.CAPACITY, "s") and got["lo"] == (0.0, LimitCode.PRIORITY, "s")
    # Two equals in a 10 A row: one waits its turn, bound by the row.
    got = run([[100.0] * 3, [10.0] * 3], [0.0, 0.0, 32.0, 32.0])
    assert sorted(got[c][:2] for c in ("eq1", "eq2")) == [(0.0, LimitCode.PAUSED_MIN_NOT_ADMITTED),
                                                            (10.0, LimitCode.CAPACITY)]
    assert got["eq1"][2] == got["eq2"][2] == "row"
    assert got["hi"][1] is got["lo"][1] is LimitCode.CAR_MAX  # max_a 0: nothing wanted


def test_session_limits_say_why_each_car_gets_what_it_gets_in_its_first_slot() -> None:
    """``balancer plan``'s reason column: 16 A, the plan gives A and B their targets now and holds C
    back; D arrives an hour later alone and gets its car's maximum."""
    site = Site(id="depot", voltage_v=230.0, grid_limit_a=63.0, fallback_kw=10.0,
                chargers=tuple(Charger(id=c, max_current_a=32.0) for c in "ABCD"))
    topo = Topology.from_site(site)
    start = T0
    later = start + timedelta(hours=1)
    sessions = [PlanSession("A", start, later, 5000.0), PlanSession("B", start, later, 5000.0),
                PlanSession("C", start, later + timedelta(hours=5), 5000.0),
                PlanSession("D", later, later + timedelta(hours=2), 5000.0, max_current_a=20.0)]
    limits = np.zeros((4, 96))
    limits[:2, :4] = 10.0
    plan = Plan(start=start, slot_s=900, charger_ids=topo.charger_ids, limit_a=limits)
    capacity = np.full((96, 3), 16.0)
    capacity[4:] = 63.0
    got = session_limits(topo, capacity, plan, sessions, start)
    assert [(got[c].value_a, got[c].code, got[c].node, got[c].phase) for c in "ABC"] == [
        (8.0, LimitCode.CAPACITY, "depot", "L1"), (8.0, LimitCode.CAPACITY, "depot", "L1"),
        (0.0, LimitCode.PLAN, "depot", "L1")]
    assert (got["D"].value_a, got["D"].code, got["D"].node) == (20.0, LimitCode.CAR_MAX, None)
    assert "plan" in got["C"].detail and got["D"].detail
