"""Run ``balancer serve`` as a real process for the end-to-end tests."""

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
from typing import Any

import yaml

from tests.servers import free_port


class ServiceProcess:
    def __init__(self, tmp: Path, config: dict[str, Any]) -> None:
        self.tmp = tmp
        self.http_port = free_port()
        self.ocpp_port = free_port()
        config = {**config, "state_dir": str(tmp / "state"),
                  "ocpp": {**config.get("ocpp", {}), "host": "127.0.0.1", "port": self.ocpp_port},
                  "http": {**config.get("http", {}), "host": "127.0.0.1", "port": self.http_port}}
        self.path = tmp / "config.yaml"
        self.path.write_text(yaml.safe_dump(config))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def ocpp_url(self) -> str:
        return f"ws://127.0.0.1:{self.ocpp_port}/ocpp"

    def start(self) -> ServiceProcess:
        log = open(self.tmp / "service.log", "ab")  # noqa: SIM115 - kept open for the process
        self.proc = subprocess.Popen([sys.executable, "-m", "adapters.cli", "serve", "--config", str(self.path)],
                                     stdout=log, stderr=log, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        end = time.monotonic() + 20
        while True:
            try:
                self.get("/healthz")
                return self
            except (urllib.error.URLError, ConnectionError, OSError):
                if self.proc.poll() is not None or time.monotonic() > end:
                    raise RuntimeError("service did not start:\n" + (self.tmp / "service.log").read_text()) from None
                time.sleep(0.1)

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return -9

    def request(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json", **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=10) as response:
                text = response.read().decode()
                return response.status, (json.loads(text) if text and text[0] in "[{" else text)
        except urllib.error.HTTPError as err:
            text = err.read().decode()
            return err.code, (json.loads(text) if text and text[0] in "[{" else text)

    def get(self, path: str, token: str | None = None) -> Any:
        status, body = self.request("GET", path, headers={"Authorization": f"Bearer {token}"} if token else None)
        assert status == 200, (status, body)
        return body
