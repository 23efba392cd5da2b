"""Ended sessions for the OCPI Sessions list are kept per site (``ocpi:sessions_done:<site>``);
those of the single key of earlier versions are still listed and move to their site's key."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

from adapters.ocpi.simulator import OcpiParty
from adapters.ocpp.simulator import SimCar, SimulatedCharger
from adapters.store import StateStore
from tests.e2e.service import ServiceProcess
from tests.e2e.test_ocpi import CONFIG, TOKEN_A
from tests.e2e.test_service import until

OLD = {"id": "CP1-77", "site_id": "depot", "charger_id": "CP1", "start": "2026-01-05T08:00:00Z",
       "end": "2026-01-05T09:00:00Z", "kwh": 7.5, "uid": "OLDTAG"}
OLDER = {**OLD, "id": "CP1-76", "uid": "OLDERTAG"}
GONE = {**OLD, "id": "X-1", "site_id": "closed", "charger_id": "X"}
"""An ended session of a site no longer configured: left in the old key."""


async def test_ended_sessions_of_the_old_key_are_listed_and_move_to_their_sites_key(tmp_path: Path) -> None:
    seeded = StateStore(tmp_path / "state" / "state.sqlite")
    seeded.put_json("ocpi:sessions_done", [GONE, OLDER, OLD])
    seeded.put_json("ocpi:sessions_done:depot", [OLD])  # moved already (and written back by another owner)
    assert seeded.flush()
    seeded.close()
    service = ServiceProcess(tmp_path, CONFIG).start()
    party = await OcpiParty().start()
    now = datetime.now(UTC)  # a car that leaves after 4 s
    sim = SimulatedCharger("CP0", service.ocpp_url, meter_interval_s=0.5, tick_s=0.05,
                           car=SimCar(arrival=now, departure=now + timedelta(seconds=4), energy_wh=60000))
    sim.start()
    try:
        await party.register(f"{service.url}/ocpi/versions", TOKEN_A)
        assert [(s["id"], s["cdr_token"]["uid"]) for s in await party.sessions() if s["status"] == "COMPLETED"] == \
            [("CP1-76", "OLDERTAG"), ("CP1-77", "OLDTAG")]  # each once
        await until(lambda: bool(sim.session_log) and sim.session_log[0].stopped_at is not None, timeout=20)
        ended = f"CP0-{sim.session_log[0].transaction_id}"
        for _ in range(50):  # the service has taken the StopTransaction a moment later
            done = [s["id"] for s in await party.sessions() if s["status"] == "COMPLETED"]
            if len(done) == 3:
                break
            await asyncio.sleep(0.1)
        assert done == ["CP1-76", "CP1-77", ended]
    finally:
        await sim.stop()
        await party.stop()
        service.stop()
    kept = StateStore(tmp_path / "state" / "state.sqlite")
    assert [d["id"] for d in kept.get_json("ocpi:sessions_done:depot") or []] == ["CP1-76", "CP1-77", ended]
    assert kept.get_json("ocpi:sessions_done") == [GONE]
    kept.close()
