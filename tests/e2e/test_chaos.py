"""A short chaos run (``bench/chaos.py``) in CI: ``balancer serve`` as a process, 36 simulated
chargers (1.6J and 2.0.1, one that ignores profiles, one that rejects them, one that never answers),
a grid operator with a dip every few seconds, reconnect storms, kill -9 and SIGTERM restarts, a
silent grid operator, a full state disk and 20 large forecasts; the safety outcomes are asserted
from the chargers' side (what they held, replayed from the profiles they accepted)."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from bench.chaos import Options, mount_tmpfs, run_chaos

SHORT = Options(chargers=36, duration_s=45.0, storm_size=18, forecast_every_s=(2.0, 3.5), heartbeat_every_s=1.0,
                offline_after_heartbeats=4.0, meter_interval_s=5.0, ignores=1, rejects=1, silent=1,
                tmpfs_size="16m", silent_grid_s=12.0, full_disk_s=5.0)


@pytest.fixture(scope="module")
def chaos(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    workdir = tmp_path_factory.mktemp("chaos")
    problem = mount_tmpfs(workdir / "state", SHORT.tmpfs_size)
    if problem is not None and os.environ.get("CI") == "true":
        pytest.fail(problem)
    try:
        # No tmpfs outside CI (not root): everything but the full-disk phase runs.
        yield asyncio.run(run_chaos(SHORT, workdir, tmpfs_ready=problem is None))
    finally:
        if problem is None:
            subprocess.run(["umount", "-l", str(workdir / "state")], check=False)


def test_every_fault_happened_and_the_replay_matches_the_chargers(chaos: dict[str, Any]) -> None:
    """The run is not vacuous: each fault took place and was seen, and the charger-side replay
    agrees with what each charger held live at the end."""
    assert chaos["chargers"]["total"] == 36
    assert chaos["chargers"]["silent"] == chaos["chargers"]["ignores_profiles"] == 1
    assert len(chaos["storms"]) == 3 and all(s["dropped"] >= 12 for s in chaos["storms"]), chaos["storms"]
    assert all(s["still_disconnected"] == 0 for s in chaos["storms"])
    assert [k["exit_code"] for k in chaos["kills"]] == [-9, -9]
    assert [k["exit_code"] for k in chaos["sigterms"]] == [0]
    assert chaos["silent_grid_operator"]["capacity_source_at_end"] == "fallback_config"
    assert chaos["large_forecasts"]["statuses"] == ["204"]
    if "skipped" not in chaos["full_disk"]:
        assert "degraded" in chaos["full_disk"]["healthz_status_seen"]
        assert chaos["full_disk"]["healthz_2s_after"] == "ok"
    assert chaos["decreases"]["total"] >= 4
    assert chaos["profiles_accepted"] > 36
    assert chaos["replay_check"]["replayed_differs_from_live_at_end"] == []


def test_every_session_is_known_after_a_kill_9_and_nothing_outlives_it(chaos: dict[str, Any]) -> None:
    """Issue 19 items 1 and 8, with a silent charger present."""
    for kill in [*chaos["kills"], *chaos["sigterms"]]:
        assert kill["silent_chargers_present"] == 1
        assert kill["sessions_running"] > 0
        assert kill["sessions_known_after_restart"] == kill["sessions_running"], kill
        assert kill["sessions_known_10s_after"] == kill["sessions_running_10s_after"], kill
    for kill in chaos["kills"]:
        assert kill["children_before"] >= 1 and kill["orphans_3s_after"] == 0, kill


def test_the_services_own_pushes_hold_no_current_above_capacity_and_reach_every_charger_in_5_s(
        chaos: dict[str, Any]) -> None:
    """Issue 11 items 1 and 9 (branch safety): the obedient chargers' held limits, replayed from what
    they accepted, never sum above the capacity outside 5 s after a decrease, and every decrease
    reaches them within 5 s, through reconnect storms, kill -9 and SIGTERM restarts."""
    own = chaos["held_above_capacity"]["obedient_chargers_only"]
    assert own["outside_5s_after_decrease"]["a_s"] == 0, own
    reached, total = own["decreases_reached_within_5s"]
    assert reached == total, own


def test_no_current_is_held_above_capacity_outside_5_s_after_a_decrease(chaos: dict[str, Any]) -> None:
    """Issue 11 items 1 and 10: what the chargers hold (what the misbehaving ones draw) sums to no
    more than the capacity, except within 5 s after a decrease. The last excesses were after
    restarts and reconnects: a session not yet reconnected after a kill -9 reserved at a snapshot
    that lagged a raise (12.2 A for 44 ms), and a reconnected charger raised in the fan-out's first
    phase next to the decreases (0.1 A for 5 ms)."""
    outside = chaos["held_above_capacity"]["outside_5s_after_decrease"]
    assert outside["a_s"] == 0 and outside["peak_a"] == 0, chaos["held_above_capacity"]


def test_every_decrease_reaches_the_chargers_within_5_s(chaos: dict[str, Any]) -> None:
    decreases = chaos["decreases"]
    assert decreases["reached_within_5s"] == decreases["total"], decreases
