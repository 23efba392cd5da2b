"""The one function that rounds a limit down to a charger's step. Pure.

Every limit the balancer hands out (allocator, schedules ahead, another party's cap) is floored
here, so a charger never gets more than was decided because of rounding or float noise.
"""

from __future__ import annotations

import math
from typing import overload

import numpy as np
import numpy.typing as npt

__all__ = ["floor_to"]

FloatArray = npt.NDArray[np.float64]


@overload
def floor_to(value: float, step: float, min_a: float | None = None) -> float: ...


@overload
def floor_to(value: FloatArray, step: float | FloatArray, min_a: float | FloatArray | None = None) -> FloatArray: ...


def floor_to(value: float | FloatArray, step: float | FloatArray,
             min_a: float | FloatArray | None = None) -> float | FloatArray:
    """``value`` rounded down to a multiple of ``step``, robust to float noise (4.0000001 -> 4.0);
    with ``min_a``, 0 where the result is below the charger's minimum."""
    if isinstance(value, np.ndarray):
        out = np.floor(value / step + 1e-9) * step
        return out if min_a is None else np.where(out >= min_a, out, 0.0)
    assert not isinstance(step, np.ndarray) and not isinstance(min_a, np.ndarray)
    rounded = math.floor(value / step + 1e-9) * step
    return rounded if min_a is None or rounded >= min_a else 0.0
