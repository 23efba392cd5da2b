"""Real cluster servers for the tests, on loopback and free ports: PostgreSQL, NATS, HAProxy.

PostgreSQL comes from Debian's ``postgresql`` package (``/usr/lib/postgresql/*/bin``): ``initdb``
into a temp dir and ``pg_ctl`` on a free port, as the ``postgres`` user when the tests run as root
(PostgreSQL refuses to run as root). The machine's own PostgreSQL is never used. Under
``CI=true`` a missing binary is a failure; elsewhere the test is skipped with the reason.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import free_port, require_binary

__all__ = ["HaProxy", "NatsServer", "PostgresServer", "pg_binary"]


def _missing(message: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def pg_binary(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(p.split("/")[4]))
    if not found:
        _missing(f"PostgreSQL's {name} is not installed (make setup installs Debian's postgresql)")
    return found[-1]


class PostgresServer:
    """A throw-away PostgreSQL cluster; ``database()`` hands out a fresh empty database."""

    def __init__(self) -> None:
        self.initdb = pg_binary("initdb")
        self.pg_ctl = pg_binary("pg_ctl")
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="balancer-pg-"))
        self.data = self.root / "data"
        self.as_user: str | None = "postgres" if os.geteuid() == 0 else None
        if self.as_user is not None:
            try:
                pw = pwd.getpwnam(self.as_user)
            except KeyError:
                _missing("the postgres user does not exist (Debian's postgresql package creates it)")
            os.chown(self.root, pw.pw_uid, pw.pw_gid)

    def _run(self, *args: str) -> None:
        command = [*args] if self.as_user is None else ["runuser", "-u", self.as_user, "--", *args]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=self.root)

    def start(self) -> PostgresServer:
        self._run(self.initdb, "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync")
        options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        self._run(self.pg_ctl, "-D", str(self.data), "-o", options, "-l", str(self.root / "log"), "-w",
                  "-t", "60", "start")
        return self

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def database(self) -> str:
        import psycopg  # the cluster extra: only the tests that use PostgreSQL need it

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}".encode())
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self._run(self.pg_ctl, "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


class NatsServer:
    """``nats-server`` on a free loopback port."""

    def __init__(self) -> None:
        self.binary = require_binary("nats-server")
        self.port = free_port()
        self.monitor_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> NatsServer:
        self.proc = subprocess.Popen([self.binary, "-a", "127.0.0.1", "-p", str(self.port), "-m", str(self.monitor_port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        end = time.monotonic() + 20
        while time.monotonic() < end:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.5):
                return self
            time.sleep(0.05)
        raise RuntimeError("nats-server did not come up")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)


@contextlib.contextmanager
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer().start()
    try:
        yield server
    finally:
        server.stop()


class HaProxy:
    """``haproxy`` in front of the instances: one frontend for OCPP websockets, one for HTTP.

    Backends are checked on ``/healthz`` every second (down after 3 failures, a slow answer within 3 s
still counts: a busy instance is not a dead one); a connection to a dead backend is retried on
    another one (``option redispatch``), so chargers reconnect through it as they would in production.
    """

    def __init__(self, root: Path, backends: list[tuple[str, int, int]]) -> None:
        self.binary = require_binary("haproxy")
        self.root = root
        self.backends = backends  # (name, ocpp port, http port)
        self.ocpp_port = free_port()
        self.http_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def config(self) -> str:
        ocpp = "\n".join(f"    server {n} 127.0.0.1:{o} check port {h} inter 1s fall 3 rise 2"
                         for n, o, h in self.backends)
        http = "\n".join(f"    server {n} 127.0.0.1:{h} check inter 1s fall 3 rise 2" for n, _, h in self.backends)
        return f"""global
    maxconn 4000
defaults
    mode http
    timeout connect 1s
    timeout client 90s
    timeout server 90s
    timeout tunnel 1h
    timeout check 3s
    retries 3
    option redispatch
frontend ocpp
    bind 127.0.0.1:{self.ocpp_port}
    default_backend ocpp
frontend api
    bind 127.0.0.1:{self.http_port}
    default_backend api
backend ocpp
    balance leastconn
    option httpchk GET /healthz
{ocpp}
backend api
    balance roundrobin
    option httpchk GET /healthz
    retry-on conn-failure
{http}
"""

    def start(self) -> HaProxy:
        path = self.root / "haproxy.cfg"
        path.write_text(self.config())
        subprocess.run([self.binary, "-c", "-q", "-f", str(path)], check=True)
        self.proc = subprocess.Popen([self.binary, "-db", "-f", str(path)], stdout=subprocess.DEVNULL,
                                     stderr=open(self.root / "haproxy.log", "ab"))  # noqa: SIM115
        end = time.monotonic() + 20
        while time.monotonic() < end:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.http_port), 0.5):
                return self
            time.sleep(0.05)
        raise RuntimeError("haproxy did not come up")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
