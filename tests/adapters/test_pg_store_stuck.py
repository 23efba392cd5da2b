"""The PostgreSQL store gets over a query that will never be answered, and its stop does not wait for it.

A middlebox (a proxy, a NAT, a peer's TCP stack) that takes every byte and passes none on leaves a
query waiting with nothing unacknowledged: no TCP or libpq timeout of the client's fires. Here the
connections open at ``swallow()`` go silent that way; new connections get through.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
from urllib.parse import urlsplit

import psycopg

from adapters.cluster.pg_store import STUCK_S, WAIT_S, PgStore


class Swallower:
    """Forwards to ``target`` until ``swallow()``; then the connections open read and drop what
    the client sends (so its kernel acknowledges it) and forward nothing, until ``close()``."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self._open: list[threading.Event] = []
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def swallow(self) -> None:
        for silent in self._open:
            silent.set()

    def close(self) -> None:
        self._stop.set()
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            silent = threading.Event()
            self._open.append(silent)
            threading.Thread(target=self._pump, args=(client, silent), daemon=True).start()

    def _pump(self, client: socket.socket, silent: threading.Event) -> None:
        server = socket.create_connection(self.target, timeout=5)
        with client, server, contextlib.suppress(OSError):
            while not self._stop.is_set():
                ready, _, _ = select.select([client, server], [], [], 0.1)
                for s in ready:
                    data = s.recv(65536)
                    if not data:
                        return
                    if not silent.is_set():
                        (server if s is client else client).sendall(data)


def test_a_query_swallowed_on_the_way_is_given_up_and_the_state_written_on_a_new_connection(pg_url: str) -> None:
    url = urlsplit(pg_url)
    proxy = Swallower(("127.0.0.1", int(url.port or 5432)))
    store = PgStore(f"postgresql://postgres@127.0.0.1:{proxy.port}{url.path}", "stuck")
    try:
        proxy.swallow()
        store.put_json("controller:north", {"CP1": 16})  # its write waits for an answer that never comes
        assert store.fault is not None and store.pending == 1
        end = time.monotonic() + STUCK_S + WAIT_S + 5
        while not store.flush():  # a call after STUCK_S gives the stuck one up; the next one writes
            assert time.monotonic() < end, f"still failing: {store.fault}"
            time.sleep(0.5)
        assert store.fault is None and store.pending == 0
        with psycopg.connect(pg_url) as conn:
            row = conn.execute("SELECT value FROM kv WHERE key = 'controller:north'").fetchone()
        assert row is not None and row[0] == '{"CP1":16}'
    finally:
        store.close()
        proxy.close()


def test_close_ends_a_swallowed_query_and_its_thread(pg_url: str) -> None:
    url = urlsplit(pg_url)
    proxy = Swallower(("127.0.0.1", int(url.port or 5432)))
    before = set(threading.enumerate())
    store = PgStore(f"postgresql://postgres@127.0.0.1:{proxy.port}{url.path}", "stopping")
    try:
        proxy.swallow()
        store.put_json("controller:south", {"CP9": 8})
        assert store.fault is not None
        store.close()
        # The interpreter joins this thread at exit: it must end, or the process never exits.
        end = time.monotonic() + 5
        while any(t.name.startswith("pg-store") for t in set(threading.enumerate()) - before):
            assert time.monotonic() < end, "the store's writer thread is still stuck after close()"
            time.sleep(0.1)
    finally:
        proxy.close()
