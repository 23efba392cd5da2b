"""Real servers for the tests: InfluxDB 1.x (``influxd``) and VictoriaMetrics, on loopback.

Each starts on free ports in a temp dir and is stopped by the test. Under ``CI=true`` a missing
binary is a failure; elsewhere the test is skipped with the reason.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

__all__ = ["InfluxServer", "VictoriaMetrics", "free_port", "require_binary"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def require_binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (make setup installs it with apt)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def _wait_http(url: str, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status < 500:
                    return
        except OSError:
            pass
        if time.monotonic() > end:
            raise RuntimeError(f"{url} did not come up")
        time.sleep(0.1)


class InfluxServer:
    """``influxd`` 1.x with meta/data/wal in ``root``; HTTP on a free port (or ``port``)."""

    def __init__(self, root: Path, port: int | None = None) -> None:
        self.root = root
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> InfluxServer:
        binary = require_binary("influxd")
        self.root.mkdir(parents=True, exist_ok=True)
        config = self.root / "influxdb.conf"
        config.write_text(f"""
reporting-disabled = true
bind-address = "127.0.0.1:{free_port()}"
[meta]
  dir = "{self.root}/meta"
[data]
  dir = "{self.root}/data"
  wal-dir = "{self.root}/wal"
  query-log-enabled = false
[http]
  enabled = true
  bind-address = "127.0.0.1:{self.port}"
  log-enabled = false
[monitor]
  store-enabled = false
[continuous_queries]
  enabled = false
""")
        self.proc = subprocess.Popen([binary, "run", "-config", str(config)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        _wait_http(f"{self.url}/ping")
        return self

    def query(self, q: str, db: str) -> dict:  # type: ignore[type-arg]
        import json
        import urllib.parse

        url = f"{self.url}/query?" + urllib.parse.urlencode({"db": db, "q": q})
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.loads(response.read())  # type: ignore[no-any-return]

    def create_db(self, db: str) -> None:
        import urllib.parse

        data = urllib.parse.urlencode({"q": f'CREATE DATABASE "{db}"'}).encode()
        urllib.request.urlopen(f"{self.url}/query", data=data, timeout=10).read()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            self.proc = None


class VictoriaMetrics:
    """A VictoriaMetrics single node: speaks the InfluxDB v2 write protocol on /api/v2/write."""

    def __init__(self, root: Path, port: int | None = None) -> None:
        self.root = root
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> VictoriaMetrics:
        binary = require_binary("victoria-metrics")
        self.root.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen([binary, f"-storageDataPath={self.root}", f"-httpListenAddr=127.0.0.1:{self.port}",
                                      "-retentionPeriod=100y", "-search.latencyOffset=0s"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_http(f"{self.url}/health")
        return self

    def export(self, match: str) -> list[dict]:  # type: ignore[type-arg]
        import json
        import urllib.parse

        urllib.request.urlopen(f"{self.url}/internal/force_flush", timeout=10).read()
        url = f"{self.url}/api/v1/export?" + urllib.parse.urlencode({"match[]": match})
        with urllib.request.urlopen(url, timeout=10) as response:
            return [json.loads(line) for line in response.read().decode().splitlines() if line]

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            self.proc = None
