"""Our SetChargingProfile frames are the ones the ocpp package would have built from the same profile."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from ocpp.charge_point import remove_nones, serialize_as_dict, snake_to_camel_case
from ocpp.v16 import call as call16
from ocpp.v201 import call as call201

from adapters.ocpp.profiles import Capabilities, charging_profile
from adapters.ocpp.trusted_call import set_profile_payload
from balancer.events import ChargerSchedule


@pytest.mark.parametrize("version", ["ocpp1.6", "ocpp2.0.1"])
@pytest.mark.parametrize("unit", ["A", "W"])
def test_our_payload_is_the_one_the_package_would_send(version: str, unit: str) -> None:
    now = datetime(2026, 3, 2, 12, tzinfo=UTC)
    periods = ((now, 16.0), (now + timedelta(minutes=15), 8.0), (now + timedelta(hours=24), 6.0))
    schedule = ChargerSchedule("CP1", now, 16.0, periods, 6.0, transaction_id="7", phases=3)
    profile = charging_profile(schedule, Capabilities(rate_units=(unit,)), purpose="TxProfile", stack_level=1,
                               profile_id=2, voltage_v=230.0, integer_amps=False, version=version,
                               transaction_id="7")
    if version == "ocpp1.6":
        theirs = call16.SetChargingProfile(connector_id=1, cs_charging_profiles=profile)
    else:
        theirs = call201.SetChargingProfile(evse_id=1, charging_profile=profile)
    assert set_profile_payload(version, 1, profile) == remove_nones(snake_to_camel_case(serialize_as_dict(theirs)))
