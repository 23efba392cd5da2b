"""Register maps of the site meters we read over Modbus TCP: SunSpec 201/203 and Eastron SDM630.

Decoding (for the client) and encoding (for the simulator) sit side by side so the two cannot
drift. Every decoder returns the net current per phase [A], import positive and export negative,
None for a phase the meter does not measure. Where a meter's current registers are unsigned (both
maps here), the sign is that of the phase's active power.

SunSpec: the ``SunS`` marker at 40000 (holding registers, function 3), then models as
(id, length, body...) until id 0xFFFF. Meter models 201 (single phase), 202 (split phase), 203
(wye) and 204 (delta) share one layout in their integer + scale-factor variant; offsets below are
from the start of the body (after id and length). Not-implemented points read 0x8000 (int16).

SDM630: input registers (function 4), IEEE 754 float32, high word first; phase currents at 0x0006,
0x0008, 0x000A, phase active power at 0x000C, 0x000E, 0x0010.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence

__all__ = [
    "SDM630_COUNT",
    "SUNS",
    "SUNSPEC_BASES",
    "SUNSPEC_METER_MODELS",
    "decode_sdm630",
    "decode_sunspec_meter",
    "encode_sdm630",
    "encode_sunspec",
]

Currents = tuple[float | None, float | None, float | None]

SUNS = (0x5375, 0x6E53)
"""The two registers spelling "SunS"."""
SUNSPEC_BASES = (40000, 50000, 0)
"""Where a SunSpec map may start; 40000 is the standard, the others are seen in the field."""
SUNSPEC_METER_MODELS = (201, 202, 203, 204)
NOT_IMPLEMENTED = 0x8000
METER_LENGTH = 105
COMMON_LENGTH = 66

# Offsets in the meter model body (integer + scale-factor variant).
A_PHASE = (1, 2, 3)
A_SF = 4
W_PHASE = (17, 18, 19)
W_SF = 20

SDM630_COUNT = 18
"""Registers read from 0: currents at 6, 8, 10 and active power at 12, 14, 16 (two each)."""


class MapError(ValueError):
    """The registers do not hold what the map says (a wrong map or unit id, or a broken meter)."""


def _int16(register: int) -> int:
    return register - 0x10000 if register >= 0x8000 else register


def _signed(current: float, power: float | None) -> float:
    return -abs(current) if power is not None and power < 0 else abs(current)


def decode_sunspec_meter(model_id: int, body: Sequence[int]) -> Currents:
    """Phase currents of a SunSpec meter model body [A] (import positive)."""
    if model_id not in SUNSPEC_METER_MODELS:
        raise MapError(f"SunSpec model {model_id} is not a meter model (201-204)")
    if len(body) <= W_SF:
        raise MapError(f"SunSpec model {model_id}: body of {len(body)} registers, expected {METER_LENGTH}")
    if body[A_SF] == NOT_IMPLEMENTED:
        raise MapError("SunSpec A_SF not implemented")
    a_scale = 10.0 ** _int16(body[A_SF])
    w_scale = None if body[W_SF] == NOT_IMPLEMENTED else 10.0 ** _int16(body[W_SF])
    out: list[float | None] = []
    for a_off, w_off in zip(A_PHASE, W_PHASE, strict=True):
        if body[a_off] == NOT_IMPLEMENTED:
            out.append(None)
            continue
        power = None if w_scale is None or body[w_off] == NOT_IMPLEMENTED else _int16(body[w_off]) * w_scale
        out.append(_signed(_int16(body[a_off]) * a_scale, power))
    return out[0], out[1], out[2]


def _float32(high: int, low: int) -> float:
    value: float = struct.unpack(">f", struct.pack(">HH", high, low))[0]
    return value


def decode_sdm630(registers: Sequence[int]) -> Currents:
    """Phase currents from SDM630 input registers 0..17 [A] (import positive; NaN passes through)."""
    if len(registers) < SDM630_COUNT:
        raise MapError(f"SDM630: {len(registers)} registers, expected {SDM630_COUNT}")
    currents = [_float32(registers[k], registers[k + 1]) for k in (6, 8, 10)]
    powers = [_float32(registers[k], registers[k + 1]) for k in (12, 14, 16)]
    out = tuple(c if math.isnan(c) else _signed(c, p) for c, p in zip(currents, powers, strict=True))
    return out[0], out[1], out[2]


def _reg16(value: int) -> int:
    return value & 0xFFFF


def encode_sunspec(current_a: Sequence[float | None], voltage_v: float = 230.0, model_id: int = 203,
                   a_sf: int = -2, w_sf: int = 0) -> list[int]:
    """A whole SunSpec map from its base: SunS, common model 1, one meter model, end marker.

    The scale factors grow (as a meter with a larger current transformer has them) until every
    value fits an int16."""
    largest = max((abs(c) for c in current_a if c is not None), default=0.0)
    while largest / 10.0 ** a_sf > 32767 or largest * voltage_v / 10.0 ** w_sf > 32767:
        if largest / 10.0 ** a_sf > 32767:
            a_sf += 1
        if largest * voltage_v / 10.0 ** w_sf > 32767:
            w_sf += 1
    name = b"EVBalancer".ljust(32, b"\0")  # Mn, the manufacturer: 16 registers of 2 characters
    common = [name[2 * k] << 8 | name[2 * k + 1] for k in range(16)] + [0] * (COMMON_LENGTH - 16)
    body = [NOT_IMPLEMENTED] * METER_LENGTH
    body[A_SF], body[W_SF] = _reg16(a_sf), _reg16(w_sf)
    total = 0.0
    for k, current in enumerate(current_a):
        if current is None or (model_id == 201 and k > 0):
            continue
        body[A_PHASE[k]] = _reg16(round(abs(current) / 10.0 ** a_sf))
        body[W_PHASE[k]] = _reg16(round(current * voltage_v / 10.0 ** w_sf))
        total += abs(current)
    body[0] = _reg16(round(total / 10.0 ** a_sf))
    return [*SUNS, 1, COMMON_LENGTH, *common, model_id, METER_LENGTH, *body, 0xFFFF, 0]


def encode_sdm630(current_a: Sequence[float | None], voltage_v: float = 230.0) -> list[int]:
    """SDM630 input registers 0..17: voltages, currents (unsigned) and signed active power."""
    floats = [voltage_v] * 3
    floats += [abs(c) if c is not None else math.nan for c in current_a]
    floats += [c * voltage_v if c is not None else math.nan for c in current_a]
    out: list[int] = []
    for value in floats:
        out.extend(struct.unpack(">HH", struct.pack(">f", value)))
    return out
