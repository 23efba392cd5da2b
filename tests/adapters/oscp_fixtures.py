"""A real FP endpoint on loopback for the OSCP tests."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from aiohttp import web

from adapters.oscp.endpoint import BASE_PATH, add_oscp_routes
from adapters.oscp.provider import FlexibilityProvider
from adapters.store import StateStore
from balancer.config import parse_config
from balancer.model import Config


def config_for(state_dir: Path, **oscp: object) -> Config:
    return parse_config({
        "sites": [{"id": "depot-1", "oscp_group_id": "grp-1", "grid_limit_a": 100, "fallback_kw": 13.8,
                   "chargers": [{"id": "CP1", "max_current_a": 32}]}],
        "oscp": {"token": "fp-token", **oscp},
        "state_dir": str(state_dir),
    })


class Endpoint:
    def __init__(self, config: Config, now: Callable[[], datetime]) -> None:
        self.store = StateStore(Path(config.state_dir) / "state.sqlite")
        self.changes: list[str] = []
        self.fp = FlexibilityProvider(config, self.store, now=now, on_capacity_changed=self.changes.append)
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        add_oscp_routes(app, self.fp)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}{BASE_PATH}"

    async def stop(self) -> None:
        assert self.runner is not None
        await self.runner.cleanup()
        self.store.close()
