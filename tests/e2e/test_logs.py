"""``balancer serve --log-format json``: every line on stderr is one JSON object."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import aiohttp
import yaml

from tests.servers import free_port

CONFIG = {"sites": [{"id": "depot", "grid_limit_a": 100, "fallback_kw": 10,
                     "chargers": [{"id": "CP1", "max_current_a": 32}]}],
          "oscp": {"token": "oscp-token"}, "control": {"interval_s": 0.2}}


def wait_up(url: str) -> None:
    # generous: a cold start (numpy, the planner worker) on a loaded 2-core machine took over 20 s once
    end = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except (urllib.error.URLError, OSError):
            assert time.monotonic() < end, "service did not start"
            time.sleep(0.1)


async def test_json_log_lines_all_parse(tmp_path: Path) -> None:
    http_port, ocpp_port = free_port(), free_port()
    config = {**CONFIG, "state_dir": str(tmp_path / "state"),
              "http": {"host": "127.0.0.1", "port": http_port}, "ocpp": {"host": "127.0.0.1", "port": ocpp_port}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    stderr = tmp_path / "stderr.log"
    with open(stderr, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "adapters.cli", "serve", "--config", str(path),
                                 "--log-format", "json", "--log-level", "debug"],
                                stdout=subprocess.DEVNULL, stderr=err, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        wait_up(f"http://127.0.0.1:{http_port}/healthz")
        async with aiohttp.ClientSession() as http:
            # Messages with quotes, backslashes, newlines and non-ASCII in what gets logged.
            async with http.get(f"ws://127.0.0.1:{ocpp_port}/ocpp/no\"bo'dy\\é") as r:
                assert r.status == 404
            async with http.post(f"http://127.0.0.1:{http_port}/oscp/fp/2.0/heartbeat",
                                 data=b'{"offline_mode_at": "it\'s \\"soon\\"\\n"}',
                                 headers={"Authorization": "Token oscp-token"}) as r:
                assert r.status == 400
            async with http.ws_connect(f"ws://127.0.0.1:{ocpp_port}/ocpp/CP1", protocols=("ocpp1.6",)) as ws:
                await ws.send_str('[2, "1", "BootNotification", {"chargePointVendor": "v", "chargePointModel": "m"}]')
                await ws.receive(timeout=5)
                await ws.send_str("not json \n at all")
                await ws.receive(timeout=5)
        path.write_text("sites: [\n")  # a broken reload is refused with an error line
        proc.send_signal(signal.SIGHUP)
        time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    lines = stderr.read_text(encoding="utf-8").splitlines()
    entries = []
    for line in lines:
        entry = json.loads(line)  # fails the test on any line that is not one JSON object
        assert isinstance(entry, dict) and {"t", "level", "logger", "msg"} <= set(entry), line
        entries.append(entry)
    messages = [e["msg"] for e in entries]
    assert any(m.startswith("refused unknown charger id") and "bo" in m for m in messages), messages
    assert any("bad frame" in m for m in messages), messages
    assert any("config reload refused" in m for m in messages), messages
    assert any(e["level"] == "DEBUG" for e in entries)
    assert messages[-1] == "service stopped"


def test_text_format_and_level(tmp_path: Path) -> None:
    """``--log-format text --log-level warning``: plain lines, nothing below WARNING."""
    http_port, ocpp_port = free_port(), free_port()
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({**CONFIG, "state_dir": str(tmp_path / "state"),
                                    "http": {"host": "127.0.0.1", "port": http_port},
                                    "ocpp": {"host": "127.0.0.1", "port": ocpp_port}}))
    proc = subprocess.Popen([sys.executable, "-m", "adapters.cli", "serve", "--config", str(path),
                             "--log-format", "text", "--log-level", "warning"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_up(f"http://127.0.0.1:{http_port}/healthz")
        urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{ocpp_port}/ocpp/ghost"), timeout=5).close()
    except urllib.error.HTTPError as exc:
        assert exc.code == 404
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
    lines = err.decode().splitlines()
    assert any(" WARNING adapters.ocpp" in line and "ghost" in line for line in lines), lines
    assert not any(" INFO " in line for line in lines), lines
