"""The arrival forecast's history in the state store: finished sessions survive a restart."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from adapters.app import Service
from balancer.events import SessionStarted, SessionStopped
from tests.adapters.test_sleepy_car_service import config


def test_finished_sessions_are_kept_in_the_state_store_across_a_restart(tmp_path: Path) -> None:
    service = Service(config(tmp_path))
    at = datetime(2026, 3, 2, 18, 0, tzinfo=UTC)
    service.controllers["s"].handle(SessionStarted("CP0", at, transaction_id="t1", meter_start_wh=1000.0))
    service.controllers["s"].handle(SessionStopped("CP0", at + timedelta(hours=2), transaction_id="t1",
                                                   meter_stop_wh=9000.0))
    service._persist()
    service.store.put_json("sessions:other", "junk")  # what does not parse is skipped, not fatal
    service.store.close()
    again = Service(config(tmp_path))
    try:
        kept = again.controllers["s"].history.sessions or []
        assert [(s.arrival, s.departure, s.energy_wh) for s in kept] == [(at, at + timedelta(hours=2), 8000.0)]
    finally:
        again.store.close()
