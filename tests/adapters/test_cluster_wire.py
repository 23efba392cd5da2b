"""Events and schedules survive the trip between instances unchanged; nothing else is decoded."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters.cluster.wire import decode, dumps, encode, loads, token
from balancer.events import ChargerSchedule, LimitConfirmed, MeterSample, NeedsUpdated, SessionStarted, Tick

AT = datetime(2026, 12, 3, 4, 0, tzinfo=UTC)


@pytest.mark.parametrize("obj", [
    MeterSample("CP1", AT, (16.0, None, 15.5), 7000.0, 1234.5, 40.0),
    SessionStarted("CP1", AT, "tx-9", 100.0, "TAG"),
    NeedsUpdated("CP1", AT, 20000.0, AT + timedelta(hours=3), 16.0, None, 3, "iso15118"),
    LimitConfirmed("CP1", AT, 10.0, ((AT, 10.0), (AT + timedelta(minutes=15), 6.0)), "TxProfile"),
    ChargerSchedule("CP1", AT, 10.0, ((AT, 10.0), (AT + timedelta(minutes=15), 0.0)), 6.0, "tx-9", 1,
                    ((AT, 0.0),)),
])
def test_round_trip(obj: object) -> None:
    assert decode(loads(dumps(encode(obj)))) == obj


def test_only_known_classes_travel() -> None:
    with pytest.raises(ValueError):
        encode(Tick(AT))
    for bad in [{"type": "Tick", "fields": {"at": {"$dt": AT.isoformat()}}}, {"type": "MeterSample"},
                {"type": "MeterSample", "fields": {"nope": 1}}, [], {"type": "SessionStarted",
                                                                     "fields": {"charger_id": {"x": 1}}}]:
        with pytest.raises(ValueError):
            decode(bad)


@given(st.text(min_size=1, max_size=20))
def test_tokens_are_single_subject_tokens_and_never_collide(ident: str) -> None:
    got = token(ident)
    assert got and not any(c in got for c in ".*> \t\r\n")
    other = ident + "x"
    assert token(other) != got
