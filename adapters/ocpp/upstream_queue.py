"""What the CSMS has not seen yet, on disk: the ordered queue of local controller mode.

While the CSMS is unreachable (or still catching up), a charger's calls for it are kept here in
arrival order, one SQLite row each, and delivered in that order when it returns. A
StartTransaction the balancer had to answer itself carries the transaction id it gave the
charger (``local_tx``); the CSMS's id for it, once known, goes into ``tx_map`` so that every later
message carries the right id on each side, across restarts too. SQLite in WAL mode, calls short
and synchronous from the event loop's thread (like ``adapters/store.py``), in a file of its own so
the queue's churn never holds up the service state's writes.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["QueuedCall", "UpstreamQueue"]

TX_MAP_KEEP_S = 90 * 86400.0
"""How long a local -> CSMS transaction id mapping is kept [s]."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS queue (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    charger_id TEXT NOT NULL,
    frame TEXT NOT NULL,
    local_tx TEXT,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS queue_charger ON queue (charger_id, seq);
CREATE TABLE IF NOT EXISTS tx_map (
    charger_id TEXT NOT NULL,
    local_tx TEXT NOT NULL,
    remote_tx TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (charger_id, local_tx)
);
"""


@dataclass(frozen=True, slots=True)
class QueuedCall:
    """One charger CALL frame waiting for the CSMS, exactly as the charger sent it."""

    seq: int
    frame: str
    local_tx: str | None


class UpstreamQueue:
    """Per-charger FIFO of CALL frames and the local -> CSMS transaction id map."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(_SCHEMA)
        # A mapping outlives its transaction by far at this age; without pruning the table only grows.
        self.db.execute("DELETE FROM tx_map WHERE created < ?", (time.time() - TX_MAP_KEEP_S,))

    def close(self) -> None:
        self.db.close()

    def push(self, charger_id: str, frame: str) -> int:
        """Append ``frame`` to the charger's queue; its sequence number."""
        cursor = self.db.execute("INSERT INTO queue (charger_id, frame, created) VALUES (?, ?, ?)",
                                 (charger_id, frame, time.time()))
        return int(cursor.lastrowid or 0)

    def push_front(self, charger_id: str, frame: str) -> int:
        """Put ``frame`` before everything queued (a call sent before those, left unanswered)."""
        row = self.db.execute("SELECT MIN(seq) FROM queue").fetchone()
        seq = min(int(row[0]) if row[0] is not None else 1, 1) - 1
        self.db.execute("INSERT INTO queue (seq, charger_id, frame, created) VALUES (?, ?, ?, ?)",
                        (seq, charger_id, frame, time.time()))
        return seq

    def set_local_tx(self, seq: int, local_tx: str) -> None:
        """The transaction id the balancer answered the queued StartTransaction ``seq`` with."""
        self.db.execute("UPDATE queue SET local_tx = ? WHERE seq = ?", (local_tx, seq))

    def head(self, charger_id: str) -> QueuedCall | None:
        row = self.db.execute("SELECT seq, frame, local_tx FROM queue WHERE charger_id = ? ORDER BY seq LIMIT 1",
                              (charger_id,)).fetchone()
        return None if row is None else QueuedCall(int(row[0]), str(row[1]), row[2])

    def remove(self, seq: int) -> None:
        self.db.execute("DELETE FROM queue WHERE seq = ?", (seq,))

    def size(self, charger_id: str | None = None) -> int:
        if charger_id is None:
            row = self.db.execute("SELECT COUNT(*) FROM queue").fetchone()
        else:
            row = self.db.execute("SELECT COUNT(*) FROM queue WHERE charger_id = ?", (charger_id,)).fetchone()
        return int(row[0])

    def frames(self, charger_id: str) -> list[str]:
        """The charger's queued frames in order (for status and tests)."""
        rows = self.db.execute("SELECT frame FROM queue WHERE charger_id = ? ORDER BY seq", (charger_id,))
        return [str(r[0]) for r in rows]

    def map_tx(self, charger_id: str, local_tx: str, remote_tx: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO tx_map (charger_id, local_tx, remote_tx, created) VALUES (?, ?, ?, ?)",
                        (charger_id, local_tx, remote_tx, time.time()))

    def tx_map(self, charger_id: str) -> dict[str, str]:
        """local transaction id -> the CSMS's, for one charger."""
        rows = self.db.execute("SELECT local_tx, remote_tx FROM tx_map WHERE charger_id = ?", (charger_id,))
        return {str(a): str(b) for a, b in rows}
