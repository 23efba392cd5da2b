"""The InfluxDB sink: batched, asynchronous, never blocking the control loop, losing nothing.

``write()`` only appends line protocol to an in-memory queue. A background task flushes it every
``flush_interval_s``: with ``api: v2`` through influxdb-client's write API (InfluxDB 1.8+, 2.x,
3.x and other servers speaking that protocol), with ``api: v1`` as the same line protocol POSTed
to ``/write`` (InfluxDB before 1.8 has no v2 API). While the server is down points stay queued;
past ``buffer_points`` the oldest are spilled to files in ``spill_dir`` and replayed, in order,
when it is back. ``dropped_points`` counts what even the disk could not keep.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from influxdb_client.domain.write_precision import WritePrecision

from adapters.metrics import Point
from adapters.store import FILE_MODE, private_dir
from balancer.model import InfluxSettings

__all__ = ["InfluxSink"]

log = logging.getLogger(__name__)

BATCH = 5000


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path``, readable by the owner only (spilled points carry site and charger ids)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
        f.write(text)


class InfluxSink:
    """See the module docstring."""

    def __init__(self, settings: InfluxSettings, spill_dir: Path, *,
                 controls: Callable[[str], bool] | None = None) -> None:
        self.settings = settings
        self.controls = controls
        """Cluster mode: a point tagged with a site is written only while this instance controls it."""
        self.spill_dir = Path(spill_dir)
        self.queue: deque[str] = deque()
        self.counters = {"written_points": 0, "failed_writes": 0, "dropped_points": 0, "spilled_points": 0}
        if controls is not None:
            self.counters["not_owned_points"] = 0
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._client: Any = None
        self._write_api: Any = None
        self._spill_seq = 0
        self._flushing = asyncio.Lock()
        """One flush at a time: a second one during the first's send sent the same batch again and
        then took it off the queue twice, dropping the points behind it unsent."""

    # ----------------------------------------------------------------- producer side
    def write(self, points: list[Point] | list[str]) -> None:
        """Queue points (never blocks, never raises)."""
        for point in points:
            if self.controls is not None and not isinstance(point, str):
                site_id = point.tag_value("site")
                if site_id is not None and not self.controls(site_id):
                    self.counters["not_owned_points"] += 1  # the site's owner writes its series
                    continue
            line = point if isinstance(point, str) else point.to_line_protocol()
            if line:
                self.queue.append(line)
        if len(self.queue) > self.settings.buffer_points:
            self._spill(len(self.queue) - self.settings.buffer_points // 2)

    def stats(self) -> dict[str, int]:
        return {**self.counters, "buffered": len(self.queue), "spill_files": len(self._spill_files())}

    # ----------------------------------------------------------------- spill to disk
    def _spill_files(self) -> list[Path]:
        if not self.spill_dir.exists():
            return []
        return sorted(self.spill_dir.glob("spill-*.lp"))

    def _spill(self, n: int) -> None:
        lines = [self.queue.popleft() for _ in range(min(n, len(self.queue)))]
        try:
            private_dir(self.spill_dir)
            existing = self._spill_files()
            if existing:
                self._spill_seq = max(self._spill_seq, int(existing[-1].stem.split("-")[1]))
            self._spill_seq += 1
            path = self.spill_dir / f"spill-{self._spill_seq:09d}.lp"
            _write_private(path, "\n".join(lines) + "\n")
            self.counters["spilled_points"] += len(lines)
        except OSError as exc:
            self.counters["dropped_points"] += len(lines)
            log.error("InfluxDB buffer full and spill failed, %d points dropped: %r", len(lines), exc)

    # ----------------------------------------------------------------- consumer side
    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        if self.settings.api == "v2":
            from influxdb_client.client.influxdb_client_async import InfluxDBClientAsync

            self._client = InfluxDBClientAsync(url=self.settings.url, token=self.settings.token or "none",
                                               org=self.settings.org or "-", timeout=10_000)
            self._write_api = self._client.write_api()
        self._task = asyncio.create_task(self._loop(), name="influx-flush")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.flush(), timeout=5.0)
        if self.queue:
            self._spill(len(self.queue))  # kept for the next start
        if self._client is not None:
            await self._client.close()
        if self._session is not None:
            await self._session.close()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.flush_interval_s)
            await self.flush()

    async def flush(self) -> bool:
        """Replay spilled files first (in order), then the queue. False when the server refused."""
        async with self._flushing:
            return await self._flush()

    async def _flush(self) -> bool:
        for path in self._spill_files():
            # One point per "\n"-separated line; splitlines() would also cut at a CR in a tag value.
            with open(path, encoding="utf-8", newline="") as f:
                lines = [line for line in f.read().split("\n") if line]
            for i in range(0, len(lines), BATCH):
                if not await self._send(lines[i:i + BATCH]):
                    # Keep what is left of this file for the next try.
                    _write_private(path, "\n".join(lines[i:]) + "\n")
                    return False
            path.unlink()
        while self.queue:
            # Off the queue while it is sent: a write() meanwhile may spill the oldest queued points,
            # which must not be this batch (sent twice, and as many unsent ones popped after it).
            batch = [self.queue.popleft() for _ in range(min(BATCH, len(self.queue)))]
            sent = False
            try:
                sent = await self._send(batch)
            finally:
                if not sent:  # refused, or cancelled by stop(): back to the front, for the next try
                    self.queue.extendleft(reversed(batch))
            if not sent:
                return False
        return True

    async def _send(self, lines: list[str]) -> bool:
        body = "\n".join(lines)
        try:
            if self.settings.api == "v2":
                await self._write_api.write(bucket=self.settings.bucket, org=self.settings.org or "-", record=body,
                                            write_precision=WritePrecision.MS)
            else:
                assert self._session is not None
                params = {"db": self.settings.database or self.settings.bucket, "precision": "ms"}
                if self.settings.username:
                    params.update(u=self.settings.username, p=self.settings.password)
                url = f"{self.settings.url.rstrip('/')}/write"
                async with self._session.post(url, params=params, data=body.encode("utf-8")) as response:
                    if response.status != 204:
                        raise RuntimeError(f"HTTP {response.status}: {(await response.text())[:200]}")
        except Exception as exc:  # any failure means: keep the points and try later
            self.counters["failed_writes"] += 1
            log.warning("InfluxDB write failed (%d points kept): %r", len(lines), exc)
            return False
        self.counters["written_points"] += len(lines)
        return True
