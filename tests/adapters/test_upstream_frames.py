"""Pure parts of local controller mode: station maximum combination, transaction id mapping, the
persisted queue, and the config's checks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters.ocpp.upstream_frames import (
    OWN_PROFILE_ID_BASE,
    clamp_station_max,
    clears_station_max,
    is_station_max,
    map_tx,
    station_max_cap_a,
)
from adapters.ocpp.upstream_queue import UpstreamQueue
from balancer.config import parse_config
from balancer.errors import InvalidConfig


def _max16(limits: list[float], unit: str = "A", pid: int = 2, phases: int | None = None) -> dict[str, Any]:
    periods = [{"startPeriod": i * 900, "limit": v, **({"numberPhases": phases} if phases else {})}
               for i, v in enumerate(limits)]
    return {"connectorId": 0, "csChargingProfiles": {
        "chargingProfileId": pid, "stackLevel": 1, "chargingProfilePurpose": "ChargePointMaxProfile",
        "chargingProfileKind": "Absolute",
        "chargingSchedule": {"chargingRateUnit": unit, "chargingSchedulePeriod": periods}}}


def test_station_max_is_capped_by_the_csms_lowest_limit_and_moved_out_of_its_ids() -> None:
    ours = _max16([16.0, 6.0, 32.0])
    csms = _max16([20.0, 10.0], pid=1)
    cap = station_max_cap_a("ocpp1.6", csms, 230.0)
    assert cap == 10.0
    out = clamp_station_max("ocpp1.6", ours, cap, 230.0)
    periods = out["csChargingProfiles"]["chargingSchedule"]["chargingSchedulePeriod"]
    assert [p["limit"] for p in periods] == [10.0, 6.0, 10.0]  # lower wins in every period
    assert out["csChargingProfiles"]["chargingProfileId"] == OWN_PROFILE_ID_BASE + 2
    assert ours["csChargingProfiles"]["chargingSchedule"]["chargingSchedulePeriod"][0]["limit"] == 16.0


def test_watts_on_either_side_convert_at_nominal_voltage_per_phase() -> None:
    csms = _max16([6900.0], unit="W", phases=3)  # 6900 W / (230 V x 3) = 10 A
    assert station_max_cap_a("ocpp1.6", csms, 230.0) == pytest.approx(10.0)
    ours = _max16([11040.0], unit="W", phases=1)  # 48 A on one phase
    out = clamp_station_max("ocpp1.6", ours, 10.0, 230.0)
    assert out["csChargingProfiles"]["chargingSchedule"]["chargingSchedulePeriod"][0]["limit"] == 2300.0


def test_201_station_max_and_clear_filters() -> None:
    payload = {"evseId": 0, "chargingProfile": {"id": 1, "stackLevel": 0, "chargingProfilePurpose":
               "ChargingStationMaxProfile", "chargingProfileKind": "Absolute", "chargingSchedule": [
                   {"id": 1, "chargingRateUnit": "A", "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 12.0}]}]}}
    assert is_station_max("ocpp2.0.1", payload) and not is_station_max("ocpp1.6", payload)
    assert station_max_cap_a("ocpp2.0.1", payload, 230.0) == 12.0
    assert clamp_station_max("ocpp2.0.1", payload, 8.0, 230.0)["chargingProfile"]["chargingSchedule"][0][
        "chargingSchedulePeriod"][0]["limit"] == 8.0
    assert clears_station_max("ocpp2.0.1", {"chargingProfileCriteria": {
        "chargingProfilePurpose": "ChargingStationMaxProfile"}})
    assert not clears_station_max("ocpp1.6", {"chargingProfilePurpose": "TxProfile"})


def test_transaction_ids_mapped_only_where_they_sit_else_byte_for_byte() -> None:
    mapping = {"123": "7001"}
    meter = '[2, "m1", "MeterValues", {"connectorId": 1, "transactionId": 123, "meterValue": []}]'
    assert json.loads(map_tx("ocpp1.6", meter, mapping))[3]["transactionId"] == 7001
    other = '[2, "m2", "MeterValues", {"connectorId": 1, "transactionId": 999, "meterValue": []}]'
    assert map_tx("ocpp1.6", other, mapping) is other
    profile = json.dumps([2, "p", "SetChargingProfile", {"connectorId": 1, "csChargingProfiles": {
        "transactionId": 7001, "chargingProfileId": 1}}])
    assert json.loads(map_tx("ocpp1.6", profile, {"7001": "123"}))[3]["csChargingProfiles"]["transactionId"] == 123
    assert map_tx("ocpp2.0.1", meter, mapping) is meter


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children,
                                                                                         max_size=4), max_leaves=12))
def test_map_tx_takes_any_json_without_raising(value: Any) -> None:
    for frame in ([2, "x", "MeterValues", value], [2, "x", "SetChargingProfile", {"csChargingProfiles": value}],
                  value):
        raw = json.dumps(frame)
        assert isinstance(map_tx("ocpp1.6", raw, {"1": "2"}), str)


def test_queue_keeps_order_and_mapping_across_a_restart(tmp_path: Path) -> None:
    queue = UpstreamQueue(tmp_path / "q.sqlite")
    seqs = [queue.push("A", f'[2,"{i}","MeterValues",{{}}]') for i in range(5)]
    queue.push("B", '[2,"b","Heartbeat",{}]')
    queue.set_local_tx(seqs[0], "42")
    queue.map_tx("A", "42", "7001")
    queue.remove(seqs[1])
    queue.close()
    again = UpstreamQueue(tmp_path / "q.sqlite")
    head = again.head("A")
    assert head is not None and head.seq == seqs[0] and head.local_tx == "42"
    assert [json.loads(f)[1] for f in again.frames("A")] == ["0", "2", "3", "4"]
    assert again.size() == 5 and again.size("B") == 1
    assert again.tx_map("A") == {"42": "7001"}
    first = again.push_front("A", '[2,"early","StatusNotification",{}]')
    earlier = again.push_front("A", '[2,"earlier","StatusNotification",{}]')
    assert earlier < first < seqs[0]
    assert [json.loads(f)[1] for f in again.frames("A")] == ["earlier", "early", "0", "2", "3", "4"]


def _config(upstream: Any, **charger: Any) -> Any:
    return parse_config({"sites": [{"id": "s", "grid_limit_a": 63, "fallback_kw": 10, "chargers": [
        {"id": "A", "max_current_a": 32, **charger}]}], "ocpp": {"upstream": upstream}})


def test_config_names_every_bad_upstream_field() -> None:
    with pytest.raises(InvalidConfig) as info:
        _config({"url": "https://csms", "auth": "config", "offline_authorize": "maybe"}, profile_strategy="TxProfile")
    fields = {p.path for p in info.value.problems}
    assert {"ocpp.upstream.url", "ocpp.upstream.offline_authorize"} <= fields
    with pytest.raises(InvalidConfig) as info:
        _config({"url": "wss://csms/ocpp", "auth": "config"}, profile_strategy="TxProfile")
    fields = {p.path for p in info.value.problems}
    assert fields == {"sites[0].chargers[0].profile_strategy", "sites[0].chargers[0].upstream_password"}
    config = _config({"url": "wss://csms/ocpp", "auth": "config"}, upstream_id="CP-9", upstream_password="pw")
    assert config.ocpp.upstream.offline_authorize == "accept"
    assert config.sites[0].chargers[0].profile_strategy == "ChargePointMax"
    assert config.sites[0].chargers[0].upstream_id == "CP-9"


_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
                     lambda children: st.lists(children, max_size=4) | st.dictionaries(
                         st.sampled_from(["limit", "numberPhases", "chargingRateUnit", "chargingSchedulePeriod",
                                          "chargingSchedule", "x"]), children, max_size=4), max_leaves=16)


@given(_JSON, st.sampled_from(["ocpp1.6", "ocpp2.0.1"]))
def test_a_csms_station_max_of_any_shape_gives_a_cap_or_none(value: Any, version: str) -> None:
    key = "csChargingProfiles" if version == "ocpp1.6" else "chargingProfile"
    for payload in ({key: value}, {key: {"chargingProfilePurpose": "x", "chargingSchedule": value}}):
        cap = station_max_cap_a(version, payload, 230.0)
        assert cap is None or (isinstance(cap, float) and cap >= 0)
