"""Pytest fixtures for cluster mode: one PostgreSQL server per test session, a fresh database per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.cluster_servers import NatsServer, PostgresServer

__all__ = ["nats_server", "pg_server", "pg_url"]


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    server = PostgresServer().start()
    yield server
    server.stop()


@pytest.fixture
def pg_url(pg_server: PostgresServer) -> str:
    return pg_server.database()


@pytest.fixture
def nats_server() -> Iterator[NatsServer]:
    server = NatsServer().start()
    yield server
    server.stop()
