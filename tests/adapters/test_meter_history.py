"""Meter history in the state store, and the planner's non-EV forecast made from it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from adapters.meter.hub import MeterHub
from adapters.store import StateStore
from balancer.config import parse_config
from balancer.control import Controller
from balancer.events import SiteMeterReading

MONDAY = datetime(2026, 3, 2, tzinfo=UTC)


def hub_for(tmp: Path, store: StateStore, now: datetime) -> tuple[MeterHub, Controller]:
    config = parse_config({"sites": [{"id": "s", "grid_limit_a": 100, "fallback_kw": 60,
                                      "meter": {"source": "http", "fallback_base_load_a": 30}}],
                           "state_dir": str(tmp)})
    controller = Controller(config.sites[0], config.control)
    hub = MeterHub(config, {"s": controller}, store, now=lambda: now, urgent=lambda s: None, wake=lambda: None)
    return hub, controller


def test_history_survives_a_restart_and_feeds_the_planner(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.sqlite")
    hub, controller = hub_for(tmp_path, store, MONDAY)
    # Two Mondays: 45 A from 12:00 to 13:00, 5 A otherwise; a reading every minute.
    for week in range(2):
        for minute in range(0, 24 * 60 + 15, 1):
            at = MONDAY + timedelta(weeks=week, minutes=minute)
            load = (45.0 if 12 * 60 <= minute < 13 * 60 else 5.0) - 0.01 * (minute % 2)  # a live meter moves
            assert hub.on_reading(SiteMeterReading("s", at, (load, load, load))) is None
    store.flush()
    store.close()
    store = StateStore(tmp_path / "state.sqlite")
    now = MONDAY + timedelta(weeks=2, hours=11)
    hub, controller = hub_for(tmp_path, store, now)
    assert len(hub.history["s"]) >= 2 * 96
    hub._update_forecast("s", now)
    assert controller.non_ev_forecast is not None
    start, values = controller.non_ev_forecast
    assert start == now
    np.testing.assert_allclose(values[0], [5.0] * 3, atol=0.02)      # 11:00: quiet
    np.testing.assert_allclose(values[4:8], [[45.0] * 3] * 4, atol=0.02)   # 12:00-13:00: the peak
    np.testing.assert_allclose(values[8], [5.0] * 3, atol=0.02)
    # Tuesday has no history yet: the fallback (no reading since the restart).
    np.testing.assert_allclose(values[13 * 4 + 4], [30.0] * 3)
    store.close()


def test_net_import_register_and_total_measurement_to_the_grid_operator(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.sqlite")
    hub, _ = hub_for(tmp_path, store, MONDAY)
    assert hub.energy_wh("s") == 0.0
    for k, load in enumerate((10.0, 10.0, -50.0, 20.0)):  # the export at k=2 is not import
        hub.on_reading(SiteMeterReading("s", MONDAY + timedelta(seconds=5 * k), (load, load + 0.01 * k, load)))
    # trapezoids over 5 s: 30 A to 30 A, 30 A to 0 A (export counts 0), 0 A to 60 A (three phases summed)
    expected = (30.005 + 15.005 + 30.015) * 230 * 5 / 3600
    assert abs((hub.energy_wh("s") or 0.0) - expected) < 0.01
    assert hub.energy_wh("nope") is None
    store.close()
