"""The quality benchmark's generator is reproducible and its metrics are right on tiny cases."""

from __future__ import annotations

import numpy as np
import pytest

from bench.quality_metrics import jain_index, shares, summarise, violations
from bench.scenarios import SITE_TYPES, generate


@pytest.mark.parametrize("kind", SITE_TYPES)
def test_same_seed_same_day_other_seed_other_day(kind: str) -> None:
    a, b, c = generate(kind, 7), generate(kind, 7), generate(kind, 8)
    assert a.cars == b.cars and np.array_equal(a.capacity_a, b.capacity_a)
    assert a.cars != c.cars
    assert all(car.departure > car.arrival and car.energy_wh > 0 for car in a.cars)
    assert {car.phases for car in a.cars} <= {1, 3}


def test_site_types_have_their_shape() -> None:
    depot = generate("depot", 1)
    assert all(16 <= c.arrival.hour <= 20 for c in depot.cars)
    assert all(5 <= c.departure.hour <= 7 for c in depot.cars)
    office = generate("office", 1)
    assert all(7 <= c.arrival.hour <= 10 for c in office.cars)


def test_jain_index_known_values() -> None:
    assert jain_index([1, 1, 1, 1]) == pytest.approx(1.0)
    assert jain_index([1, 0, 0, 0]) == pytest.approx(0.25)
    assert jain_index([1, 2]) == pytest.approx(9 / 10)


def test_shares_cap_at_the_request() -> None:
    total, worst, each = shares([100, 200], [150, 50])
    assert each == [1.0, 0.25] and worst == 0.25 and total == pytest.approx(150 / 300)


def test_violations_count_and_worst() -> None:
    load = np.array([[10.0, 5.0], [12.0, 1.0]])
    cap = np.array([[10.0, 10.0], [10.0, 0.5]])
    assert violations(load, cap) == (2, 2.0)


def test_summarise_reports_every_metric() -> None:
    out = summarise([100.0], [100.0], np.zeros((2, 1, 3)), np.ones((2, 1, 3)), [0.9], [0.001, 0.002], 0)
    assert out["delivered"] == 1.0 and out["violations"] == 0 and out["capacity_used_when_short"] == 0.9
    assert out["decision_ms_median"] == pytest.approx(1.5)


@pytest.mark.parametrize("kind", SITE_TYPES)
def test_upper_bound_is_never_beaten_by_a_strategy_that_keeps_the_limits(kind: str) -> None:
    from bench.quality import perfect_foresight, simulate, upper_bound_wh

    scenario = generate(kind, 3)
    bound = upper_bound_wh(scenario) / sum(c.energy_wh for c in scenario.cars)
    assert 0 < bound <= 1 + 1e-9
    for result in (simulate(scenario, "our allocator alone"), simulate(scenario, "earliest deadline first"),
                   perfect_foresight(scenario)):
        assert result["violations"] == 0
        assert result["delivered"] <= bound + 1e-6


def test_churn_summary_counts_completed_sessions_and_per_car_rates() -> None:
    from bench.quality_metrics import churn_summary

    out = churn_summary([1000.0, 2000.0], [950.0, 1000.0], [3, 1], [2, 1], [10, 4])
    assert out["completed"] == 1.0  # 50 Wh short counts, 1 kWh short does not
    assert out["pauses_per_car"] == 2.0 and out["resumes_per_car"] == 1.5 and out["pushes_per_car"] == 7.0


def test_the_objective_bound_pays_for_the_protected_share_of_a_single_phase_car() -> None:
    """The second bound (``objective_bound_wh``): the foresight LP with the planner's own objective.
    A single-phase and a three-phase car share 16 A of L1 for 2 h, both wanting more than it holds:
    energy alone gives L1 to the three-phase car (three times the Wh per ampere), the planner's
    objective keeps the single-phase car's protected share (0.5 kWh) and pays 2 Wh for each Wh of it."""
    from datetime import UTC, datetime, timedelta

    from balancer.model import Charger, Site
    from bench.quality import objective_bound_wh, upper_bound_wh
    from bench.scenarios.generator import Car, Scenario

    start = datetime(2026, 3, 2, 17, 0, tzinfo=UTC)
    site = Site(id="s", voltage_v=230.0, grid_limit_a=16.0, fallback_kw=0.0, circuits=(),
                chargers=tuple(Charger(id=f"CP{i}", max_current_a=32.0, min_current_a=6.0) for i in range(2)))
    end = start + timedelta(hours=2)
    cars = (Car("one", "CP0", start, end, 8000.0, 32.0, 1), Car("three", "CP1", start, end, 30000.0, 32.0, 3))
    capacity = np.zeros((96, 3))
    capacity[:8] = 16.0
    day = Scenario("tiny", 0, site, cars, capacity, start)
    energy_only = upper_bound_wh(day)
    own = objective_bound_wh(day)
    assert energy_only == pytest.approx(16.0 * 3 * 230.0 * 2)  # all of it to the three-phase car
    assert own == pytest.approx(energy_only - 2 * 500.0)  # 500 Wh protected, bought with 1.5 kWh
