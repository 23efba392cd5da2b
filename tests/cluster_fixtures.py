"""Pytest fixtures for cluster mode: one PostgreSQL and one NATS server per test session, a fresh database per test."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.cluster_servers import NatsServer, PostgresServer

__all__ = ["hold_sites", "nats_server", "pg_server", "pg_url"]


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    server = PostgresServer().start()
    yield server
    server.stop()


@pytest.fixture
def pg_url(pg_server: PostgresServer) -> str:
    return pg_server.database()


@pytest.fixture(scope="session")
def nats_server() -> Iterator[NatsServer]:
    """One for the session, like PostgreSQL: core NATS keeps no state, and every test ends the
    subscriptions of its instances and buses (each stops them)."""
    server = NatsServer().start()
    yield server
    server.stop()


def hold_sites(url: str, instance_id: str, sites: list[str]) -> tuple[Any, dict[str, int]]:
    """Take ``sites`` for ``instance_id`` as ``adapters.cluster.ownership`` does (the advisory lock on
    a connection named after the instance, the epoch raised, the owner written), without its grace
    wait. Returns the lock connection (close it to let go) and each site's epoch."""
    import psycopg

    from adapters.cluster.migrations import migrate
    from adapters.cluster.ownership import LOCK_NAMESPACE

    conn = psycopg.connect(url, autocommit=True, application_name=f"balancer:{instance_id}")
    migrate(conn)
    epochs = {}
    for site in sites:
        conn.execute("INSERT INTO cluster_sites (site_id) VALUES (%s) ON CONFLICT DO NOTHING", (site,))
        row = conn.execute("SELECT lock_key FROM cluster_sites WHERE site_id = %s", (site,)).fetchone()
        assert row is not None
        got = conn.execute("SELECT pg_try_advisory_lock(%s, %s)", (LOCK_NAMESPACE, row[0])).fetchone()
        assert got is not None and got[0], f"{site} is held by another instance"
        taken = conn.execute("UPDATE cluster_sites SET epoch = epoch + 1, owner = %s WHERE site_id = %s "
                             "RETURNING epoch", (instance_id, site)).fetchone()
        assert taken is not None
        epochs[site] = int(taken[0])
    return conn, epochs
