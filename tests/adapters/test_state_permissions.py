"""Files under state_dir are the owner's only: the state holds tokens (issue 19 item 9)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from adapters.app import Service
from adapters.influx import InfluxSink
from adapters.metrics import site_point
from adapters.store import StateStore
from balancer.config import parse_config
from balancer.model import InfluxSettings


@pytest.fixture(autouse=True)
def usual_umask() -> Iterator[None]:
    old = os.umask(0o022)  # the common default, under which files come out 0644
    yield
    os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_state_dir_0700_and_every_state_file_0600(tmp_path: Path) -> None:
    state = tmp_path / "state"
    config = parse_config({"sites": [{"id": "s", "grid_limit_a": 100, "fallback_kw": 10,
                                      "chargers": [{"id": "CP1", "max_current_a": 32}]}],
                           "oscp": {"token": "grid-token"}, "state_dir": str(state)})
    service = Service(config)
    try:
        service.store.put_json("oscp:our_token", "a-secret-token")
        assert mode(state) == 0o700
        files = sorted(state.iterdir())
        assert {f.name for f in files} >= {"state.sqlite", "state.sqlite-wal", "state.sqlite-shm"}
        assert {f.name: mode(f) for f in files} == {f.name: 0o600 for f in files}
    finally:
        service.store.close()
        service._executor.shutdown()


def test_files_from_before_are_made_private(tmp_path: Path) -> None:
    state = tmp_path / "old-state"
    state.mkdir(mode=0o755)
    store = StateStore(state / "state.sqlite")
    store.put_json("k", 1)
    store.close()
    for f in state.iterdir():
        f.chmod(0o644)
    state.chmod(0o755)
    store = StateStore(state / "state.sqlite")
    store.put_json("k", 2)
    try:
        assert mode(state) == 0o700
        assert {mode(f) for f in state.iterdir()} == {0o600}
    finally:
        store.close()


def test_influx_spill_files_are_private(tmp_path: Path) -> None:
    settings = InfluxSettings(url="http://127.0.0.1:9", api="v1", database="b", buffer_points=10)
    sink = InfluxSink(settings, tmp_path / "state" / "influx-spill")
    at = datetime(2026, 3, 1, tzinfo=UTC)
    sink.write([site_point("s", at, capacity_a=[1, 1, 1], capacity_source="forecast", allocated_a=[0, 0, 0],
                           measured_a=[0, 0, 0], grid_online=True, energy_requested_wh=0, energy_delivered_wh=0,
                           chargers_connected=0) for _ in range(30)])
    spilled = list((tmp_path / "state" / "influx-spill").iterdir())
    assert spilled
    assert mode(tmp_path / "state" / "influx-spill") == 0o700
    assert {mode(f) for f in spilled} == {0o600}
