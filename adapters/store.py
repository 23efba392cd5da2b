"""The embedded SQLite state in ``state_dir``: what the service needs after a restart.

A small key-value table of JSON documents (forecasts and link state per site, controller state
with sessions and the limits chargers hold, OSCP registration) and an outbox of messages to the
grid operator that must not be lost. SQLite in WAL mode; calls are short and synchronous, made
from the event loop's thread only.

Writes never raise: memory is what the service runs on (everything is read at start), the file
follows it. A write that fails (disk full, I/O error, a read-only file system) stays pending in
memory, the store reports the fault (``fault``, ``failures``, a rate-limited log line) and every
later write or ``flush()`` tries again with everything pending, so control never waits for the
disk or stops on it. A start on a full disk reads the file without writing and runs the same way.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from adapters.store_memory import LOG_EVERY_S, MemoryFirstStore, OutboxItem

__all__ = ["LOG_EVERY_S", "OutboxItem", "StateStore", "private_dir"]

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

log = logging.getLogger(__name__)

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


class StateStore(MemoryFirstStore):
    """JSON key-value state and the outbox, in one SQLite file (see the module docstring).

    ``saved_at`` is the wall-clock time [s since the epoch] when the file last held everything
    written to the store; ``fault`` is the last write error while one is pending, else None.
    """

    def __init__(self, path: Path | str, *, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        private_dir(self.path.parent)
        for name in (self.path, Path(f"{self.path}-wal"), Path(f"{self.path}-shm")):
            if name.exists():
                name.chmod(FILE_MODE)  # a file from before 0600 was the rule
        super().__init__(clock)
        self._db: sqlite3.Connection | None = None
        try:
            self._db = self._connect()
            self._load(self._db)
        except (sqlite3.Error, OSError) as exc:
            # A full or read-only file system: start from what can be read, write when it can.
            self._db = None
            self._load_read_only()
            self._failed(exc, self.clock())

    def _connect(self) -> sqlite3.Connection:
        os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, FILE_MODE))  # owner only from the start
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
        except sqlite3.Error:
            db.close()
            raise
        return db

    def _load(self, db: sqlite3.Connection) -> None:
        self._kv = dict(db.execute("SELECT key, value FROM kv").fetchall())
        self._outbox = {}
        for row in db.execute("SELECT id, path, body, headers, attempts, next_try, created FROM outbox ORDER BY id"):
            self._outbox[row[0]] = OutboxItem(row[0], row[1], json.loads(row[2]), json.loads(row[3]), row[4],
                                              row[5], row[6])
        seq = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
        self._next_id = int(max([0, *self._outbox, *(seq or ())])) + 1

    def _load_read_only(self) -> None:
        """Read the file without writing to its directory (WAL mode would create ``-shm`` there).

        ``immutable`` ignores a ``-wal`` file, so it is used only when there is none with content
        (a clean close leaves none); a file that exists and cannot be read stops the start.
        """
        if not self.path.exists() or self.path.stat().st_size == 0:
            self._next_id = 1  # a first start: nothing to read
            return
        wal = self.path.with_name(self.path.name + "-wal")
        modes = ["mode=ro"] if wal.exists() and wal.stat().st_size > 0 else ["mode=ro", "immutable=1"]
        for k, mode in enumerate(modes):
            try:
                with contextlib.closing(sqlite3.connect(f"{self.path.as_uri()}?{mode}", uri=True)) as db:
                    self._load(db)
                return
            except sqlite3.Error:
                if k == len(modes) - 1:
                    raise

    def close(self) -> None:
        self.flush()
        if self._db is not None:
            self._db.close()

    # ----------------------------------------------------------------- writing
    def _target(self) -> str:
        return str(self.path)

    def flush(self) -> bool:
        """Write everything pending in one transaction; False (and the fault kept) when that fails."""
        now = self.clock()
        db = self._db
        try:
            if db is None:
                db = self._db = self._connect()
            if self._kv_pending or self._outbox_pending:
                self._write(db, now)
        except (sqlite3.Error, OSError) as exc:
            if db is not None and db.in_transaction:
                try:
                    db.execute("ROLLBACK")
                except sqlite3.Error:
                    log.debug("rollback after a failed write failed too", exc_info=True)
            self._failed(exc, now)
            return False
        self._kv_pending.clear()
        self._outbox_pending.clear()
        self.saved_at = now
        if self.fault is not None:
            log.warning("state written to %s again after %.0f s and %d failed writes", self.path,
                        now - (self.fault_since or now), self._fault_failures)
            self.fault = None
            self.fault_since = None
        return True

    def _write(self, db: sqlite3.Connection, now: float) -> None:
        db.execute("BEGIN IMMEDIATE")
        db.executemany(
            "INSERT INTO kv (key, value, updated) VALUES (?, ?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value, updated = excluded.updated",
            [(key, self._kv[key], now) for key in self._kv_pending if key in self._kv])
        db.executemany("DELETE FROM kv WHERE key = ?", [(key,) for key in self._kv_pending if key not in self._kv])
        for item_id in sorted(self._outbox_pending):
            item = self._outbox.get(item_id)
            if item is None:
                db.execute("DELETE FROM outbox WHERE id = ?", (item_id,))
            else:
                db.execute(
                    "INSERT OR REPLACE INTO outbox (id, path, body, headers, attempts, next_try, created) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (item.id, item.path, json.dumps(item.body), json.dumps(item.headers), item.attempts,
                     item.next_try, item.created))
        db.execute("COMMIT")
