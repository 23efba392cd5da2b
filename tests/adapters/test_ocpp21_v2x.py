"""OCPP 2.1 and V2X (DESIGN 3.9): the profiles the balancer sends validate against the 2.1
schemas, and the service with a Modbus meter and a 2.1 V2X car carries a building peak."""

from __future__ import annotations

import asyncio
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from ocpp.exceptions import FormatViolationError
from ocpp.messages import Call, _validate_payload

from adapters.app import Service
from adapters.meter.simulator import MeterSimulator
from adapters.ocpp.handlers21 import v2x_needs
from adapters.ocpp.profiles import Capabilities, charging_profile
from adapters.ocpp.simulator import SimCar, SimulatedCharger
from adapters.ocpp.trusted_call import set_profile_payload
from balancer.config import parse_config
from balancer.events import ChargerSchedule
from tests.adapters.ocpp_env import wait_for

TOKEN = "adm-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


def validate_21(action: str, payload: dict[str, Any]) -> None:
    _validate_payload(Call(unique_id="1", action=action, payload=payload), "2.1")


@pytest.mark.parametrize("phases", [1, 3])
@pytest.mark.parametrize("units", [("A",), ("W",)])
def test_discharge_profile_validates_against_the_21_schema(phases: int, units: tuple[str, ...]) -> None:
    schedule = ChargerSchedule("V2G", T0, -12.34, ((T0, -12.34), (T0 + timedelta(minutes=10), 0.0),
                                                   (T0 + timedelta(hours=24), 10.0)), 10.0, transaction_id="tx-1",
                               phases=phases)
    profile = charging_profile(schedule, Capabilities(rate_units=units), purpose="TxProfile", stack_level=1,
                               profile_id=2, voltage_v=230.0, integer_amps=False, version="ocpp2.1",
                               transaction_id="tx-1")
    validate_21("SetChargingProfile", set_profile_payload("ocpp2.1", 1, profile))
    first = profile["chargingSchedule"][0]["chargingSchedulePeriod"][0]
    assert first["operationMode"] == "CentralSetpoint"
    assert first["limit"] == 0.0
    if units == ("A",):
        assert first["setpoint"] == first["dischargeLimit"] == -12.3  # magnitude rounded down
        assert ("setpoint_L2" in first) == (phases == 3) and ("dischargeLimit_L3" in first) == (phases == 3)
    else:
        assert first["setpoint"] == first["dischargeLimit"] == -float(math.floor(12.3 * 230.0 * phases))
    later = profile["chargingSchedule"][0]["chargingSchedulePeriod"][1]
    assert "operationMode" not in later and later["limit"] == 0.0
    # The same schedule for 2.0.1 never carries a negative value (that schema forbids nothing, but
    # a 2.0.1 charger would read a negative limit as 0 at best).
    old = charging_profile(schedule, Capabilities(rate_units=units), purpose="TxProfile", stack_level=1,
                           profile_id=2, voltage_v=230.0, integer_amps=False, version="ocpp2.0.1")
    assert all(p["limit"] >= 0 for p in old["chargingSchedule"][0]["chargingSchedulePeriod"])


def test_the_21_schema_refuses_a_positive_discharge_limit() -> None:
    """The check above can fail: a discharge limit must be at most 0."""
    bad = {"evseId": 1, "chargingProfile": {"id": 2, "stackLevel": 1, "chargingProfilePurpose": "TxProfile",
                                            "chargingProfileKind": "Absolute", "chargingSchedule": [{
                                                "id": 1, "chargingRateUnit": "A", "chargingSchedulePeriod": [
                                                    {"startPeriod": 0, "dischargeLimit": 5.0}]}]}}
    with pytest.raises(FormatViolationError):
        validate_21("SetChargingProfile", bad)


class _Link:
    def now(self) -> datetime:
        return T0


def test_v2x_needs_are_read_from_notify_ev_charging_needs() -> None:
    needs = {"requested_energy_transfer": "AC_BPT", "departure_time": "2026-03-02T18:00:00Z",
             "ac_charging_parameters": {"energy_amount": 5000, "ev_min_current": 6, "ev_max_current": 16,
                                        "ev_max_voltage": 400},
             "v2x_charging_parameters": {"max_charge_current": 32, "max_discharge_current": 16,
                                         "ev_target_energy_request": 20000, "ev_min_v2x_energy_request": -8000}}
    event = v2x_needs("V2G", _Link(), needs)  # type: ignore[arg-type]
    assert event.v2x is True and event.discharge_max_a == 16.0 and event.spare_wh == 8000.0
    assert event.energy_wh == 20000.0 and event.max_current_a == 32.0 and event.min_current_a == 6.0
    assert event.departure == datetime(2026, 3, 2, 18, 0, tzinfo=UTC)
    plain = v2x_needs("V2G", _Link(), {k: v for k, v in needs.items() if k != "v2x_charging_parameters"})  # type: ignore[arg-type]
    assert plain.v2x is False and plain.energy_wh == 5000.0 and plain.discharge_max_a is None


async def test_building_peak_carried_by_a_21_v2g_car(tmp_path: Path) -> None:
    sims: list[SimulatedCharger] = []
    meter = MeterSimulator("sunspec", chargers_a=lambda: [sum(s.draw_a for s in sims)] * 3)
    meter.non_ev_a = [20.0, 20.0, 20.0]
    await meter.start()
    config = parse_config({
        "sites": [{"id": "office", "grid_limit_a": 63, "fallback_kw": 27.6, "export_limit_a": 0,
                   "chargers": [{"id": "V2G", "max_current_a": 32, "allow_discharge": True,
                                 "max_discharge_current_a": 16},
                                {"id": "AC1", "max_current_a": 32}],
                   "meter": {"source": "modbus", "host": "127.0.0.1", "port": meter.port, "map": "sunspec",
                             "poll_s": 0.2, "stale_after_s": 3, "fallback_base_load_a": [30, 30, 30],
                             "margin_a": 1}}],
        "ocpp": {"host": "127.0.0.1", "port": 0},
        "http": {"host": "127.0.0.1", "port": 0, "admin_token": TOKEN},
        "control": {"interval_s": 1.0},
        "state_dir": str(tmp_path / "state"),
    })
    service = Service(config)
    await service.start()
    url = f"ws://127.0.0.1:{service.ocpp.port}/ocpp"
    now = datetime.now(UTC)
    v2g_car = SimCar(arrival=now - timedelta(seconds=1), departure=now + timedelta(hours=8), energy_wh=10000,
                     iso15118=True, discharge_a=16.0)
    sims.append(SimulatedCharger("V2G", url, protocol="ocpp2.1", car=v2g_car, meter_interval_s=0.3, tick_s=0.05))
    sims.append(SimulatedCharger("AC1", url, protocol="ocpp2.0.1", meter_interval_s=0.3, tick_s=0.05,
                                 car=SimCar(arrival=now - timedelta(seconds=1), departure=now + timedelta(hours=8),
                                            energy_wh=60000)))
    for sim in sims:
        sim.start()
    http = aiohttp.ClientSession(headers=AUTH)
    base = f"http://127.0.0.1:{service.http_port}/api/v1/sites/office"
    try:
        # 40 A in force (27.6 kW), building 20 A: the cars share 19 A, nobody discharges.
        await wait_for(lambda: sims[0].draw_a + sims[1].draw_a > 10.0, timeout=20)
        assert sims[0].draw_a >= 0.0
        # Noon: the building takes 50 A of the 40 A in force. The V2G car carries the peak.
        meter.non_ev_a = [50.0, 50.0, 50.0]
        await wait_for(lambda: sims[0].draw_a <= -11.0 and sims[1].draw_a == 0.0, timeout=10)
        await asyncio.sleep(2.0)  # and keeps carrying it while the meter sees its export
        assert -16.0 <= sims[0].draw_a <= -11.0 and sims[1].draw_a == 0.0
        net = 50.0 + sims[0].draw_a + sims[1].draw_a
        assert net <= 40.0  # the connection's import within the capacity in force
        async with http.get(base) as resp:
            site = await resp.json()
        chargers = {c["id"]: c for c in site["chargers"]}
        assert chargers["V2G"]["protocol"] == "ocpp2.1"
        assert chargers["V2G"]["limit_a"] < 0 and chargers["V2G"]["limit_reason"]["code"] == "discharge"
        assert chargers["AC1"]["limit_reason"]["code"] == "meter"
        assert site["discharge_a"][0] >= 11.0
        assert site["allocation_status"] != "infeasible"
        # What reached the 2.1 car passed its schema check: a CentralSetpoint period, accepted.
        setpoints = [p for a in sims[0].accepted_log for s in a.profile["charging_schedule"]
                     for p in s["charging_schedule_period"] if p.get("operation_mode") == "CentralSetpoint"]
        assert setpoints and all(p["setpoint"] < 0 for p in setpoints)
        assert not any(direction == "out" and frame.startswith("[4,") for direction, frame in sims[0].wire)
        # The peak passes: the car charges again.
        meter.non_ev_a = [10.0, 10.0, 10.0]
        await wait_for(lambda: sims[0].draw_a > 0.0, timeout=10)
    finally:
        await http.close()
        for sim in sims:
            await sim.stop()
        await service.stop()
        await meter.stop()
