"""What the SQLite and PostgreSQL stores share: every key and outbox row in memory, the changes
not yet written kept as pending, and the write-fault bookkeeping. Reads never touch the engine;
each engine writes the pending changes in its own ``flush``."""

from __future__ import annotations

import json
import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

__all__ = ["LOG_EVERY_S", "SEEN_KEEP_S", "MemoryFirstStore", "OutboxItem"]

LOG_EVERY_S = 60.0
"""While writes keep failing, one log line per this many seconds (with the count since)."""
SEEN_KEEP_S = 3600.0
"""The X-Request-IDs of applied requests are remembered this long (a sender repeats within minutes)."""
_SEEN = "seen_request:"


class OutboxItem:
    """One message waiting to be delivered: ``POST {base_url}/{path}`` with ``body``."""

    __slots__ = ("attempts", "body", "channel", "created", "headers", "id", "next_try", "path", "post_by", "site_id")

    def __init__(self, id: int, path: str, body: dict[str, Any], headers: dict[str, str], attempts: int,
                 next_try: float = 0.0, created: float = 0.0, site_id: str | None = None,
                 post_by: float = math.inf, channel: str = "oscp") -> None:
        self.id = id
        self.path = path
        self.body = body
        self.headers = headers
        self.attempts = attempts
        self.next_try = next_try
        self.created = created
        self.site_id = site_id
        """The site the message is about (cluster mode: its owner delivers it); None: the whole deployment."""
        self.post_by = post_by
        self.channel = channel
        """Cluster mode: ``oscp`` (``path`` is the OSCP message) or ``ocpi`` (a callback, ``path`` its URL)."""
        """Monotonic time after which it must not be POSTed before ``due`` hands it out again
        (cluster mode: a claim is fresh that long, ``adapters.cluster.shared_outbox``)."""


class MemoryFirstStore(ABC):
    """JSON key-value state and the outbox in memory, written by the engine's ``flush``.

    ``saved_at`` is the wall-clock time [s since the epoch] when the engine last held everything
    written to the store; ``fault`` is the last write error while one is pending, else None.
    """

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.saved_at = clock()
        self.fault: str | None = None
        self.fault_since: float | None = None
        self.failures = 0
        self._fault_failures = 0
        self._logged_at = 0.0
        self._kv: dict[str, str] = {}  # every key, as JSON text
        self._kv_pending: set[str] = set()
        self._outbox: dict[int, OutboxItem] = {}  # in id order: ids only grow
        self._outbox_pending: set[int] = set()
        self._next_id = 1
        self._seen_pruned = 0.0

    @abstractmethod
    def flush(self) -> bool:
        """Write the pending changes; False (and ``fault`` set) when the engine refused them."""

    @abstractmethod
    def _target(self) -> str:
        """Where the state is written, for the fault log."""

    # ----------------------------------------------------------------- key-value
    def get_json(self, key: str) -> Any:
        text = self._kv.get(key)
        return None if text is None else json.loads(text)

    def put_json(self, key: str, value: Any, *, flush: bool = True) -> None:
        """Set ``key``; written now with ``flush`` (else by the next flush). Unchanged values cost no write."""
        text = json.dumps(value, separators=(",", ":"))
        if self._kv.get(key) != text:
            self._kv[key] = text
            self._kv_pending.add(key)
        if flush:
            self.flush()

    def delete_json(self, key: str, *, flush: bool = True) -> None:
        """Remove ``key`` (written now with ``flush``, else by the next flush)."""
        if self._kv.pop(key, None) is not None:
            self._kv_pending.add(key)
        if flush:
            self.flush()

    def keys(self, prefix: str) -> list[str]:
        """Every key starting with ``prefix``, sorted."""
        return sorted(k for k in self._kv if k.startswith(prefix))

    # ----------------------------------------------------------------- requests received
    def seen_request(self, request_id: str) -> bool:
        """Whether a request with this ``X-Request-ID`` was applied within ``SEEN_KEEP_S``: its
        sender repeats it (its answer got lost), so it is answered as before and not applied again."""
        at = self.get_json(_SEEN + request_id)
        return isinstance(at, (int, float)) and self.clock() - at < SEEN_KEEP_S

    def remember_request(self, request_id: str) -> None:
        """Note a request as applied (written now: a restart still knows it); forgets old ones."""
        now = self.clock()
        self._kv[_SEEN + request_id] = json.dumps(now)
        self._kv_pending.add(_SEEN + request_id)
        if now - self._seen_pruned >= 60.0:
            self._seen_pruned = now
            for key in self.keys(_SEEN):
                if now - float(self._kv[key]) >= SEEN_KEEP_S:
                    self.delete_json(key, flush=False)
        self.flush()

    # ----------------------------------------------------------------- outbox
    def enqueue(self, path: str, body: dict[str, Any], headers: dict[str, str], site_id: str | None = None) -> int:
        item_id = self._next_id
        self._next_id += 1
        self._outbox[item_id] = OutboxItem(item_id, path, body, headers, 0, 0.0, self.clock(), site_id)
        self._outbox_pending.add(item_id)
        self.flush()
        return item_id

    def due(self, now: float, limit: int = 50) -> list[OutboxItem]:
        due = []
        for item in self._outbox.values():
            if item.next_try <= now:
                due.append(item)
                if len(due) == limit:
                    break
        return due

    def delivered(self, item_id: int) -> None:
        if self._outbox.pop(item_id, None) is not None:
            self._outbox_pending.add(item_id)
            self.flush()

    def retry_later(self, item_id: int, next_try: float) -> None:
        item = self._outbox.get(item_id)
        if item is not None:
            item.attempts += 1
            item.next_try = next_try
            self._outbox_pending.add(item_id)
            self.flush()

    def outbox_size(self) -> int:
        return len(self._outbox)

    # ----------------------------------------------------------------- faults
    @property
    def pending(self) -> int:
        """Keys and outbox rows changed in memory and not yet written."""
        return len(self._kv_pending) + len(self._outbox_pending)

    def _failed(self, exc: BaseException, now: float) -> None:
        first = self.fault is None
        if first:
            self.fault_since = now
            self._fault_failures = 0
        self.failures += 1
        self._fault_failures += 1
        self.fault = f"{type(exc).__name__}: {exc}"
        if first or now - self._logged_at >= LOG_EVERY_S:
            log = logging.getLogger(type(self).__module__)  # the engine's own logger
            log.error("state not written to %s (%s): %d failed writes in %.0f s, %d changes kept in memory"
                      " and retried", self._target(), self.fault, self._fault_failures,
                      now - (self.fault_since or now), self.pending)
            self._logged_at = now
