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
