"""The admin API's edges over a real aiohttp server: odd tokens and bodies never get a 5xx."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from adapters.http_api import add_admin_routes

GETS = ["/metrics", "/api/v1/sites", "/api/v1/sites/s1", "/api/v1/sites/s1/plan"]


class Backend:
    """The AdminBackend protocol answered from plain data."""

    def __init__(self) -> None:
        self.needs: list[tuple[Any, ...]] = []

    def site_ids(self) -> list[str]:
        return ["s1"]

    def site_json(self, site_id: str) -> dict[str, Any] | None:
        return {"id": site_id} if site_id == "s1" else None

    def plan_json(self, site_id: str) -> dict[str, Any] | None:
        return {"site": site_id} if site_id == "s1" else None

    def set_needs(self, charger_id: str, energy_wh: float | None, departure: datetime | None,
                  max_current_a: float | None, phases: int | None, discharge_allowed: bool | None = None) -> None:
        self.needs.append((charger_id, energy_wh, departure, max_current_a, phases, discharge_allowed))

    def metrics_text(self) -> str:
        return "balancer_up 1\n"

    def health(self) -> dict[str, Any]:
        return {"status": "ok"}


@pytest.fixture
async def api() -> AsyncIterator[tuple[str, Backend]]:
    backend = Backend()
    app = web.Application()
    add_admin_routes(app, backend, admin_token="adm-token", listen_host="127.0.0.1")
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}", backend
    await runner.cleanup()


@pytest.mark.parametrize("token", ["tök", "adm-tokenü", "トークン"])
async def test_non_ascii_bearer_token_is_403_on_every_get(api: tuple[str, Backend], token: str) -> None:
    url, _ = api
    header = f"Bearer {token}".encode().decode("latin-1")
    async with aiohttp.ClientSession() as s:
        for path in GETS:
            async with s.get(url + path, headers={"Authorization": header}) as r:
                assert r.status == 403, path
            async with s.get(url + path, headers={"Authorization": "Bearer adm-token"}) as r:
                assert r.status == 200, path


@pytest.mark.parametrize(("raw", "field"), [
    (b'{"energy_wh": ' + b"[" * 5000 + b"]" * 5000 + b"}", None),
    (b'{"energy_wh": ' + b"[" * 40 + b"]" * 40 + b"}", "energy_wh"),
    (b'{"energy_wh": ' + b"9" * 5000 + b"}", "energy_wh"),
    (b'{"max_current_a": NaN}', None),
    (b'{"max_current_a": 1' + b"0" * 400 + b"}", "max_current_a"),
    (b'{"discharge_allowed": "yes"}', "discharge_allowed"),
    (b'{"discharge_allowed": 1}', "discharge_allowed"),
])
async def test_bad_needs_bodies_are_400(api: tuple[str, Backend], raw: bytes, field: str | None) -> None:
    url, backend = api
    async with aiohttp.ClientSession() as s, s.post(url + "/api/v1/sessions/CP1/needs", data=raw,
                                                     headers={"Authorization": "Bearer adm-token"}) as r:
        answer = json.loads(await r.text())
        assert r.status == 400, answer
        if field is None:
            assert "field" not in answer
        else:
            assert answer["field"].startswith(field)
    assert backend.needs == []


async def test_needs_body_says_whether_the_car_offers_v2x(api: tuple[str, Backend]) -> None:
    url, backend = api
    async with aiohttp.ClientSession() as s, s.post(url + "/api/v1/sessions/CP1/needs",
                                                     json={"energy_wh": 5000, "discharge_allowed": True},
                                                     headers={"Authorization": "Bearer adm-token"}) as r:
        assert r.status < 300, await r.text()
    assert backend.needs == [("CP1", 5000.0, None, None, None, True)]


async def test_admin_and_oscp_errors_share_one_body(api: tuple[str, Backend]) -> None:
    """{"message", "field", "code"} everywhere; the admin API keeps "error" for one release."""
    url, _ = api
    async with aiohttp.ClientSession() as s:
        async with s.get(url + "/api/v1/sites/nowhere", headers={"Authorization": "Bearer adm-token"}) as r:
            assert r.status == 404
            assert await r.json() == {"message": "unknown site 'nowhere'", "error": "unknown site 'nowhere'",
                                      "field": "site_id", "code": "not_found"}
        async with s.get(url + "/api/v1/sites") as r:
            body = await r.json()
            assert r.status == 401 and body["code"] == "unauthorized" and body["message"] == body["error"]
        async with s.post(url + "/api/v1/sessions/CP1/needs", json={"phases": 4},
                          headers={"Authorization": "Bearer adm-token"}) as r:
            assert r.status == 400
            assert (await r.json())["code"] == "bad_request"


async def test_needs_body_over_the_limit_is_413_json() -> None:
    """The admin API applies ``max_body_bytes`` itself, with the same JSON error body."""
    app = web.Application()
    add_admin_routes(app, Backend(), admin_token="adm-token", listen_host="127.0.0.1", max_body_bytes=64)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with aiohttp.ClientSession() as s, s.post(
                f"http://127.0.0.1:{port}/api/v1/sessions/CP1/needs", data=b'{"energy_wh": ' + b" " * 100 + b"1}",
                headers={"Authorization": "Bearer adm-token"}) as r:
            assert r.status == 413
            assert (await r.json())["code"] == "payload_too_large"
    finally:
        await runner.cleanup()
