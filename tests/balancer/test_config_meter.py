"""``sites[].meter``: every problem reported with its path, defaults filled in."""

from __future__ import annotations

from typing import Any

import pytest

from balancer.config import parse_config
from balancer.errors import InvalidConfig


def config(meter: Any) -> dict[str, Any]:
    return {"sites": [{"id": "s", "grid_limit_a": 100, "fallback_kw": 20, "meter": meter}]}


def test_meter_defaults_and_scalar_fallback() -> None:
    site = parse_config(config({"source": "modbus", "host": "10.0.0.5", "fallback_base_load_a": 12})).sites[0]
    assert site.meter is not None
    assert site.meter.fallback_base_load_a == (12.0, 12.0, 12.0)
    assert (site.meter.port, site.meter.unit_id, site.meter.map, site.meter.poll_s) == (502, 1, "sunspec", 1.0)
    assert (site.meter.stale_after_s, site.meter.margin_a, site.meter.frozen_after_s) == (10.0, 1.0, 60.0)
    assert parse_config(config(None)).sites[0].meter is None


def test_every_meter_problem_in_one_run() -> None:
    bad = {"source": "modbus", "port": 70000, "unit_id": 300, "map": "sdm120", "poll_s": 0,
           "fallback_base_load_a": [10, -1, 150], "margin": 1}
    with pytest.raises(InvalidConfig) as err:
        parse_config(config(bad))
    paths = {p.path for p in err.value.problems}
    assert paths == {"sites[0].meter.host", "sites[0].meter.port", "sites[0].meter.unit_id", "sites[0].meter.map",
                     "sites[0].meter.poll_s", "sites[0].meter.fallback_base_load_a[1]",
                     "sites[0].meter.fallback_base_load_a[2]", "sites[0].meter.margin"}
    assert any("did you mean 'margin_a'" in p.message for p in err.value.problems)


@pytest.mark.parametrize("fallback", [None, [1, 2], "30", [1, 2, True]])
def test_fallback_base_load_shape(fallback: Any) -> None:
    with pytest.raises(InvalidConfig) as err:
        parse_config(config({"source": "http", "fallback_base_load_a": fallback}))
    assert any(p.path.startswith("sites[0].meter.fallback_base_load_a") for p in err.value.problems)
