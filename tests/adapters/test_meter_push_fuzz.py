"""The meter push parser: any JSON value gives a reading or a ``MeterPushRefused`` naming a field."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from adapters.meter.push import MeterPushRefused, parse_meter_push

NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
json_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers() | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
bodies = json_values | st.fixed_dictionaries({
    "current_a": st.lists(st.none() | st.floats(allow_nan=False) | st.integers() | st.text(max_size=3), max_size=4),
    "timestamp": st.text(max_size=30) | st.just(NOW.isoformat()) | st.integers(),
})


@given(bodies)
def test_only_documented_errors_escape(body: Any) -> None:
    try:
        current_a, at = parse_meter_push(body, NOW, stale_after_s=10.0)
    except MeterPushRefused as exc:
        assert exc.status == 400 and exc.message
        return
    assert len(current_a) == 3 and any(c is not None for c in current_a)
    assert at.tzinfo is not None
