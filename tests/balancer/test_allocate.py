"""Hand-made allocator cases with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from balancer.allocate import AllocationRequest, allocate
from balancer.model import Charger, Circuit, Site
from balancer.topology import Topology


def site_of(*chargers: Charger, grid: float = 32.0, circuits: tuple[Circuit, ...] = ()) -> Topology:
    return Topology.from_site(Site(id="s", voltage_v=230, grid_limit_a=grid, fallback_kw=10,
                                   circuits=circuits, chargers=chargers))


def run(topo: Topology, capacity: float | np.ndarray | None = None, **kw: object) -> np.ndarray:
    cap = np.repeat(topo.node_limit_a[:, None], 3, axis=1) if capacity is None else capacity
    if np.isscalar(cap):
        cap = np.repeat(topo.node_limit_a[:, None], 3, axis=1)
        cap[0, :] = capacity
    req = AllocationRequest(topology=topo, capacity_a=np.asarray(cap, dtype=float),
                            phase_mask=topo.charger_phase_mask, min_a=topo.min_current_a,
                            max_a=topo.max_current_a, **kw)  # type: ignore[arg-type]
    return allocate(req).limit_a


def test_equal_split_when_short() -> None:
    topo = site_of(*(Charger(id=f"C{i}", max_current_a=32) for i in range(3)), grid=48)
    np.testing.assert_allclose(run(topo), [16, 16, 16])


def test_everyone_max_when_enough() -> None:
    topo = site_of(Charger(id="A", max_current_a=16), Charger(id="B", max_current_a=10), grid=100)
    np.testing.assert_allclose(run(topo), [16, 10])


def test_capped_charger_leaves_rest_to_others() -> None:
    topo = site_of(Charger(id="A", max_current_a=10), Charger(id="B", max_current_a=32), grid=40)
    np.testing.assert_allclose(run(topo), [10, 30])


def test_priority_gets_more_when_short() -> None:
    topo = site_of(Charger(id="A", max_current_a=32, priority=3), Charger(id="B", max_current_a=32), grid=32)
    limits = run(topo)
    # Both get their 6 A minimum; the 20 A above it is shared 3:1 by weight.
    assert limits[0] == pytest.approx(21.0) and limits[1] == pytest.approx(11.0)


def test_not_everyone_fits_at_minimum_priority_decides() -> None:
    topo = site_of(Charger(id="A", max_current_a=32), Charger(id="B", max_current_a=32, priority=2), grid=10)
    np.testing.assert_allclose(run(topo), [0, 10])


def test_rotation_serves_everyone_over_time() -> None:
    topo = site_of(*(Charger(id=f"C{i}", max_current_a=32) for i in range(4)), grid=12)
    served = np.zeros(4)
    for period in range(4):
        served += run(topo, now_s=period * 900.0 + 1, rotation_period_s=900.0) > 0
    assert served.min() >= 1  # nobody starves across four periods


def test_single_phase_chargers_saturate_only_their_phase() -> None:
    topo = site_of(Charger(id="A", phases=1, phase="L1", max_current_a=32),
                   Charger(id="B", phases=1, phase="L1", max_current_a=32),
                   Charger(id="C", phases=1, phase="L2", max_current_a=32), grid=40)
    np.testing.assert_allclose(run(topo), [20, 20, 32])


def test_circuit_bottleneck_frees_capacity_for_others() -> None:
    topo = site_of(Charger(id="A", circuit="row", max_current_a=32), Charger(id="B", circuit="row", max_current_a=32),
                   Charger(id="C", max_current_a=32), grid=60,
                   circuits=(Circuit(id="row", max_current_a=20),))
    np.testing.assert_allclose(run(topo), [10, 10, 32])


def test_integer_amps_round_down_and_the_rest_is_handed_out() -> None:
    # 40 A / 3 = 13.33 A: whole amperes round down to 13 A, and the 1 A that leaves goes to the
    # first in the admission order.
    topo = site_of(*(Charger(id=f"C{i}", max_current_a=32, integer_amps=True) for i in range(3)), grid=40)
    limits = run(topo)
    assert list(limits) == [14.0, 13.0, 13.0]


def test_rounding_leftovers_go_to_each_phase_on_its_own() -> None:
    # Two whole-ampere single-phase chargers on L1 and two on L2, 13 A per phase: 6.5 A each,
    # rounded to 6; each phase's 1 A goes to its first charger. (The L1 charger that is refused
    # must not hold back the L2 one.)
    topo = site_of(*(Charger(id=f"C{i}", max_current_a=16, phases=1, phase=("L1", "L1", "L2", "L2")[i],
                             integer_amps=True) for i in range(4)), grid=13)
    assert list(run(topo)) == [7.0, 6.0, 7.0, 6.0]


def test_rounding_leftovers_stay_within_every_fuse() -> None:
    # Two integer-amp chargers on a 15 A row, one outside it, 31 A at the connection: the fill
    # gives 7.5 / 7.5 / 16; rounding cuts the row pair to 7 + 7, and only 1 A of the row's 15 goes
    # back (the row has 1 A left, the connection 1 A).
    row = Circuit(id="row", max_current_a=15)
    topo = site_of(Charger(id="A", max_current_a=16, circuit="row", integer_amps=True),
                   Charger(id="B", max_current_a=16, circuit="row", integer_amps=True),
                   Charger(id="C", max_current_a=16, integer_amps=True), grid=31, circuits=(row,))
    limits = run(topo)
    assert sorted(limits[:2].tolist()) == [7.0, 8.0] and limits[2] == 16.0


def test_target_is_filled_first_then_the_rest() -> None:
    topo = site_of(Charger(id="A", max_current_a=32), Charger(id="B", max_current_a=32), grid=40)
    limits = run(topo, target_a=np.array([30.0, np.nan]))
    assert limits[0] >= 30.0 - 1e-9 and limits.sum() == pytest.approx(40.0)


def test_planned_targets_come_before_minimums_the_plan_holds_back() -> None:
    # The planner gave A 24 A and told B and C to wait: A reaches its target before B or C take
    # a minimum of their own (else 6 A each for B and C would leave A at 18 A, against the plan),
    # and what is left still goes to a waiting car (work-conserving).
    topo = site_of(*(Charger(id=c, max_current_a=32) for c in "ABC"), grid=30)
    limits = run(topo, target_a=np.array([24.0, 0.0, 0.0]))
    assert limits[0] == pytest.approx(24.0)
    assert sorted(limits[1:].tolist()) == [0.0, 6.0]


def test_cannot_pause_minimum_reserved_first_and_infeasible_reported() -> None:
    topo = site_of(Charger(id="A", max_current_a=32, pause_method="min_current"),
                   Charger(id="B", max_current_a=32, priority=5), grid=8)
    req = AllocationRequest(topology=topo, capacity_a=np.array([[8.0, 8.0, 8.0]]),
                            phase_mask=topo.charger_phase_mask, min_a=topo.min_current_a,
                            max_a=topo.max_current_a, can_pause=topo.can_pause)
    result = allocate(req)
    np.testing.assert_allclose(result.limit_a, [8, 0])
    low = AllocationRequest(topology=topo, capacity_a=np.array([[4.0, 4.0, 4.0]]),
                            phase_mask=topo.charger_phase_mask, min_a=topo.min_current_a,
                            max_a=topo.max_current_a, can_pause=topo.can_pause)
    result = allocate(low)
    assert result.status == "infeasible" and result.limit_a.sum() == 0


def test_negative_or_nan_capacity_means_none() -> None:
    topo = site_of(Charger(id="A", max_current_a=32))
    assert run(topo, np.array([[np.nan, -5.0, 10.0]])).tolist() == [0.0]


def test_minimums_admitted_per_circuit_in_admission_order() -> None:
    # Two rows of 8 A, each room for one 6 A minimum; chargers interleaved across the rows, so the
    # prefix sums per row must keep the admission order (priority) within each row.
    rows = (Circuit(id="r1", max_current_a=8), Circuit(id="r2", max_current_a=8))
    topo = site_of(Charger(id="A", circuit="r1", max_current_a=32),
                   Charger(id="B", circuit="r2", max_current_a=32, priority=2),
                   Charger(id="C", circuit="r1", max_current_a=32, priority=3),
                   Charger(id="D", circuit="r2", max_current_a=32, priority=1),
                   grid=100, circuits=rows)
    np.testing.assert_allclose(run(topo), [0, 8, 8, 0])
