"""The ``ocpi`` config section: every problem reported with its location, defaults filled in."""

from __future__ import annotations

from typing import Any

import pytest

from balancer.config import parse_config
from balancer.errors import InvalidConfig

BASE: dict[str, Any] = {"sites": [{"id": "s", "grid_limit_a": 32, "fallback_kw": 10,
                                   "chargers": [{"id": "C", "max_current_a": 16}]}]}


def problems(ocpi: Any) -> list[str]:
    with pytest.raises(InvalidConfig) as err:
        parse_config({**BASE, "ocpi": ocpi})
    return [str(p) for p in err.value.problems]


def test_defaults_and_one_token_or_a_list() -> None:
    one = parse_config({**BASE, "ocpi": {"country_code": "NL", "party_id": "EVB", "token_a": "abc"}}).ocpi
    assert one is not None and one.token_a == ("abc",) and one.profile_timeout_s == 30 and one.deadband_a == 1.0
    assert one.location("s").name == "s"  # no address configured: the site id names it
    many = parse_config({**BASE, "ocpi": {"country_code": "NL", "party_id": "EVB", "token_a": ["a", "b"],
                                          "public_base_url": "https://x.example/",
                                          "locations": {"s": {"address": "Main 1", "latitude": 52.1,
                                                              "country": "NLD"}}}}).ocpi
    assert many is not None and many.token_a == ("a", "b") and many.public_base_url == "https://x.example"
    assert many.location("s").address == "Main 1" and many.location("s").latitude == 52.1
    assert parse_config(BASE).ocpi is None


def test_every_problem_is_named() -> None:
    found = problems({"country_code": "NLD", "party_id": "EV", "token_a": ["a", "a", ""], "deadband_a": -1,
                      "public_base_url": "balancer.example", "locations": {"x": {}, "s": {"latitude": 100}},
                      "profile_timeout": 5})
    for expected in ("ocpi.country_code: must be 2", "ocpi.party_id: must be 3", "ocpi.token_a: tokens A must be distinct",
                     "ocpi.token_a[2]: must be 1 to 64", "ocpi.deadband_a: must be >= 0",
                     "ocpi.public_base_url: must start with http", "ocpi.locations.x: unknown site",
                     "ocpi.locations.s.latitude: must be between", "ocpi.profile_timeout: unknown key"):
        assert any(p.startswith(expected) for p in found), (expected, found)
    assert problems({"party_id": "EVB"})[:2] == ["ocpi.country_code: is required", "ocpi.token_a: is required"]
