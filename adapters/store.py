"""The embedded SQLite state in ``state_dir``: what the service needs after a restart.

A small key-value table of JSON documents (forecasts and link state per site, controller state
with sessions and the limits chargers hold, OSCP registration) and an outbox of messages to the
grid operator that must not be lost. SQLite in WAL mode; calls are short and synchronous, made
from the event loop's thread only.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

__all__ = ["OutboxItem", "StateStore", "private_dir"]

# The state holds tokens (OSCP registration, our own token): owner only. SQLite gives its -wal
# and -shm files the database file's mode.
FILE_MODE = 0o600
DIR_MODE = 0o700


def private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) if needed; ``path`` itself is made owner-only (0700)."""
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o077:
        path.chmod(DIR_MODE)
    return path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL, updated REAL NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    path TEXT NOT NULL,
    body TEXT NOT NULL,
    headers TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_try REAL NOT NULL,
    created REAL NOT NULL
);
"""


class OutboxItem:
    """One message waiting to be delivered: ``POST {base_url}/{path}`` with ``body``."""

    __slots__ = ("attempts", "body", "headers", "id", "path")

    def __init__(self, id: int, path: str, body: dict[str, Any], headers: dict[str, str], attempts: int) -> None:
        self.id = id
        self.path = path
        self.body = body
        self.headers = headers
        self.attempts = attempts


class StateStore:
    """JSON key-value state and the outbox, in one SQLite file."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        private_dir(self.path.parent)
        for name in (self.path, Path(f"{self.path}-wal"), Path(f"{self.path}-shm")):
            if name.exists():
                name.chmod(FILE_MODE)  # a file from before 0600 was the rule
        os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, FILE_MODE))
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def get_json(self, key: str) -> Any:
        row = self._db.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def put_json(self, key: str, value: Any) -> None:
        self._db.execute(
            "INSERT INTO kv (key, value, updated) VALUES (?, ?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value, updated = excluded.updated",
            (key, json.dumps(value, separators=(",", ":")), time.time()),
        )

    def enqueue(self, path: str, body: dict[str, Any], headers: dict[str, str]) -> int:
        cur = self._db.execute(
            "INSERT INTO outbox (path, body, headers, next_try, created) VALUES (?, ?, ?, ?, ?)",
            (path, json.dumps(body), json.dumps(headers), 0.0, time.time()),
        )
        return int(cur.lastrowid or 0)

    def due(self, now: float, limit: int = 50) -> list[OutboxItem]:
        rows = self._db.execute(
            "SELECT id, path, body, headers, attempts FROM outbox WHERE next_try <= ? ORDER BY id LIMIT ?",
            (now, limit),
        ).fetchall()
        return [OutboxItem(r[0], r[1], json.loads(r[2]), json.loads(r[3]), r[4]) for r in rows]

    def delivered(self, item_id: int) -> None:
        self._db.execute("DELETE FROM outbox WHERE id = ?", (item_id,))

    def retry_later(self, item_id: int, next_try: float) -> None:
        self._db.execute("UPDATE outbox SET attempts = attempts + 1, next_try = ? WHERE id = ?", (next_try, item_id))

    def outbox_size(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])
