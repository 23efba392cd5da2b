"""Checks on raw OCPP-J frames that the ``ocpp`` package leaves out, and the error-code dialects.

- ``frame_id``: the message id read from a frame's first bytes, for frames too large or too deep
  to parse, so the CALLERROR carries the caller's own id (a "-1" makes the caller wait for its
  timeout instead of failing at once).
- ``too_deep``: nesting beyond any OCPP message (``json.loads`` itself fails at about 1,000 levels).
- ``bad_date_times``: every field the message's schema declares ``"format": "date-time"`` must be
  an RFC 3339 date-time; the package's schema check does not check formats, so
  ``"timestamp": "yesterday"`` would pass.
- ``translate_error``: a CALLERROR's code in the connection's dialect (``dialects``): the package
  answers with 2.0.1 spellings and with NotImplemented where the spec says NotSupported (a known
  action the receiver does not do).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any

import ocpp.messages

if TYPE_CHECKING:
    from adapters.ocpp.dialects import Dialect

__all__ = ["MAX_DEPTH", "bad_date_times", "frame_id", "too_deep", "translate_error"]

MAX_DEPTH = 32
"""Deepest nesting accepted [levels]; the deepest OCPP 2.0.1 message has about 8."""

_ID_SCAN_CHARS = 200
_FRAME_START = re.compile(r'\s*\[\s*[0-9]+\s*,\s*("(?:[^"\\]|\\.){0,100}")')
_DATE_TIME = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.\d+)?(?:[Zz]|[+-](\d{2}):(\d{2}))?")



def frame_id(data: str) -> str:
    """The message id of a frame ``[type, "id", ...]`` read from its first 200 characters, or "-1"."""
    match = _FRAME_START.match(data[:_ID_SCAN_CHARS])
    if match is None:
        return "-1"
    try:
        unique_id = json.loads(match.group(1))
    except ValueError:
        return "-1"
    return unique_id if isinstance(unique_id, str) else "-1"


def too_deep(data: str, value: Any) -> bool:
    """True when the parsed frame ``value`` nests more than ``MAX_DEPTH`` arrays/objects."""
    if data.count("[") + data.count("{") <= MAX_DEPTH:
        return False
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            return True
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values() if isinstance(v, dict | list))
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item if isinstance(v, dict | list))
    return False


def translate_error(dialect: Dialect, message: str) -> str:
    """``message`` with a CALLERROR's code written in ``dialect``. The package answers
    NotImplemented only for an action it knows without a handler here (or without a schema):
    "recognized but not supported", which OCPP-J calls NotSupported. Unknown actions never reach
    the package: the frame guard answers them NotImplemented itself."""
    if not message.startswith("[4"):
        return message
    try:
        frame = json.loads(message)
    except ValueError:
        return message
    if not isinstance(frame, list) or len(frame) < 3 or not isinstance(frame[2], str):
        return message
    code = dialect.translate_error(frame[2])
    if code is None:
        return message
    frame[2] = code
    return json.dumps(frame, separators=(",", ":"))


def _is_date_time(raw: str) -> bool:
    match = _DATE_TIME.fullmatch(raw)
    if match is None:
        return False
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    try:
        datetime(year, month, day, hour, minute, min(second, 59))  # 60: a leap second
    except ValueError:
        return False
    off_h, off_m = match.group(7), match.group(8)
    return second <= 60 and (off_h is None or (int(off_h) <= 23 and int(off_m) <= 59))


def _date_time_paths(schema: dict[str, Any], node: Any, path: tuple[str, ...], seen: frozenset[str]) -> Iterator[
        tuple[str, ...]]:
    if not isinstance(node, dict):
        return
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/definitions/"):
        name = ref.rsplit("/", 1)[1]
        if name not in seen:
            yield from _date_time_paths(schema, schema.get("definitions", {}).get(name), path, seen | {name})
        return
    if node.get("format") == "date-time":
        yield path
    for key, sub in (node.get("properties") or {}).items():
        yield from _date_time_paths(schema, sub, (*path, key), seen)
    if isinstance(node.get("items"), dict):
        yield from _date_time_paths(schema, node["items"], (*path, "*"), seen)


@functools.cache
def _paths(version: str, action: str) -> tuple[tuple[str, ...], ...]:
    """Where the CALL ``action``'s payload holds date-times (``*``: every item of an array);
    ``version`` the ``ocpp`` package's name of it."""
    try:
        schema = ocpp.messages.get_validator(2, action, version).schema
    except (OSError, ValueError):
        return ()
    return tuple(_date_time_paths(schema, schema, (), frozenset()))


def _values(node: Any, path: tuple[str, ...], where: str) -> Iterator[tuple[str, Any]]:
    if not path:
        yield where, node
        return
    head, rest = path[0], path[1:]
    if head == "*":
        if isinstance(node, list):
            for k, item in enumerate(node):
                yield from _values(item, rest, f"{where}[{k}]")
    elif isinstance(node, dict) and head in node:
        yield from _values(node[head], rest, f"{where}.{head}" if where else head)


def bad_date_times(dialect: Dialect, action: str, payload: dict[str, Any]) -> list[str]:
    """Each date-time field of the CALL's payload that is not RFC 3339, as ``"path: value"``."""
    bad = []
    for path in _paths(dialect.schema_version, action):
        for where, value in _values(payload, path, ""):
            # A value of the wrong type is the schema check's (TypeConstraintViolation).
            if isinstance(value, str) and not _is_date_time(value):
                bad.append(f"{where}: {str(value)[:40]!r}")
    return bad
