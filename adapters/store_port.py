"""What the service needs of its state store, whichever engine holds it.

Two implementations: ``adapters.store.StateStore`` (SQLite, one process) and
``adapters.cluster.pg_store.PgStore`` (PostgreSQL, cluster mode, DESIGN 3.12). Both keep every
key in memory (reads never wait for the database) and write through; a write that fails stays
pending and is retried by the next write or ``flush()``. ``tests/test_store_conformance.py`` runs
one suite against both.
"""

from __future__ import annotations

from typing import Any, Protocol

from adapters.store import OutboxItem

__all__ = ["Store"]


class Store(Protocol):
    saved_at: float
    fault: str | None
    fault_since: float | None
    failures: int

    def get_json(self, key: str) -> Any: ...

    def put_json(self, key: str, value: Any, *, flush: bool = True) -> None: ...

    def delete_json(self, key: str, *, flush: bool = True) -> None: ...

    def keys(self, prefix: str) -> list[str]: ...

    def enqueue(self, path: str, body: dict[str, Any], headers: dict[str, str], site_id: str | None = None) -> int:
        """Queue ``POST path``; ``site_id`` names the site it is about (None: the whole deployment).
        SQLite keeps it in memory only; PostgreSQL stores it, so the site's owner delivers it."""
        ...

    def seen_request(self, request_id: str) -> bool:
        """Whether a request with this X-Request-ID was applied lately (in a cluster: by any instance)."""
        ...

    def remember_request(self, request_id: str) -> None: ...

    def due(self, now: float, limit: int = 50) -> list[OutboxItem]: ...

    def delivered(self, item_id: int) -> None: ...

    def retry_later(self, item_id: int, next_try: float) -> None: ...

    def outbox_size(self) -> int: ...

    @property
    def pending(self) -> int: ...

    def flush(self) -> bool: ...

    def close(self) -> None: ...
