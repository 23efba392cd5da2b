"""The two grid-operator decisions as pure functions: ask for more capacity, report non-compliance."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np

from balancer.grid_reports import adjust_blocks, compliance_problem, known_needs_wh

T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
SLOT = timedelta(minutes=15)


def ask(**over: object) -> list[dict[str, object]]:
    args: dict[str, object] = dict(requested_wh=30_000.0, planned_wh=20_000.0, capacity_a=np.full((4, 3), 40.0),
                                   planned_load_a=np.array([40.0, 39.8, 20.0, 40.0]), start=T0, slot=SLOT,
                                   grid_limit_a=100.0, last_sent=None, now=T0)
    args.update(over)
    return adjust_blocks(**args)  # type: ignore[arg-type]


def test_asks_for_the_full_slots_scaled_by_the_shortfall() -> None:
    blocks = ask()
    assert [b["start_time"] for b in blocks] == ["2026-03-02T08:00:00Z", "2026-03-02T08:15:00Z", "2026-03-02T08:45:00Z"]
    assert {b["capacity"] for b in blocks} == {60.0}  # 40 A x (1 + 10 kWh / 20 kWh)
    assert blocks[0]["end_time"] == "2026-03-02T08:15:00Z" and blocks[0]["unit"] == "A"


def test_never_asks_above_the_connection_limit() -> None:
    assert {b["capacity"] for b in ask(grid_limit_a=50.0)} == {50.0}


def test_small_shortfall_nothing_planned_or_asked_within_the_hour() -> None:
    assert ask(requested_wh=20_900.0) == []
    assert ask(planned_wh=0.0) == []
    assert ask(last_sent=T0 - timedelta(minutes=59)) == []
    assert ask(last_sent=T0 - timedelta(minutes=60)) != []


def test_only_known_needs_count() -> None:
    assert known_needs_wh([("CP1", 10_000.0), ("CP2", 5_000.0)], {"CP1": 4_000.0, "CP2": 5_000.0}, {"CP1"}) \
        == (10_000.0, 4_000.0)


def test_compliance_once_per_slot_and_only_beyond_the_tolerance() -> None:
    cap = (40.0, 40.0, 40.0)
    assert compliance_problem(measured_a=(40.9, 0, 0), capacity_a=cap, allocation_status="optimal",
                              slot=T0, last_reported_slot=None) is None
    message = compliance_problem(measured_a=(42.5, 0, 0), capacity_a=cap, allocation_status="optimal",
                                 slot=T0, last_reported_slot=None)
    assert message == "measured draw exceeds capacity by 2.5 A"
    assert compliance_problem(measured_a=(42.5, 0, 0), capacity_a=cap, allocation_status="optimal",
                              slot=T0, last_reported_slot=T0) is None
    assert "cannot be paused" in str(compliance_problem(measured_a=(0, 0, 0), capacity_a=cap,
                                                        allocation_status="infeasible", slot=T0 + SLOT,
                                                        last_reported_slot=T0))
