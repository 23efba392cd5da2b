"""The ``cluster`` section: checked at the boundary, and without it no cluster dependency is loaded."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from balancer.config import parse_config
from balancer.errors import InvalidConfig

BASE: dict[str, Any] = {"sites": [{"id": "depot", "grid_limit_a": 32, "fallback_kw": 7,
                                   "chargers": [{"id": "CP1", "max_current_a": 16}]}]}
GOOD = {"postgres_url": "postgresql://balancer@db:5432/balancer", "nats_url": "nats://nats:4222", "instance_id": "bal-1"}


def test_a_cluster_section_is_read() -> None:
    cluster = parse_config({**BASE, "cluster": GOOD}).cluster
    assert cluster is not None and cluster.instance_id == "bal-1" and cluster.nats_url == "nats://nats:4222"
    assert parse_config(BASE).cluster is None


@pytest.mark.parametrize(("cluster", "field"), [
    ({**GOOD, "postgres_url": "mysql://db"}, "cluster.postgres_url"),
    ({**GOOD, "nats_url": "http://nats"}, "cluster.nats_url"),
    ({**GOOD, "instance_id": ""}, "cluster.instance_id"),
    ({**GOOD, "instance_id": "a\nb"}, "cluster.instance_id"),
    ({k: v for k, v in GOOD.items() if k != "nats_url"}, "cluster.nats_url"),
    ({**GOOD, "instance": "x"}, "cluster.instance"),
    ("postgresql://db", "cluster"),
])
def test_bad_cluster_settings_name_the_field(cluster: Any, field: str) -> None:
    with pytest.raises(InvalidConfig) as err:
        parse_config({**BASE, "cluster": cluster})
    assert any(p.path == field for p in err.value.problems), err.value.problems


def test_without_a_cluster_section_neither_psycopg_nor_nats_is_imported(tmp_path: Any) -> None:
    code = f"""
import asyncio, sys
from adapters.app import Service
from balancer.config import parse_config
config = parse_config({{**{BASE!r}, "state_dir": {str(tmp_path)!r}}})
async def main():
    service = Service(config)
    assert service.cluster is None
asyncio.run(main())
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("psycopg", "nats", "adapters") and
                (m.startswith(("psycopg", "nats")) or m.startswith("adapters.cluster")))
print(loaded)
assert not loaded, loaded
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr + result.stdout
