"""OSCP 2.0 capacity forecasts: the message, its blocks, and their validation.

``parse_update_forecast`` checks an UpdateGroupCapacityForecast body (PROTOCOLS.md A.6/A.7) and
reports every problem with the field's path (``forecasted_blocks[2].end_time``); nothing of a
rejected body is used. The same parser reads ``balancer plan --forecast FILE``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from balancer.errors import InvalidInput, Problem

__all__ = [
    "FORECAST_TYPES",
    "PHASES",
    "UNITS",
    "CapacityForecast",
    "ForecastedBlock",
    "block_from_json",
    "block_to_json",
    "parse_datetime",
    "parse_update_forecast",
]

FORECAST_TYPES = ("CONSUMPTION", "GENERATION", "FALLBACK_CONSUMPTION", "FALLBACK_GENERATION", "OPTIMUM")
PHASES = ("UNKNOWN", "ONE", "TWO", "THREE", "ALL")
UNITS = ("A", "W", "KW", "WH", "KWH")
MAX_BLOCKS = 10_000
# Bounds on every number and time a peer sends, so that no later sum, product or date arithmetic
# overflows: a capacity in any unit up to 1e12, times from 1970 to 2200 (UTC).
MAX_CAPACITY = 1e12
MAX_ID_LENGTH = 256
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(2200, 1, 1, tzinfo=UTC)
DATETIME_RULE = "must be an RFC 3339 date-time with an offset, between 1970 and 2200"


@dataclass(frozen=True, slots=True)
class ForecastedBlock:
    """One block: ``capacity`` in ``unit`` on ``phase`` from ``start`` (inclusive) to ``end``."""

    capacity: float
    phase: str
    unit: str
    start: datetime
    end: datetime


@dataclass(frozen=True, slots=True)
class CapacityForecast:
    """An UpdateGroupCapacityForecast: one forecast type for one group."""

    group_id: str
    type: str
    blocks: tuple[ForecastedBlock, ...]


def parse_datetime(value: Any) -> datetime | None:
    """RFC 3339 with an explicit offset between ``EARLIEST`` and ``LATEST``, or None when it is not one."""
    if not isinstance(value, str) or "T" not in value.upper() or len(value) > 64:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("z", "Z").replace("Z", "+00:00"))
        if parsed.tzinfo is None or not EARLIEST <= parsed < LATEST:
            return None
    except (ValueError, OverflowError):  # a year-9999 time with a negative offset is past datetime.max in UTC
        return None
    return parsed


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _clip(text: str) -> str:
    return text if len(text) <= 60 else text[:57] + "..."


def _show(value: Any) -> str:
    """A value for an error message: its repr, cut short (a peer may send megabytes in one field)."""
    return _clip(repr(value) if isinstance(value, (str, int, float, bool, type(None))) else type(value).__name__)


def _block(raw: Any, path: str, problems: list[Problem]) -> ForecastedBlock | None:
    if not isinstance(raw, dict):
        problems.append(Problem(path, "must be an object"))
        return None
    before = len(problems)
    allowed = {"capacity", "phase", "unit", "start_time", "end_time"}
    for key in raw:
        if key not in allowed:
            problems.append(Problem(f"{path}.{_clip(key)}", "unknown field"))
    for key in sorted(allowed):
        if key not in raw:
            problems.append(Problem(f"{path}.{key}", "is required"))
    capacity: Any = raw.get("capacity")
    if "capacity" in raw and not _number(capacity):
        problems.append(Problem(f"{path}.capacity", f"must be a finite number, got {_show(capacity)}"))
    elif _number(capacity) and not 0 <= capacity <= MAX_CAPACITY:
        problems.append(Problem(f"{path}.capacity", f"must be between 0 and {MAX_CAPACITY:g}, got {_show(capacity)}"))
    if "phase" in raw and raw["phase"] not in PHASES:
        problems.append(Problem(f"{path}.phase", f"must be one of {', '.join(PHASES)}, got {_show(raw['phase'])}"))
    if "unit" in raw and raw["unit"] not in UNITS:
        problems.append(Problem(f"{path}.unit", f"must be one of {', '.join(UNITS)}, got {_show(raw['unit'])}"))
    start = parse_datetime(raw.get("start_time"))
    end = parse_datetime(raw.get("end_time"))
    if "start_time" in raw and start is None:
        problems.append(Problem(f"{path}.start_time", DATETIME_RULE))
    if "end_time" in raw and end is None:
        problems.append(Problem(f"{path}.end_time", DATETIME_RULE))
    if start is not None and end is not None and end <= start:
        problems.append(Problem(f"{path}.end_time", "must be after start_time"))
    if len(problems) > before or start is None or end is None:
        return None
    return ForecastedBlock(capacity=float(capacity), phase=raw["phase"], unit=raw["unit"], start=start, end=end)


def parse_update_forecast(body: Any) -> CapacityForecast:
    """Validate an UpdateGroupCapacityForecast body; raises ``InvalidInput`` naming every field."""
    problems: list[Problem] = []
    if not isinstance(body, dict):
        raise InvalidInput([Problem("", "body must be a JSON object")], what="forecast")
    allowed = {"group_id", "type", "forecasted_blocks"}
    for key in body:
        if key not in allowed:
            problems.append(Problem(_clip(key), "unknown field"))
    for key in ("group_id", "type", "forecasted_blocks"):
        if key not in body:
            problems.append(Problem(key, "is required"))
    group = body.get("group_id")
    if "group_id" in body and (not isinstance(group, str) or not 0 < len(group) <= MAX_ID_LENGTH):
        problems.append(Problem("group_id", f"must be a string of 1 to {MAX_ID_LENGTH} characters, got {_show(group)}"))
    kind = body.get("type")
    if "type" in body and kind not in FORECAST_TYPES:
        problems.append(Problem("type", f"must be one of {', '.join(FORECAST_TYPES)}, got {_show(kind)}"))
    raw_blocks = body.get("forecasted_blocks")
    blocks: list[ForecastedBlock] = []
    if "forecasted_blocks" in body:
        if not isinstance(raw_blocks, list) or not raw_blocks:
            problems.append(Problem("forecasted_blocks", "must be a non-empty list"))
        elif len(raw_blocks) > MAX_BLOCKS:
            problems.append(Problem("forecasted_blocks", f"at most {MAX_BLOCKS} blocks"))
        else:
            for i, raw in enumerate(raw_blocks):
                block = _block(raw, f"forecasted_blocks[{i}]", problems)
                if block is not None:
                    blocks.append(block)
    if problems:
        raise InvalidInput(problems, what="forecast")
    assert isinstance(group, str) and isinstance(kind, str)
    return CapacityForecast(group_id=group, type=kind, blocks=tuple(blocks))


def block_to_json(block: ForecastedBlock) -> dict[str, Any]:
    """The OSCP JSON form of a block (for persistence and for messages to the grid operator)."""
    return {"capacity": block.capacity, "phase": block.phase, "unit": block.unit,
            "start_time": block.start.isoformat().replace("+00:00", "Z"),
            "end_time": block.end.isoformat().replace("+00:00", "Z")}


def block_from_json(raw: dict[str, Any]) -> ForecastedBlock:
    """Inverse of ``block_to_json`` for data we wrote ourselves (already validated)."""
    start = parse_datetime(raw["start_time"])
    end = parse_datetime(raw["end_time"])
    assert start is not None and end is not None
    return ForecastedBlock(float(raw["capacity"]), raw["phase"], raw["unit"], start, end)
