"""OSCP 2.0 capacity forecasts: the message, its blocks, and their validation.

``parse_update_forecast`` checks an UpdateGroupCapacityForecast body (PROTOCOLS.md A.6/A.7) and
reports every problem with the field's path (``forecasted_blocks[2].end_time``); nothing of a
rejected body is used. The same parser reads ``balancer plan --forecast FILE``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
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
    """RFC 3339 with an explicit offset, or None when it is not one."""
    if not isinstance(value, str) or "T" not in value.upper():
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("z", "Z").replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value \
        and value not in (float("inf"), float("-inf"))


def _block(raw: Any, path: str, problems: list[Problem]) -> ForecastedBlock | None:
    if not isinstance(raw, dict):
        problems.append(Problem(path, "must be an object"))
        return None
    before = len(problems)
    allowed = {"capacity", "phase", "unit", "start_time", "end_time"}
    for key in raw:
        if key not in allowed:
            problems.append(Problem(f"{path}.{key}", "unknown field"))
    for key in sorted(allowed):
        if key not in raw:
            problems.append(Problem(f"{path}.{key}", "is required"))
    capacity: Any = raw.get("capacity")
    if "capacity" in raw and not _number(capacity):
        problems.append(Problem(f"{path}.capacity", f"must be a number, got {capacity!r}"))
    elif _number(capacity) and capacity < 0:
        problems.append(Problem(f"{path}.capacity", f"must be >= 0, got {capacity!r}"))
    if "phase" in raw and raw["phase"] not in PHASES:
        problems.append(Problem(f"{path}.phase", f"must be one of {', '.join(PHASES)}, got {raw['phase']!r}"))
    if "unit" in raw and raw["unit"] not in UNITS:
        problems.append(Problem(f"{path}.unit", f"must be one of {', '.join(UNITS)}, got {raw['unit']!r}"))
    start = parse_datetime(raw.get("start_time"))
    end = parse_datetime(raw.get("end_time"))
    if "start_time" in raw and start is None:
        problems.append(Problem(f"{path}.start_time", "must be an RFC 3339 date-time with an offset"))
    if "end_time" in raw and end is None:
        problems.append(Problem(f"{path}.end_time", "must be an RFC 3339 date-time with an offset"))
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
            problems.append(Problem(str(key), "unknown field"))
    for key in ("group_id", "type", "forecasted_blocks"):
        if key not in body:
            problems.append(Problem(key, "is required"))
    group = body.get("group_id")
    if "group_id" in body and (not isinstance(group, str) or not group):
        problems.append(Problem("group_id", f"must be a non-empty string, got {group!r}"))
    kind = body.get("type")
    if "type" in body and kind not in FORECAST_TYPES:
        problems.append(Problem("type", f"must be one of {', '.join(FORECAST_TYPES)}, got {kind!r}"))
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
