"""Events and schedules as JSON for NATS, and site ids as NATS subject tokens.

Every message between instances is one JSON object. Events and ``ChargerSchedule`` travel as
``{"type": <class name>, "fields": {...}}``; datetimes as ``{"$dt": ISO 8601}``, tuples as lists.
Only the classes of ``balancer.events`` are decoded: anything else is a ``ValueError``.
"""

from __future__ import annotations

import dataclasses
import json
import re
from datetime import datetime
from typing import Any

from balancer import events

__all__ = ["decode", "dumps", "encode", "loads", "token"]

_CLASSES: dict[str, type[Any]] = {
    cls.__name__: cls for cls in (
        events.ChargerOnline, events.ChargerOffline, events.ChargerStatus, events.SessionStarted,
        events.SessionStopped, events.NeedsUpdated, events.MeterSample, events.ProfileResult,
        events.LimitConfirmed, events.ObedienceChanged, events.ExternalCapSet, events.ReadingDue,
        events.ChargerSchedule)
}
_PLAIN = re.compile(r"[A-Za-z0-9_-]+")


def token(ident: str) -> str:
    """``ident`` as one NATS subject token: itself when plain, else ``~`` and its UTF-8 in hex."""
    return ident if _PLAIN.fullmatch(ident) else "~" + ident.encode().hex()


def _out(value: Any) -> Any:
    if isinstance(value, datetime):
        return {"$dt": value.isoformat()}
    if isinstance(value, (tuple, list)):
        return [_out(v) for v in value]
    return value


def _in(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"$dt"}:
            return datetime.fromisoformat(value["$dt"])
        raise ValueError(f"unexpected object {value!r}")
    if isinstance(value, list):
        return tuple(_in(v) for v in value)
    return value


def encode(obj: Any) -> dict[str, Any]:
    """An event or a ``ChargerSchedule`` as a JSON-ready dict."""
    name = type(obj).__name__
    if name not in _CLASSES:
        raise ValueError(f"{name} does not travel between instances")
    return {"type": name, "fields": {f.name: _out(getattr(obj, f.name)) for f in dataclasses.fields(obj)}}


def decode(data: Any) -> Any:
    """The object ``encode`` made; ``ValueError`` for anything else."""
    if not isinstance(data, dict) or data.get("type") not in _CLASSES or not isinstance(data.get("fields"), dict):
        raise ValueError("not an encoded event or schedule")
    try:
        return _CLASSES[data["type"]](**{k: _in(v) for k, v in data["fields"].items()})
    except TypeError as exc:
        raise ValueError(str(exc)) from None


def dumps(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode()


def loads(data: bytes) -> dict[str, Any]:
    message = json.loads(data)
    if not isinstance(message, dict):
        raise ValueError("a message is a JSON object")
    return message
