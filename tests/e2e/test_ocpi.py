"""OCPI 2.2.1 end to end: the service as a process, simulated chargers, a simulated SCSP, real HTTP."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from adapters.ocpi.simulator import OcpiParty
from adapters.ocpp.simulator import SimCar, SimulatedCharger
from tests.e2e.service import ServiceProcess
from tests.e2e.test_service import until

TOKEN = "admin-token"
TOKEN_A = "token-a-for-the-scsp"
CONFIG: dict[str, Any] = {
    "sites": [{"id": "depot", "voltage_v": 230, "grid_limit_a": 64, "fallback_kw": 44.16,
               "chargers": [{"id": f"CP{i}", "max_current_a": 32} for i in range(2)]}],
    "http": {"admin_token": TOKEN},
    "oscp": {"token": "oscp-token"},
    "control": {"interval_s": 0.5},
    "ocpi": {"country_code": "NL", "party_id": "EVB", "token_a": [TOKEN_A, "token-a-for-the-emsp"]},
}


@pytest.fixture
def service(tmp_path: Path):  # type: ignore[no-untyped-def]
    svc = ServiceProcess(tmp_path, CONFIG).start()
    yield svc
    svc.stop()


def chargers(url: str) -> list[SimulatedCharger]:
    now = datetime.now(UTC)
    return [SimulatedCharger(f"CP{i}", url, protocol="ocpp1.6" if i == 0 else "ocpp2.0.1",
                             car=SimCar(arrival=now, departure=now + timedelta(hours=8), energy_wh=60000),
                             meter_interval_s=0.5, tick_s=0.05) for i in range(2)]


def charger_json(service: ServiceProcess, cid: str) -> dict[str, Any]:
    return next(c for c in service.get("/api/v1/sites/depot", TOKEN)["chargers"] if c["id"] == cid)


def held(sim: SimulatedCharger) -> float:
    return sim.limit_now(datetime.now(UTC)) or 0.0


async def session_of(party: OcpiParty, cid: str) -> str:
    for _ in range(100):
        for session in await party.sessions():
            if session["evse_uid"] == cid and session["status"] == "ACTIVE":
                return str(session["id"])
        await asyncio.sleep(0.1)
    raise AssertionError(f"no session on {cid}")


async def test_registration_cap_reaches_the_charger_and_clearing_restores(service: ServiceProcess) -> None:
    party = await OcpiParty().start()
    sims = chargers(service.ocpp_url)
    for sim in sims:
        sim.start()
    try:
        status, body = await party.register(f"{service.url}/ocpi/versions", TOKEN_A)
        assert status == 200 and body["status_code"] == 1000 and body["data"]["roles"][0]["role"] == "CPO"
        assert party.token_c and party.token_c != TOKEN_A
        # Token A is spent: refused everywhere, also for a second registration.
        assert (await party.call("GET", f"{service.url}/ocpi/versions", token=TOKEN_A))[0] == 401
        assert (await party.call("POST", party.cpo_endpoints["credentials:RECEIVER"], {}, token=TOKEN_A))[0] == 401
        assert (await party.call("GET", party.cpo_endpoints["sessions:SENDER"], token="nope"))[0] == 401
        status, creds = await party.call("GET", party.cpo_endpoints["credentials:RECEIVER"])
        assert status == 200 and creds["data"]["token"] == party.token_c

        status, locations = await party.locations()
        assert status == 200 and locations["data"][0]["id"] == "depot"
        evse = locations["data"][0]["evses"][0]
        assert evse["uid"] == "CP0" and evse["connectors"][0]["power_type"] == "AC_3_PHASE"
        status, one = await party.call("GET", party.cpo_endpoints["locations:SENDER"] + "/depot")
        assert status == 200 and len(one["data"]["evses"]) == 2
        status, one = await party.call("GET", party.cpo_endpoints["locations:SENDER"] + "/nope")
        assert status == 404 and one["status_code"] == 2003

        session = await session_of(party, "CP0")
        listed = next(s for s in await party.sessions() if s["id"] == session)
        assert listed["cdr_token"]["uid"] == "TAG-CP0" and listed["location_id"] == "depot"
        await until(lambda: held(sims[0]) >= 30)  # 64 A for two cars: 32 A each

        status, body, request_id = await party.put_profile(session, 10.0)
        assert status == 200 and body["data"] == {"result": "ACCEPTED", "timeout": 30}
        sent = asyncio.get_running_loop().time()
        assert await party.wait_result(request_id) == {"result": "ACCEPTED"}
        # The result goes out once the charger holds the cap (it accepted a profile within it).
        assert held(sims[0]) <= 10.0
        assert asyncio.get_running_loop().time() - sent < 5.0  # within 5 s on the charger itself
        assert charger_json(service, "CP0")["external_cap_a"] == 10.0
        await until(lambda: charger_json(service, "CP0")["limit_reason"]["code"] == "external_cap")
        await until(lambda: held(sims[1]) >= 30)  # the other car is not touched

        # W: total power, per-phase current = W / (230 V x 3 phases) = 6.6 A (rounded down).
        status, body, request_id = await party.put_profile(session, 4600.0, unit="W")
        assert body["data"]["result"] == "ACCEPTED"
        await until(lambda: held(sims[0]) <= 6.6, timeout=5.0)

        status, body, request_id = await party.get_profile(session, 900)
        assert body["data"]["result"] == "ACCEPTED"
        result = await party.wait_result(request_id)
        assert result["result"] == "ACCEPTED"
        periods = result["profile"]["charging_profile"]["charging_profile_period"]
        assert periods[0]["start_period"] == 0 and periods[0]["limit"] <= 6.6

        status, body, request_id = await party.delete_profile(session)
        assert body["data"]["result"] == "ACCEPTED"
        assert await party.wait_result(request_id) == {"result": "ACCEPTED"}
        await until(lambda: held(sims[0]) >= 30, timeout=5.0)
        assert charger_json(service, "CP0")["external_cap_a"] is None

        status, body, _ = await party.put_profile("CP0-nope", 10.0)
        assert status == 200 and body["status_code"] == 1000 and body["data"]["result"] == "UNKNOWN_SESSION"
    finally:
        for sim in sims:
            await sim.stop()
        await party.stop()


BAD_PROFILES = [
    ({"charging_profile": {"charging_profile_period": [{"start_period": 0, "limit": 8}]}, "response_url": "URL"},
     "charging_profile.charging_rate_unit"),
    ({"charging_profile": {"charging_rate_unit": "A", "charging_profile_period": [{"start_period": 0, "limit": "8"}]},
      "response_url": "URL"}, "charging_profile.charging_profile_period[0].limit"),
    ({"charging_profile": {"charging_rate_unit": "A", "charging_profile_period": [{"start_period": 0, "limit": 8}]}},
     "response_url"),
    ({"charging_profile": {"charging_rate_unit": "kW", "charging_profile_period": [{"start_period": 0, "limit": 8}]},
      "response_url": "URL"}, "charging_profile.charging_rate_unit"),
    ({"charging_profile": {"charging_rate_unit": "A", "charging_profile_period": [
        {"start_period": 0, "limit": 8}, {"start_period": 0, "limit": 6}]}, "response_url": "URL"},
     "charging_profile.charging_profile_period[1].start_period"),
    ({"charging_profile": {"charging_rate_unit": "A", "start_date_time": "soon",
                           "charging_profile_period": [{"start_period": 0, "limit": 8}]}, "response_url": "URL"},
     "charging_profile.start_date_time"),
    ({"charging_profile": {"charging_rate_unit": "A", "charging_profile_period": [{"start_period": 0, "limit": -1}]},
      "response_url": "URL"}, "charging_profile.charging_profile_period[0].limit"),
]


async def test_bad_bodies_name_the_field_and_change_nothing(service: ServiceProcess) -> None:
    party = await OcpiParty().start()
    sims = chargers(service.ocpp_url)[:1]
    sims[0].start()
    try:
        await party.register(f"{service.url}/ocpi/versions", TOKEN_A)
        session = await session_of(party, "CP0")
        url = party._profiles_url(session)
        _, response_url = party.new_response_url()
        for body, field in BAD_PROFILES:
            body = json.loads(json.dumps(body).replace('"URL"', json.dumps(response_url)))
            status, answer = await party.call("PUT", url, body)
            assert status == 400, (field, answer)
            assert answer["status_code"] == 2001 and answer["field"] == field, answer
            assert field in answer["status_message"]
        status, answer = await party.call("PUT", url, [1, 2])
        assert status == 400 and answer["status_code"] == 2001
        status, answer = await party.call("GET", f"{url}?duration=x&response_url={response_url}")
        assert status == 400 and answer["field"] == "duration"
        status, answer = await party.call("DELETE", url)
        assert status == 400 and answer["field"] == "response_url"
        status, answer = await party.put_preferences(session, departure=None, energy_kwh=None, profile_type="SLOW")
        assert status == 400 and answer["field"] == "profile_type"
        assert charger_json(service, "CP0")["external_cap_a"] is None  # nothing stored
        assert party.results == {}
        # Credentials: a bad body names the field, and the spent token A stays spent.
        status, answer = await party.call("PUT", party.cpo_endpoints["credentials:RECEIVER"],
                                          {"token": "x", "url": "ftp://x", "roles": []})
        assert status == 400 and answer["field"] == "url"
        assert (await party.call("GET", party.cpo_endpoints["sessions:SENDER"]))[0] == 200  # token C still valid
        assert service.request("GET", "/healthz")[0] == 200
        # Rotation: PUT credentials with a new token B gives a new token C; the old one is refused.
        old_c, party.token_b = party.token_c, "rotated-token-b"
        status, answer = await party.call("PUT", party.cpo_endpoints["credentials:RECEIVER"],
                                          party._credentials_body(party.token_b))
        assert status == 200 and answer["data"]["token"] != old_c
        party.token_c = answer["data"]["token"]
        assert (await party.call("GET", party.cpo_endpoints["sessions:SENDER"], token=old_c))[0] == 401
        assert (await party.call("POST", party.cpo_endpoints["credentials:RECEIVER"],
                                 party._credentials_body(party.token_b)))[0] == 405  # registered already
        # Unregistering: the token C is refused from then on.
        assert (await party.call("DELETE", party.cpo_endpoints["credentials:RECEIVER"]))[0] == 200
        assert (await party.call("GET", party.cpo_endpoints["sessions:SENDER"]))[0] == 401
    finally:
        await sims[0].stop()
        await party.stop()


async def test_preferences_feed_the_plan(service: ServiceProcess) -> None:
    party = await OcpiParty(party_id="EMS", role="EMSP").start()
    sims = chargers(service.ocpp_url)[:1]
    sims[0].start()
    try:
        await party.register(f"{service.url}/ocpi/versions", "token-a-for-the-emsp")
        session = await session_of(party, "CP0")
        departure = datetime.now(UTC) + timedelta(hours=3)
        # Unknown needs: the plan gives the car its maximum until the horizon.
        await until(lambda: _planned_wh(service, "CP0", departure) > 40_000, timeout=15)
        status, body = await party.put_preferences(session, departure=None, energy_kwh=20)
        assert status == 200 and body["data"] == "DEPARTURE_REQUIRED"
        status, body = await party.put_preferences(session, departure=departure, energy_kwh=None)
        assert body["data"] == "ENERGY_NEED_REQUIRED"
        status, body = await party.put_preferences(session, departure=datetime.now(UTC) - timedelta(hours=1),
                                                   energy_kwh=20)
        assert body["data"] == "NOT_POSSIBLE"
        assert charger_json(service, "CP0")["departure"] is None  # none of those stored anything
        status, body = await party.put_preferences(session, departure=departure, energy_kwh=20)
        assert status == 200 and body["data"] == "ACCEPTED"
        charger = charger_json(service, "CP0")
        assert datetime.fromisoformat(charger["departure"]) == departure.replace(microsecond=0)
        assert 15_000 < charger["remaining_wh"] <= 20_000
        # The plan now spreads 20 kWh until departure: the car's planned energy is its need.
        planned: list[float] = []
        await until(lambda: planned.append(_planned_wh(service, "CP0", departure)) or
                    planned[-1] == pytest.approx(charger["remaining_wh"], rel=0.15), timeout=15)
        status, body = await party.put_preferences("CP0-none", departure=departure, energy_kwh=20)
        assert status == 404
    finally:
        await sims[0].stop()
        await party.stop()


def _planned_wh(service: ServiceProcess, cid: str, departure: datetime) -> float:
    plan = service.get("/api/v1/sites/depot/plan", TOKEN)
    rows = plan["chargers"].get(cid, {}).get("limit_a", [])
    start = datetime.fromisoformat(plan["start"]) if "start" in plan else datetime.now(UTC)
    now = datetime.now(UTC)
    total = 0.0
    for k, amps in enumerate(rows):
        begin, end = start + timedelta(minutes=15 * k), start + timedelta(minutes=15 * (k + 1))
        if begin >= departure:
            break
        hours = (min(end, departure) - max(begin, now)).total_seconds() / 3600  # what is left of it
        total += amps * 3 * 230 * max(hours, 0.0)
    return total


async def test_a_crash_keeps_the_cap_preferences_and_the_pending_callback(service: ServiceProcess) -> None:
    party = await OcpiParty().start()
    sims = chargers(service.ocpp_url)[:1]
    sims[0].start()
    try:
        await party.register(f"{service.url}/ocpi/versions", TOKEN_A)
        session = await session_of(party, "CP0")
        await asyncio.sleep(1.0)  # the session itself is in the controller's snapshot
        party.callbacks_down = True  # the result cannot be delivered yet
        _, body, request_id = await party.put_profile(session, 8.0)
        assert body["data"]["result"] == "ACCEPTED"
        departure = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=5)
        _, body = await party.put_preferences(session, departure=departure, energy_kwh=30)
        assert body["data"] == "ACCEPTED"
        await until(lambda: held(sims[0]) <= 8.0, timeout=5.0)
        assert request_id not in party.results
        assert service.proc is not None
        service.proc.kill()  # a crash: no graceful snapshot, only what was written before the answers
        service.proc.wait()
        service.start()
        party.callbacks_down = False
        assert await party.wait_result(request_id, timeout=20) == {"result": "ACCEPTED"}
        await until(lambda: charger_json(service, "CP0")["connected"])
        charger = charger_json(service, "CP0")
        assert charger["external_cap_a"] == 8.0
        assert datetime.fromisoformat(charger["departure"]) == departure and charger["remaining_wh"] > 25_000
        await asyncio.sleep(2.0)
        assert held(sims[0]) <= 8.0
        assert (await party.call("GET", party.cpo_endpoints["sessions:SENDER"]))[0] == 200  # token C survived
    finally:
        await sims[0].stop()
        await party.stop()


async def test_cpo_registers_with_a_party_and_pushes_profile_updates(tmp_path: Path) -> None:
    config = {**CONFIG, "ocpi": {**CONFIG["ocpi"], "update_interval_s": 1, "deadband_a": 0.5}}
    service = ServiceProcess(tmp_path, config).start()
    party = await OcpiParty().start()
    sims = chargers(service.ocpp_url)[:1]
    sims[0].start()
    try:
        # The party answers on this event loop: the blocking admin call runs in a thread.
        status, body = await asyncio.to_thread(
            service.request, "POST", "/api/v1/ocpi/register",
            {"versions_url": f"{party.base}/ocpi/versions", "token_a": party.token_a},
            {"Authorization": f"Bearer {TOKEN}"})
        assert status == 200 and body["party"] == "DE*SCS", body
        assert party.token_c is not None
        status, body = service.request("POST", "/api/v1/ocpi/register", {"versions_url": "x", "token_a": "t"},
                                       {"Authorization": f"Bearer {TOKEN}"})
        assert status == 400 and body["field"] == "versions_url"
        session = await session_of(party, "CP0")
        await until(lambda: held(sims[0]) >= 30)
        status, body, request_id = await party.put_profile(session, 20.0)
        assert body["data"]["result"] == "ACCEPTED"
        await party.wait_result(request_id)
        # Lower the cap through a profile that steps down after 2 s: the update PUT follows.
        start = datetime.now(UTC)
        await party.put_profile(session, 0, periods=[{"start_period": 0, "limit": 20.0},
                                                     {"start_period": 3, "limit": 12.0}], start=start)
        await until(lambda: held(sims[0]) <= 12.0, timeout=10.0)
        await until(lambda: any(s == session for s, _ in party.updates), timeout=10.0)
        update = next(body for s, body in party.updates if s == session)
        assert update["charging_profile"]["charging_profile_period"][0]["limit"] <= 12.0
        assert party.bad_auth == 0
    finally:
        for sim in sims:
            await sim.stop()
        await party.stop()
        service.stop()


async def test_down_callback_target_is_retried_then_dropped_throttling_paging_headers(tmp_path: Path) -> None:
    config = {**CONFIG, "ocpi": {**CONFIG["ocpi"], "profile_timeout_s": 3, "rate_limit_per_s": 4}}
    service = ServiceProcess(tmp_path, config).start()
    party = await OcpiParty().start()
    sims = chargers(service.ocpp_url)
    for sim in sims:
        sim.start()
    try:
        await party.register(f"{service.url}/ocpi/versions", TOKEN_A)
        session = await session_of(party, "CP0")
        await session_of(party, "CP1")
        # Headers: X-Request-ID / X-Correlation-ID echoed; pagination with Link and counts.
        headers = {**party._headers(), "X-Request-ID": "req-1", "X-Correlation-ID": "corr-1"}
        assert party._http is not None
        async with party._http.get(party.cpo_endpoints["sessions:SENDER"] + "?limit=1", headers=headers) as r:
            body = await r.json()
            assert r.headers["X-Request-ID"] == "req-1" and r.headers["X-Correlation-ID"] == "corr-1"
            assert r.headers["X-Total-Count"] == "2" and r.headers["X-Limit"] == "100"
            assert 'offset=1&limit=1>; rel="next"' in r.headers["Link"] and len(body["data"]) == 1
        async with party._http.get(party.cpo_endpoints["sessions:SENDER"] + "?offset=1&limit=1",
                                   headers=headers) as r:
            assert "Link" not in r.headers and len((await r.json())["data"]) == 1
        status, body = await party.call("GET", party.cpo_endpoints["sessions:SENDER"] + "?offset=-1")
        assert status == 400 and body["field"] == "offset"

        party.callbacks_down = True
        status, body, request_id = await party.put_profile(session, 12.0)
        assert body["data"] == {"result": "ACCEPTED", "timeout": 3}
        await until(lambda: held(sims[0]) <= 12.0, timeout=5.0)
        metrics = lambda: service.get("/metrics", TOKEN)  # noqa: E731
        await until(lambda: "balancer_ocpi_callbacks_dropped_total 1" in metrics(), timeout=10)
        assert "balancer_ocpi_outbox_messages 0" in metrics()
        retried = next(line for line in metrics().splitlines() if line.startswith("balancer_ocpi_callbacks_retried_total"))
        assert float(retried.split()[1]) >= 2  # retried with backoff (0.5 s, 1 s, ...) before the drop
        party.callbacks_down = False
        await asyncio.sleep(1.0)
        assert request_id not in party.results  # dropped for good
        assert held(sims[0]) <= 12.0  # the cap itself stays

        # Throttling: a burst beyond rate_limit_per_s answers TOO_OFTEN and changes nothing.
        answers = [(await party.put_profile(session, 20.0 + k))[1]["data"]["result"] for k in range(8)]
        assert "TOO_OFTEN" in answers and answers[0] == "ACCEPTED"
        last_accepted = max(k for k, a in enumerate(answers) if a == "ACCEPTED")
        await until(lambda: charger_json(service, "CP0")["external_cap_a"] == 20.0 + last_accepted)
    finally:
        for sim in sims:
            await sim.stop()
        await party.stop()
        service.stop()


async def test_a_reloaded_config_brings_a_new_token_a(service: ServiceProcess) -> None:
    import yaml

    party = await OcpiParty(party_id="NEW").start()
    try:
        status, _ = await party.register(f"{service.url}/ocpi/versions", "token-a-added-later")
        assert status == 401
        config = yaml.safe_load(service.path.read_text())
        config["ocpi"]["token_a"].append("token-a-added-later")
        service.path.write_text(yaml.safe_dump(config))
        await until(lambda: "balancer_config_reloads_total 1" in service.get("/metrics", TOKEN), 10)
        status, body = await party.register(f"{service.url}/ocpi/versions", "token-a-added-later")
        assert status == 200 and body["status_code"] == 1000
        del config["ocpi"]  # switching OCPI off needs a restart: refused, the running config stays
        service.path.write_text(yaml.safe_dump(config))
        await until(lambda: "balancer_config_rejected_total 1" in service.get("/metrics", TOKEN), 10)
        assert (await party.call("GET", party.cpo_endpoints["sessions:SENDER"]))[0] == 200
    finally:
        await party.stop()
