"""Handshake refusals, malformed frames, flood and oversize guards, TLS: over real websockets."""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
from pathlib import Path

import aiohttp
import pytest

from tests.adapters.ocpp_env import Env, ocpp_config, running_env, wait_for

CHARGERS = [{"id": "CP1", "max_current_a": 32, "password": "a-long-enough-secret"}, {"id": "CP2", "max_current_a": 32}]


@pytest.fixture
async def env():  # type: ignore[no-untyped-def]
    async with running_env(ocpp_config(CHARGERS, max_message_bytes=2000, rate_limit_per_s=5)) as e:
        yield e


async def handshake(url: str, protocols: tuple[str, ...] = ("ocpp1.6",), auth: aiohttp.BasicAuth | None = None) -> int:
    async with aiohttp.ClientSession() as session:
        try:
            async with session.ws_connect(url, protocols=protocols, auth=auth) as ws:
                msg = await ws.receive(timeout=2)
                return 101 if msg.type != aiohttp.WSMsgType.CLOSE else -int(ws.close_code or 0)
        except aiohttp.WSServerHandshakeError as err:
            return err.status


async def test_handshake_refusals(env: Env) -> None:
    assert await handshake(f"{env.url}/NOPE") == 404
    assert await handshake(f"{env.url}/CP1") == 401
    assert await handshake(f"{env.url}/CP1", auth=aiohttp.BasicAuth("CP1", "wrong")) == 401
    assert await handshake(f"{env.url}/CP2", protocols=("ocpp0.9",)) == -1002  # no common subprotocol: closed
    assert env.server.counters["refused"] == 3


async def raw_session(env: Env, charger: str = "CP2", protocol: str = "ocpp1.6"):  # type: ignore[no-untyped-def]
    session = aiohttp.ClientSession()
    ws = await session.ws_connect(f"{env.url}/{charger}", protocols=(protocol,))
    return session, ws


async def test_malformed_frames_get_callerrors_and_the_connection_stays(env: Env) -> None:
    session, ws = await raw_session(env)
    try:
        await ws.send_str("{not json")
        reply = json.loads((await ws.receive(timeout=2)).data)
        assert reply[0] == 4 and reply[1] == "-1" and reply[2] == "FormationViolation"
        await ws.send_str(json.dumps([7, "abc", "Heartbeat", {}]))
        reply = json.loads((await ws.receive(timeout=2)).data)
        assert reply[:3] == [4, "abc", "ProtocolError"]
        await ws.send_str(json.dumps({"not": "an array"}))
        assert json.loads((await ws.receive(timeout=2)).data)[2] == "FormationViolation"
        await ws.send_str(json.dumps([2, "big", "DataTransfer", {"vendorId": "x" * 5000}]))
        assert json.loads((await ws.receive(timeout=2)).data)[:3] == [4, "big", "FormationViolation"]
        await ws.send_str(json.dumps([2, "u1", "NoSuchAction", {}]))
        assert json.loads((await ws.receive(timeout=2)).data)[:3] == [4, "u1", "NotImplemented"]
        await ws.send_str(json.dumps([2, "h1", "Heartbeat", {}]))
        reply = json.loads((await ws.receive(timeout=2)).data)
        assert reply[0] == 3 and reply[1] == "h1" and "currentTime" in reply[2]  # still served
        assert env.server.counters["bad_frames"] >= 4
    finally:
        await ws.close()
        await session.close()


async def test_schema_errors_on_201(env: Env) -> None:
    session, ws = await raw_session(env, protocol="ocpp2.0.1")
    try:
        await ws.send_str("[2, ")
        assert json.loads((await ws.receive(timeout=2)).data)[:3] == [4, "-1", "RpcFrameworkError"]
        await ws.send_str(json.dumps([6, "x", "Heartbeat", {}]))
        assert json.loads((await ws.receive(timeout=2)).data)[:3] == [4, "x", "MessageTypeNotSupported"]
        await ws.send_str(json.dumps([2, "b1", "BootNotification", {"reason": "PowerUp"}]))
        reply = json.loads((await ws.receive(timeout=2)).data)
        assert reply[0] == 4 and reply[1] == "b1"  # missing chargingStation: a schema error, not silence
    finally:
        await ws.close()
        await session.close()


async def test_flood_is_rate_limited_without_hurting_another_charger(env: Env) -> None:
    other = env.charger("CP1", "ocpp2.0.1", password="a-long-enough-secret")
    session, ws = await raw_session(env)
    try:
        for k in range(60):
            await ws.send_str(json.dumps([2, f"f{k}", "Heartbeat", {}]))
        replies = [json.loads((await ws.receive(timeout=5)).data) for _ in range(60)]
        limited = [r for r in replies if r[0] == 4 and r[2] == "GenericError"]
        assert limited and len(limited) < 60
        await wait_for(lambda: other.connected.is_set() and other.transaction_id is not None)
    finally:
        await ws.close()
        await session.close()


async def test_tls_security_profile_2(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    done = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                           str(cert), "-days", "2", "-subj", "/CN=127.0.0.1"], capture_output=True)
    assert done.returncode == 0, done.stderr
    e = Env(ocpp_config(CHARGERS, tls_cert=str(cert), tls_key=str(key)))
    await e.start()
    try:
        context = ssl.create_default_context(cafile=str(cert))
        context.check_hostname = False
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"wss://127.0.0.1:{e.server.port}/ocpp/CP1", protocols=("ocpp1.6",),
                                          auth=aiohttp.BasicAuth("CP1", "a-long-enough-secret"), ssl=context) as ws:
                await ws.send_str(json.dumps([2, "h", "Heartbeat", {}]))
                assert json.loads((await ws.receive(timeout=2)).data)[0] == 3
            with pytest.raises(aiohttp.ClientError):
                async with session.ws_connect(f"ws://127.0.0.1:{e.server.port}/ocpp/CP1", protocols=("ocpp1.6",)):
                    pass
    finally:
        await asyncio.sleep(0)
        await e.stop()
