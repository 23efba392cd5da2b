"""Reads a site meter over Modbus TCP (pymodbus asyncio client) every ``poll_s``.

A refused connection, a timeout, an exception reply or registers that do not decode give no
reading: the controller's meter goes stale after ``stale_after_s`` and the fallback base load is
assumed. Nothing here raises into the service. After a failure the client reconnects with an
exponential backoff (``poll_s`` doubling up to ``BACKOFF_MAX_S``), and a SunSpec meter is scanned
again (the map may have moved after a firmware update).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import datetime

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from adapters.clock import utc_now
from adapters.meter.maps import (
    SDM630_COUNT,
    SUNS,
    SUNSPEC_BASES,
    SUNSPEC_METER_MODELS,
    MapError,
    decode_sdm630,
    decode_sunspec_meter,
)
from balancer.events import SiteMeterReading
from balancer.model import MeterSettings

__all__ = ["BACKOFF_MAX_S", "ModbusMeter"]

log = logging.getLogger("balancer.meter")
# pymodbus logs every frame and each failed connect; our own log says what failed, once per kind.
logging.getLogger("pymodbus").setLevel(logging.CRITICAL)

BACKOFF_MAX_S = 30.0
MAX_MODELS = 32
"""Models walked in a SunSpec scan before giving up (a map without end marker)."""

Currents = tuple[float | None, float | None, float | None]


class MeterReadError(Exception):
    """A read that gave no usable reading; ``kind`` is a label of ``balancer_meter_errors_total``."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class ModbusMeter:
    """Polls one site's meter and hands every reading to ``on_reading``; errors to ``on_error``."""

    def __init__(self, site_id: str, settings: MeterSettings, *,
                 on_reading: Callable[[SiteMeterReading], object],
                 on_error: Callable[[str, str], None] | None = None,
                 now: Callable[[], datetime] = utc_now, active: Callable[[], bool] = lambda: True) -> None:
        self.site_id = site_id
        self.active = active
        """Cluster mode: whether this instance controls the site; only its owner polls the meter."""
        self.settings = settings
        self.on_reading = on_reading
        self.on_error = on_error or (lambda kind, message: None)
        self.now = now
        self.client: AsyncModbusTcpClient | None = None
        self._sunspec: tuple[int, int, int] | None = None  # (body address, model id, length)
        self._task: asyncio.Task[None] | None = None
        self.backoff_s = settings.poll_s
        self.reads = 0
        self.failures = 0

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"meter-{self.site_id}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._close()

    def _close(self) -> None:
        if self.client is not None:
            with contextlib.suppress(Exception):
                self.client.close()
            self.client = None
        self._sunspec = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            if not self.active():
                self._close()  # the owner holds the meter's connection (some meters take one only)
                await asyncio.sleep(self.settings.poll_s)
                continue
            try:
                current = await self.read_once()
            except MeterReadError as exc:
                self.failures += 1
                self.on_error(exc.kind, str(exc))
                await self._back_off()
                continue
            except Exception as exc:  # a bug in a decoder must not end the poll loop
                self.failures += 1
                log.exception("site %s: meter read failed", self.site_id)
                self.on_error("exception", repr(exc))
                await self._back_off()
                continue
            self.backoff_s = self.settings.poll_s
            self.reads += 1
            self.on_reading(SiteMeterReading(self.site_id, self.now(), current))
            await asyncio.sleep(max(0.0, self.settings.poll_s - (loop.time() - started)))

    async def _back_off(self) -> None:
        """Drop the connection and wait: ``poll_s``, doubling after every failure up to ``BACKOFF_MAX_S``."""
        self._close()
        delay = self.backoff_s
        self.backoff_s = min(self.backoff_s * 2.0, max(BACKOFF_MAX_S, self.settings.poll_s))
        await asyncio.sleep(delay)

    async def read_once(self) -> Currents:
        """One reading [A] per phase; raises ``MeterReadError`` with a kind on any failure."""
        if self.client is None or not self.client.connected:
            self._close()
            # reconnect_delay 0: no reconnect of pymodbus's own; our loop backs off instead.
            self.client = AsyncModbusTcpClient(self.settings.host, port=self.settings.port,
                                               timeout=self.settings.timeout_s, retries=0, reconnect_delay=0)
            try:
                ok = await asyncio.wait_for(self.client.connect(), self.settings.timeout_s)
            except (TimeoutError, OSError) as exc:
                raise MeterReadError("connect", f"cannot connect to {self._where()}: {exc!r}") from exc
            if not ok:
                raise MeterReadError("connect", f"cannot connect to {self._where()}")
        if self.settings.map == "sdm630":
            registers = await self._read(4, 0, SDM630_COUNT)
            return decode_sdm630(registers) if len(registers) >= SDM630_COUNT else self._bad(registers)
        if self._sunspec is None:
            self._sunspec = await self._scan()
        address, model_id, length = self._sunspec
        try:
            return decode_sunspec_meter(model_id, await self._read(3, address, length))
        except MapError as exc:
            raise MeterReadError("map", f"{self._where()}: {exc}") from exc

    def _bad(self, registers: list[int]) -> Currents:
        raise MeterReadError("map", f"{self._where()}: {len(registers)} registers")

    async def _read(self, function: int, address: int, count: int) -> list[int]:
        assert self.client is not None
        unit = self.settings.unit_id
        try:
            if function == 4:
                reply = await self.client.read_input_registers(address, count=count, device_id=unit)
            else:
                reply = await self.client.read_holding_registers(address, count=count, device_id=unit)
        except TimeoutError as exc:
            raise MeterReadError("timeout", f"{self._where()}: no answer in {self.settings.timeout_s} s") from exc
        except ModbusException as exc:
            kind = "timeout" if "timeout" in str(exc).lower() or "no response" in str(exc).lower() else "connection"
            raise MeterReadError(kind, f"{self._where()}: {exc}") from exc
        except OSError as exc:
            raise MeterReadError("connection", f"{self._where()}: {exc!r}") from exc
        if reply.isError():
            raise MeterReadError("exception_reply", f"{self._where()}: exception reply to function {function} "
                                                    f"at {address}: {reply}")
        return list(reply.registers)

    async def _scan(self) -> tuple[int, int, int]:
        """Find the meter model of a SunSpec map: (body address, model id, body length)."""
        for base in SUNSPEC_BASES:
            try:
                marker = await self._read(3, base, 2)
            except MeterReadError as exc:
                if exc.kind != "exception_reply":
                    raise
                continue
            if tuple(marker) != SUNS:
                continue
            address = base + 2
            for _ in range(MAX_MODELS):
                model_id, length = await self._read(3, address, 2)
                if model_id == 0xFFFF:
                    break
                if model_id in SUNSPEC_METER_MODELS:
                    log.info("site %s: SunSpec meter model %d at %d", self.site_id, model_id, address)
                    return address + 2, model_id, min(length, 120)
                address += 2 + length
            raise MeterReadError("map", f"{self._where()}: SunSpec map at {base} has no meter model (201-204)")
        raise MeterReadError("map", f"{self._where()}: no SunSpec marker 'SunS' at {SUNSPEC_BASES}")

    def _where(self) -> str:
        s = self.settings
        return f"site {self.site_id} meter {s.host}:{s.port} unit {s.unit_id} ({s.map})"
