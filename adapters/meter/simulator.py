"""A site meter simulator speaking Modbus TCP (pymodbus's own server), SunSpec 203/201 or SDM630.

Used by the tests, ``balancer demo`` and ``balancer simulate --meter-port``. The net current it
reports is ``non_ev_a`` (set directly, or by ``profile``, a function of the time of day) plus
whatever the simulated chargers draw (``chargers_a``, a callable returning the per-phase sum).
Faults for tests: ``mode`` "exception" answers every read with a Modbus exception (device
failure), "silent" never answers (the client times out), "frozen" keeps the registers as they are.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Sequence
from datetime import datetime

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from adapters.clock import utc_now
from adapters.meter.maps import SDM630_COUNT, encode_sdm630, encode_sunspec

__all__ = ["MeterSimulator", "noon_peak_profile"]

log = logging.getLogger("balancer.meter.simulator")
# pymodbus logs every frame and each failed connect; our own log says what failed, once per kind.
logging.getLogger("pymodbus").setLevel(logging.CRITICAL)

SUNSPEC_BASE = 40000
SUNSPEC_REGISTERS = 2 + 2 + 66 + 2 + 105 + 2


def noon_peak_profile(base_a: float = 8.0, peak_a: float = 40.0, width_h: float = 2.0) -> Callable[[datetime], float]:
    """A building's load by time of day [A per phase]: a base, with a peak around 12:00 UTC."""

    def load(at: datetime) -> float:
        hours = at.hour + at.minute / 60.0 + at.second / 3600.0
        distance = min(abs(hours - 12.0), 24.0 - abs(hours - 12.0))
        return base_a + max(0.0, peak_a - base_a) * max(0.0, 1.0 - distance / width_h)

    return load


class MeterSimulator:
    """A Modbus TCP meter on ``host:port`` (port 0: a free one, read ``port`` after ``start``)."""

    def __init__(self, meter_map: str = "sunspec", *, host: str = "127.0.0.1", port: int = 0,
                 unit_id: int = 1, model_id: int = 203, voltage_v: float = 230.0,
                 profile: Callable[[datetime], float] | None = None,
                 chargers_a: Callable[[], Sequence[float]] | None = None,
                 now: Callable[[], datetime] = utc_now, noise_a: float = 0.0, seed: int = 0) -> None:
        if meter_map not in ("sunspec", "sdm630"):
            raise ValueError(f"unknown meter map {meter_map!r} (sunspec, sdm630)")
        self.map = meter_map
        self.host, self.port, self.unit_id = host, port, unit_id
        self.model_id, self.voltage_v = model_id, voltage_v
        self.non_ev_a: list[float | None] = [0.0, 0.0, 0.0]
        self.profile = profile
        self.chargers_a = chargers_a
        self.now = now
        self.noise_a = noise_a
        """Uniform noise on every phase [A], as a live meter's last digits move (0: exact values)."""
        self._rng = random.Random(seed)
        self.mode = "ok"
        self.reads = 0
        self._server: ModbusTcpServer | None = None

    # ----------------------------------------------------------------- what it measures
    def net_a(self) -> list[float | None]:
        """The net current per phase it reports now [A], import positive."""
        base = list(self.non_ev_a)
        if self.profile is not None:
            value = self.profile(self.now())
            base = [value, value, value]
        drawn = list(self.chargers_a()) if self.chargers_a is not None else [0.0, 0.0, 0.0]
        noise = [self._rng.uniform(-self.noise_a, self.noise_a) if self.noise_a else 0.0 for _ in range(3)]
        return [None if b is None else b + d + n for b, d, n in zip(base, drawn, noise, strict=True)]

    def registers(self) -> list[int]:
        if self.map == "sdm630":
            return encode_sdm630(self.net_a(), self.voltage_v)
        return encode_sunspec(self.net_a(), self.voltage_v, model_id=self.model_id)

    # ----------------------------------------------------------------- server
    async def _action(self, function_code: int, start_address: int, address: int, count: int,
                      registers: list[int], set_values: list[int] | list[bool] | None) -> ExcCodes | None:
        self.reads += 1
        if self.mode == "exception":
            return ExcCodes.DEVICE_FAILURE
        if self.mode == "silent":
            await asyncio.sleep(3600)
        if self.mode != "frozen":
            values = self.registers()
            registers[: len(values)] = values
        return None

    async def start(self) -> None:
        if self.map == "sdm630":
            data = [SimData(0, values=[0] * SDM630_COUNT, datatype=DataType.REGISTERS)]
        else:
            data = [SimData(SUNSPEC_BASE, values=[0] * SUNSPEC_REGISTERS, datatype=DataType.REGISTERS)]
        device = SimDevice(self.unit_id, simdata=data, action=self._action)
        self._server = ModbusTcpServer(device, address=(self.host, self.port))
        await self._server.serve_forever(background=True)
        sockets = getattr(self._server.transport, "sockets", None) or []
        if sockets:
            self.port = sockets[0].getsockname()[1]
        log.info("meter simulator (%s) on %s:%s", self.map, self.host, self.port)

    async def stop(self) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            await server.shutdown()  # type: ignore[no-untyped-call]  # closes the listener and every open connection
