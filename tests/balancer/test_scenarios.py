"""Named edge cases as scenario files (``tests/scenarios/*.yaml``), for the allocator and the planner.

A scenario holds a ``description``, a ``site`` (a config site entry, see configs/README.md), the
situation and what is ``expected``. ``kind: allocate``: ``capacity_a`` [L1, L2, L3] at the connection
now and the ``cars`` plugged in (charger id -> optional ``max_current_a``, ``phases``, ``target_a``);
expected ``limits_a`` per charger (others 0), optionally ``status``, and optionally ``reasons``
(charger id -> "code [node phase]", DESIGN 3.6: ``capacity row-1 L1``, ``charger_max``; the
connection is named by the site id). ``kind: plan``: ``start``,
``capacity_a`` (one value per phase for every slot, or ``[from_slot, to_slot, [L1, L2, L3]]``
entries over a default), ``sessions`` as for ``balancer plan --sessions``; expected
``planned_wh`` (charger id -> [low, high]), ``zero_slots`` (charger id -> [from, to): no
current) and ``at_least_a`` (charger id -> [from, to, amperes]).
Every scenario is also checked against every limit, whatever its expectations say.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from balancer.allocate import AllocationRequest, allocate, node_load_a
from balancer.config import parse_config
from balancer.plan import PlanSession, plan
from balancer.reasons import allocation_limit
from balancer.topology import Topology, phase_mask
from tests.balancer.test_plan import check_plan

SCENARIOS = sorted((Path(__file__).resolve().parents[1] / "scenarios").glob("*.yaml"))
N_SLOTS = 96


def load(path: Path) -> tuple[dict[str, Any], Topology]:
    data = yaml.safe_load(path.read_text())
    assert set(data) >= {"description", "kind", "site", "expected"}, path.name
    site = parse_config({"sites": [data["site"]]}).sites[0]
    return data, Topology.from_site(site)


def run_allocate(data: dict[str, Any], topo: Topology) -> None:
    cars = data["cars"]
    wanting = np.array([cid in cars for cid in topo.charger_ids])
    car = [cars.get(cid) or {} for cid in topo.charger_ids]
    max_a = np.where(wanting, [min(c.get("max_current_a", m), m) for c, m in zip(car, topo.max_current_a,
                                                                                  strict=True)], 0.0)
    car_phases = np.array([c.get("phases", 3) for c in car])
    mask = phase_mask(topo, car_phases)
    capacity = np.repeat(topo.node_limit_a[:, None], 3, axis=1)
    capacity[0] = np.minimum(capacity[0], data["capacity_a"])
    target = np.array([c.get("target_a", np.nan) for c in car], dtype=np.float64)
    out = allocate(AllocationRequest(topology=topo, capacity_a=capacity, phase_mask=mask,
                                     min_a=topo.min_current_a, max_a=max_a,
                                     target_a=target if np.isfinite(target).any() else None))
    assert np.all(node_load_a(topo, out.limit_a, mask) <= capacity + 1e-9)
    assert np.all((out.limit_a == 0) | (out.limit_a >= topo.min_current_a - 1e-9))
    expected = data["expected"]
    want = [float(expected["limits_a"].get(cid, 0.0)) for cid in topo.charger_ids]
    np.testing.assert_allclose(out.limit_a, want, atol=1e-9, err_msg=str(dict(zip(topo.charger_ids, out.limit_a,
                                                                                  strict=True))))
    if "status" in expected:
        assert out.status == expected["status"]
    for cid, text in expected.get("reasons", {}).items():
        limit = allocation_limit(topo, out, topo.index(cid))
        got = " ".join(x for x in (limit.code.value, limit.node, limit.phase) if x)
        assert got == text, (cid, got, limit.detail)


def slot_capacity(spec: Any, topo: Topology) -> np.ndarray:
    if isinstance(spec, (int, float)):
        return np.full((N_SLOTS, 3), float(spec))
    capacity = np.full((N_SLOTS, 3), float(topo.node_limit_a[0]))
    for entry in spec:
        capacity[entry[0]:entry[1]] = entry[2]
    return capacity


def run_plan(data: dict[str, Any], topo: Topology) -> None:
    start = datetime.fromisoformat(data["start"])
    capacity = slot_capacity(data["capacity_a"], topo)
    sessions = [PlanSession(s["charger_id"], datetime.fromisoformat(s["arrival"]),
                            datetime.fromisoformat(s["departure"]), float(s["energy_wh"]),
                            s.get("max_current_a"), None, s.get("phases")) for s in data["sessions"]]
    out = plan(topo, capacity, sessions, start, budget_s=20)
    assert out.status == "optimal", out.message
    assert out.plan is not None
    check_plan(topo, capacity, sessions, out.plan)
    expected = data["expected"]
    for cid, (low, high) in expected.get("planned_wh", {}).items():
        assert low <= out.plan.planned_wh[cid] <= high, (cid, out.plan.planned_wh[cid])
    for cid, (first, last) in expected.get("zero_slots", {}).items():
        limits = out.plan.limit_a[topo.index(cid), first:last]
        assert np.all(limits == 0), (cid, limits.tolist())
    for cid, (first, last, low) in expected.get("at_least_a", {}).items():
        limits = out.plan.limit_a[topo.index(cid), first:last]
        assert np.all(limits >= low - 1e-9), (cid, limits.tolist())


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_scenario(path: Path) -> None:
    data, topo = load(path)
    {"allocate": run_allocate, "plan": run_plan}[data["kind"]](data, topo)


def test_there_are_scenarios_of_both_kinds() -> None:
    kinds = [yaml.safe_load(p.read_text())["kind"] for p in SCENARIOS]
    assert kinds.count("allocate") >= 5 and kinds.count("plan") >= 5
