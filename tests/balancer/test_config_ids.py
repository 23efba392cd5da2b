"""Ids that cannot travel as InfluxDB tags are refused at check-config, naming the field (issue 19 item 11)."""

from __future__ import annotations

import pytest

from balancer.config import parse_config
from balancer.errors import InvalidInput


def config(site_id: str = "s", circuit_id: str = "row-1", charger_id: str = "CP3",
           group_id: str | None = None) -> dict[str, object]:
    return {"sites": [{"id": site_id, "oscp_group_id": group_id, "grid_limit_a": 100, "fallback_kw": 10,
                       "circuits": [{"id": circuit_id, "max_current_a": 63}],
                       "chargers": [{"id": "CP1", "max_current_a": 32}, {"id": "CP2", "max_current_a": 32},
                                    {"id": charger_id, "circuit": circuit_id, "max_current_a": 32}]}]}


@pytest.mark.parametrize(("field", "value", "message"), [
    ("charger_id", "CP\t3", "must not contain control characters"),
    ("charger_id", "CP\r\n3", "must not contain control characters"),
    ("charger_id", "CP\x7f", "must not contain control characters"),
    ("site_id", "depot\n1", "must not contain control characters"),
    ("circuit_id", "row\x001", "must not contain control characters"),
    ("group_id", "grp\t1", "must not contain control characters"),
    ("charger_id", "CP\\", "nor end with one"),
    ("charger_id", "CP\\ 3", "must not hold a backslash before a space"),
    ("site_id", "a\\,b", "must not hold a backslash before a space"),
])
def test_control_characters_and_stray_backslashes_in_ids_are_refused(field: str, value: str, message: str) -> None:
    path = {"charger_id": "sites[0].chargers[2].id", "site_id": "sites[0].id",
            "circuit_id": "sites[0].circuits[0].id", "group_id": "sites[0].oscp_group_id"}[field]
    with pytest.raises(InvalidInput) as caught:
        parse_config(config(**{field: value}))
    problems = {p.path: p.message for p in caught.value.problems}
    assert path in problems and message in problems[path], problems


@pytest.mark.parametrize("value", ["CP 3", "CP,3", 'CP"3"', "C\\P3", "é✓", "CP=3", "CP\\\\3"])
def test_odd_but_storable_ids_are_accepted(value: str) -> None:
    assert parse_config(config(charger_id=value)).sites[0].chargers[2].id == value
