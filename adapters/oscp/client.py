"""Our side of OSCP towards the Capacity Provider (the grid operator), when one is configured.

Every outgoing message goes through the persisted outbox first, then a delivery loop posts it
with retries and exponential backoff, so nothing is lost while the Capacity Provider is down or
the service restarts. Heartbeats carry ``offline_mode_at`` (now + 2 x interval);
UpdateGroupMeasurements report each site's imported energy; GroupCapacityComplianceError and
AdjustGroupCapacityForecast are sent when the service asks.

In cluster mode only a site's owner speaks for it (``controls(site_id)``): measurements, compliance
errors and forecast adjustments of the sites it controls; heartbeats and the registration by the
owner of the first site (``controls(None)``). The outbox is then the cluster's
(``adapters.cluster.shared_outbox``): each message names its site and that site's owner delivers it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

import aiohttp

from adapters.clock import utc_now
from adapters.oscp.provider import heartbeat_interval_s
from adapters.store_port import Store
from balancer.model import Config

__all__ = ["OscpClient", "iso"]

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 300.0
POST_TIMEOUT_S = 10.0
"""The longest one POST may take (``adapters.cluster.shared_outbox`` relies on it)."""


def iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


class OscpClient:
    """Sends our messages to the Capacity Provider through the outbox."""

    def __init__(self, config: Config, store: Store, *, now: Callable[[], datetime] = utc_now,
                 site_energy_wh: Callable[[str], float] | None = None, base_backoff_s: float = 1.0,
                 site_import_wh: Callable[[str], float | None] | None = None,
                 controls: Callable[[str | None], bool] = lambda site_id: True) -> None:
        assert config.oscp.capacity_provider is not None
        self.config = config
        self.store = store
        self.now = now
        self.site_energy_wh = site_energy_wh or (lambda site_id: 0.0)
        self.site_import_wh = site_import_wh or (lambda site_id: None)
        """The net import at the connection from a site meter [Wh], None without one."""
        self.base_backoff_s = base_backoff_s
        self.controls = controls
        """Whether this instance speaks for a site (None: for the whole deployment); always in one process."""
        self.cp = config.oscp.capacity_provider
        self._session: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._kick = asyncio.Event()
        self._heartbeat_at = -math.inf  # monotonic time of the last heartbeat queued
        self.sent: dict[str, int] = {}
        self.failures = 0
        self._stopping = False

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=POST_TIMEOUT_S))
        self._tasks = [asyncio.create_task(self._deliver_loop()), asyncio.create_task(self._heartbeat_loop()),
                       asyncio.create_task(self._measurement_loop())]
        self._maybe_register()

    def _maybe_register(self) -> None:
        if self.config.oscp.public_base_url and self.controls(None) and not self.store.get_json("oscp:registered"):
            self.register()

    async def stop(self) -> None:
        """Stop; a POST under way is let finish (``POST_TIMEOUT_S`` at most) and marked, so a
        message the grid operator took is not sent again by the next speaker for its site."""
        self._stopping = True
        self._kick.set()
        if self._tasks:  # the delivery loop
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._tasks[0]), POST_TIMEOUT_S + 1)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._session is not None:
            await self._session.close()

    # ----------------------------------------------------------------- messages
    def _send(self, path: str, body: dict[str, Any], correlation_id: str | None = None,
              site_id: str | None = None) -> None:
        """Queue a message; its ``X-Request-ID`` stays with it through every retry and every owner."""
        headers = {"X-Request-ID": str(uuid.uuid4())}
        if correlation_id:
            headers["X-Correlation-ID"] = correlation_id
        self.store.enqueue(path, body, headers, site_id)
        self._kick.set()

    def kick(self) -> None:
        """Deliver now (this instance just took over sites whose messages may wait)."""
        self._kick.set()

    def register(self) -> None:
        """Offer our token and base URL to the Capacity Provider."""
        token = self.store.get_json("oscp:our_token") or secrets.token_urlsafe(24)
        self.store.put_json("oscp:our_token", token)
        self._send("register", {"token": token, "version_url": [
            {"version": "2.0", "base_url": self.config.oscp.public_base_url}]})
        self.store.put_json("oscp:registered", True)

    def handshake_acknowledge(self, request_id: str | None) -> None:
        body: dict[str, Any] = {"required_behaviour": {"heartbeat_interval": self.config.oscp.heartbeat_interval_s,
                                                       "measurement_configuration": ["CONTINUOUS"]}}
        self._send("handshake_acknowledge", body, correlation_id=request_id)

    def heartbeat(self) -> None:
        interval = self._heartbeat_interval()
        self._send("heartbeat", {"offline_mode_at": iso(self.now() + timedelta(seconds=2 * interval))})

    def measurements(self) -> None:
        now = iso(self.now())
        for site in self.config.sites:
            if not self.controls(site.id):
                continue
            measurements = [{"value": round(self.site_energy_wh(site.id), 1), "phase": "ALL", "unit": "WH",
                             "direction": "IMPORT", "energy_type": "FLEXIBLE", "measure_time": now}]
            total = self.site_import_wh(site.id)
            if total is not None:  # a site meter: the whole connection's net import
                measurements.append({"value": round(total, 1), "phase": "ALL", "unit": "WH", "direction": "IMPORT",
                                     "energy_type": "TOTAL", "measure_time": now})
            self._send("update_group_measurements", {"group_id": site.group_id, "measurements": measurements},
                       site_id=site.id)

    def compliance_error(self, site_id: str, message: str, start: datetime, end: datetime,
                         capacity_a: Sequence[float], correlation_id: str | None = None) -> None:
        self._send("group_capacity_compliance_error", {"message": message, "forecasted_blocks": [
            {"capacity": round(min(capacity_a), 1), "phase": "ALL", "unit": "A", "start_time": iso(start),
             "end_time": iso(end)}]}, correlation_id=correlation_id, site_id=site_id)

    def adjust_forecast(self, site_id: str, blocks: list[dict[str, Any]]) -> None:
        if not self.config.oscp.adjust_forecast:
            return
        group = self.config.site(site_id).group_id
        self._send("adjust_group_capacity_forecast", {"group_id": group, "type": "CONSUMPTION",
                                                      "forecasted_blocks": blocks}, site_id=site_id)

    def _heartbeat_interval(self) -> float:
        behaviour = self.store.get_json("oscp:required_behaviour")
        interval = heartbeat_interval_s(behaviour)
        if interval is None:
            if isinstance(behaviour, dict) and "heartbeat_interval" in behaviour:
                log.warning("stored heartbeat_interval %r is out of range; sending every %s s",
                            behaviour["heartbeat_interval"], self.config.oscp.heartbeat_interval_s)
            return float(self.config.oscp.heartbeat_interval_s)
        return interval

    # ----------------------------------------------------------------- loops
    async def _heartbeat_loop(self) -> None:
        """A heartbeat every interval from whoever speaks for the deployment (checked each second,
        so a new speaker in a cluster sends its first one at once)."""
        while True:
            interval = self._heartbeat_interval()
            if self.controls(None):
                self._maybe_register()
                if time.monotonic() - self._heartbeat_at >= interval:
                    self._heartbeat_at = time.monotonic()
                    self.heartbeat()
            else:
                self._heartbeat_at = -math.inf
            await asyncio.sleep(min(interval, 1.0))

    async def _measurement_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.oscp.measurement_interval_s)
            self.measurements()

    async def _deliver_loop(self) -> None:
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), timeout=1.0)
            self._kick.clear()
            for item in self.store.due(time.time()):
                if self._stopping:
                    return
                if time.monotonic() > item.post_by:  # claimed too long ago (a cluster's claim): claim again
                    self._kick.set()
                    break
                ok = await self._post(item.path, item.body, item.headers)
                if ok:
                    self.store.delivered(item.id)
                    self.sent[item.path] = self.sent.get(item.path, 0) + 1
                else:
                    self.failures += 1
                    delay = min(MAX_BACKOFF_S, self.base_backoff_s * 2 ** min(item.attempts, 12))
                    self.store.retry_later(item.id, time.time() + delay)
                    break  # keep the order: later messages wait for this one

    async def _post(self, path: str, body: dict[str, Any], headers: dict[str, str]) -> bool:
        assert self._session is not None
        url = f"{self.cp.base_url.rstrip('/')}/{path}"
        try:
            async with self._session.post(url, json=body, headers={
                    **headers, "Authorization": f"Token {self.cp.token}"}) as response:
                if response.status == 204 or 200 <= response.status < 300:
                    return True
                log.warning("OSCP %s answered %s: %s", path, response.status, (await response.text())[:300])
                return False
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.warning("OSCP %s not delivered: %r", path, exc)
            return False
