"""``balancer serve`` instances of one cluster for the end-to-end tests (real processes)."""

from __future__ import annotations

import json
import urllib.error
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

from tests.e2e.service import ServiceProcess


def cluster_config(n_sites: int, chargers_per_site: int = 1) -> dict[str, Any]:
    return {
        "sites": [{"id": f"s{i}", "voltage_v": 230, "grid_limit_a": 32 * chargers_per_site, "fallback_kw": 7,
                   "chargers": [{"id": f"CP{i}-{j}", "max_current_a": 32} for j in range(chargers_per_site)]}
                  for i in range(n_sites)],
        "oscp": {"token": "oscp-token"},
        "control": {"interval_s": 0.5},
    }


class Instance(ServiceProcess):
    def __init__(self, tmp: Path, instance_id: str, config: dict[str, Any], postgres_url: str, nats_url: str) -> None:
        (tmp / instance_id).mkdir()
        super().__init__(tmp / instance_id, {**config, "cluster": {
            "postgres_url": postgres_url, "nats_url": nats_url, "instance_id": instance_id}})
        self.instance_id = instance_id

    def controlled(self) -> set[str] | None:
        """The sites this instance controls now (None: it does not answer, e.g. killed)."""
        try:
            return set(self.get("/healthz")["cluster"]["controlled_sites"])
        except (urllib.error.URLError, ConnectionError, OSError):
            return None

    def log_events(self, needle: str) -> list[tuple[datetime, str]]:
        """(time, message) of every log line containing ``needle`` (JSON log format)."""
        out = []
        for line in (self.tmp / "service.log").read_text().splitlines():
            if needle in line and line.startswith("{"):
                entry = json.loads(line)
                out.append((datetime.fromisoformat(entry["t"]), entry["msg"]))
        return out


def start_all(instances: Sequence[ServiceProcess]) -> None:
    """Start the processes side by side: each takes seconds to import and come up (about 4 s here),
    which one after the other added 4-8 s to every cluster test."""
    with ThreadPoolExecutor(len(instances)) as pool:
        list(pool.map(lambda instance: instance.start(), instances))
