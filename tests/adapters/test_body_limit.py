"""``http.max_body_bytes`` applies to every endpoint of the running service, also after a reload.

One service, one limit: a body over it is 413 with the one error body on the admin API and on the
OSCP endpoint alike; a body just under it is read (and judged on its content); a config reload
that changes the limit applies to both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import yaml

from adapters.app import Service
from adapters.config_file import load_config

ADMIN = {"Authorization": "Bearer admin-token-5d2a"}
OSCP = {"Authorization": "Token oscp-token-5d2a", "Content-Type": "application/json"}


def config(state_dir: Path, limit: int) -> dict[str, Any]:
    return {"sites": [{"id": "s1", "grid_limit_a": 100, "fallback_kw": 10,
                       "chargers": [{"id": "CP1", "max_current_a": 32}]}],
            "ocpp": {"host": "127.0.0.1", "port": 0},
            "http": {"host": "127.0.0.1", "port": 0, "admin_token": "admin-token-5d2a", "max_body_bytes": limit},
            "oscp": {"token": "oscp-token-5d2a"}, "state_dir": str(state_dir)}


def padded(size: int) -> bytes:
    """A JSON object of exactly ``size`` bytes."""
    body = b'{"energy_wh": 1000}'
    return body[:-1] + b" " * (size - len(body)) + b"}"


async def statuses(port: int, size: int) -> tuple[tuple[int, Any], tuple[int, Any]]:
    base = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{base}/api/v1/sessions/CP1/needs", data=padded(size),
                          headers={**ADMIN, "Content-Type": "application/json"}) as r:
            admin = (r.status, await r.json())
        async with s.post(f"{base}/oscp/fp/2.0/heartbeat", data=padded(size), headers=OSCP) as r:
            oscp = (r.status, await r.json())
    return admin, oscp


async def test_admin_api_and_oscp_share_the_configured_limit(tmp_path: Path) -> None:
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(config(tmp_path / "state", 4096)))
    service = Service(load_config(path), config_path=path)
    await service.start()
    try:
        (admin, oscp) = await statuses(service.http_port, 4097)
        for status, body in (admin, oscp):
            assert status == 413
            assert body["code"] == "payload_too_large" and body["message"] == "body larger than 4096 bytes"
        # At the limit the body is read: refused for what it says, never for its size.
        (admin, oscp) = await statuses(service.http_port, 4096)
        assert admin[0] == 409 and "no running session" in admin[1]["message"]
        assert oscp[0] == 400 and oscp[1]["code"] == "bad_request"
        # A reload lowers the limit for both endpoints.
        path.write_text(yaml.safe_dump(config(tmp_path / "state", 1024)))
        assert service.reload_config()
        (admin, oscp) = await statuses(service.http_port, 2000)
        assert admin[0] == 413 and oscp[0] == 413, (admin, oscp)
        assert admin[1]["message"] == oscp[1]["message"] == "body larger than 1024 bytes"
    finally:
        await service.stop()


async def test_a_limit_above_aiohttp_default_lets_large_bodies_through(tmp_path: Path) -> None:
    """2 MiB with a 3 MiB limit: read in full by both endpoints (aiohttp's own 1 MiB cap does not apply)."""
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(config(tmp_path / "state", 3 * 1024 * 1024)))
    service = Service(load_config(path), config_path=path)
    await service.start()
    try:
        (admin, oscp) = await statuses(service.http_port, 2 * 1024 * 1024)
        assert admin[0] == 409 and "no running session" in admin[1]["message"]
        assert oscp[0] == 400 and oscp[1]["code"] == "bad_request"
    finally:
        await service.stop()
