"""Our OSCP client: heartbeats, measurements, compliance errors through a persisted outbox."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

from adapters.oscp.client import OscpClient
from adapters.oscp.simulator import GridOperatorSimulator
from adapters.store import StateStore
from tests.adapters.oscp_fixtures import config_for

T0 = datetime(2026, 3, 1, 0, 0, tzinfo=UTC)


async def wait_for(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not predicate():
        assert loop.time() < end, "timed out"
        await asyncio.sleep(0.02)


async def test_outbox_survives_outage_and_restart(tmp_path: Path) -> None:
    cp = GridOperatorSimulator(fp_url="http://127.0.0.1:9/unused", fp_token="x")
    await cp.start()
    port = cp.port
    await cp.stop()  # the Capacity Provider is down
    config = config_for(tmp_path, capacity_provider={"base_url": f"http://127.0.0.1:{port}/oscp/cp/2.0",
                                                     "token": "cp-secret"}, heartbeat_interval_s=3600,
                        measurement_interval_s=3600)
    store = StateStore(tmp_path / "state.sqlite")
    client = OscpClient(config, store, now=lambda: T0, base_backoff_s=0.05)
    await client.start()
    client.compliance_error("depot-1", "cannot comply", T0, T0, [10.0, 10.0, 10.0], correlation_id="req-7")
    await wait_for(lambda: client.failures >= 1)
    await client.stop()
    store.close()
    # Restart: same state dir, Capacity Provider back on the same port.
    cp = GridOperatorSimulator(fp_url="http://127.0.0.1:9/unused", fp_token="x")
    await cp.start(port=port)
    store = StateStore(tmp_path / "state.sqlite")
    assert store.outbox_size() >= 2  # heartbeat + compliance error kept
    client = OscpClient(config, store, now=lambda: T0, base_backoff_s=0.05)
    await client.start()
    try:
        await wait_for(lambda: cp.messages("group_capacity_compliance_error"))
        await wait_for(lambda: store.outbox_size() == 0)
        errors = cp.messages("group_capacity_compliance_error")
        assert len(errors) == 1 and errors[0]["message"] == "cannot comply"
        headers = next(h for p, _, h in cp.received if p == "group_capacity_compliance_error")
        assert headers["X-Correlation-ID"] == "req-7" and headers["X-Request-ID"]
        assert cp.messages("heartbeat")[0]["offline_mode_at"].startswith("2026-03-01T02:00:00")  # now + 2 x 3600 s
    finally:
        await client.stop()
        await cp.stop()
        store.close()


async def test_measurements_report_site_energy(tmp_path: Path) -> None:
    cp = GridOperatorSimulator(fp_url="http://127.0.0.1:9/unused", fp_token="x")
    await cp.start()
    config = config_for(tmp_path, capacity_provider={"base_url": cp.base_url, "token": "cp-secret"},
                        measurement_interval_s=3600)
    store = StateStore(tmp_path / "state.sqlite")
    client = OscpClient(config, store, now=lambda: T0, site_energy_wh=lambda site: 1234.5)
    await client.start()
    try:
        client.measurements()
        await wait_for(lambda: cp.messages("update_group_measurements"))
        body = cp.messages("update_group_measurements")[0]
        assert body["group_id"] == "grp-1" and body["measurements"][0]["value"] == 1234.5
        assert len(body["measurements"]) == 1  # no site meter: no TOTAL measurement
    finally:
        await client.stop()
        await cp.stop()
        store.close()


async def test_measurements_report_net_import_with_a_site_meter(tmp_path: Path) -> None:
    cp = GridOperatorSimulator(fp_url="http://127.0.0.1:9/unused", fp_token="x")
    await cp.start()
    config = config_for(tmp_path, capacity_provider={"base_url": cp.base_url, "token": "cp-secret"},
                        measurement_interval_s=3600)
    store = StateStore(tmp_path / "state.sqlite")
    client = OscpClient(config, store, now=lambda: T0, site_energy_wh=lambda site: 1234.5,
                        site_import_wh=lambda site: 9876.54)
    await client.start()
    try:
        client.measurements()
        await wait_for(lambda: cp.messages("update_group_measurements"))
        measurements = cp.messages("update_group_measurements")[0]["measurements"]
        assert [(m["energy_type"], m["value"]) for m in measurements] == [("FLEXIBLE", 1234.5), ("TOTAL", 9876.5)]
    finally:
        await client.stop()
        await cp.stop()
        store.close()
