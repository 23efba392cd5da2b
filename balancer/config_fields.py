"""The config's parsing helpers: field specs, type checks, unknown-key hints, ``${VAR}``. Pure.

Every check records a ``Problem`` located by its path (``sites[0].chargers[3].max_current_a``)
and goes on, so one ``InvalidConfig`` reports everything at once.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from balancer.errors import Problem

__all__ = ["Field", "check_value", "complete", "duplicates", "id_problem", "join_path", "read_mapping", "section",
           "substitute_env"]

_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def substitute_env(data: Any, env: Mapping[str, str], problems: list[Problem], path: str = "") -> Any:
    """Replace ``${VAR}`` in every string of ``data``; an unset variable is a problem."""
    if isinstance(data, str):

        def repl(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in env:
                problems.append(Problem(path, f"environment variable {name} is not set"))
                return ""
            return env[name]

        return _ENV_RE.sub(repl, data)
    if isinstance(data, dict):
        return {k: substitute_env(v, env, problems, join_path(path, str(k))) for k, v in data.items()}
    if isinstance(data, list):
        return [substitute_env(v, env, problems, f"{path}[{i}]") for i, v in enumerate(data)]
    return data


def join_path(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


@dataclass(frozen=True)
class Field:
    kind: str  # "str", "int", "number", "bool", "enum", "any"
    required: bool = False
    default: Any = None
    positive: bool = False
    non_negative: bool = False
    choices: tuple[str, ...] = ()
    ident: bool = False  # an id: also a tag in InfluxDB and a label in /metrics


def id_problem(value: str) -> str | None:
    """Why an id cannot be used, or None. Ids travel in InfluxDB line protocol, /metrics labels, OCPP
    URLs and log lines: line protocol carries no line feed, and no backslash where it would escape
    the next character or the separator after the value."""
    if any(ord(c) < 32 or 127 <= ord(c) < 160 for c in value):
        return "must not contain control characters"
    if re.search(r"\\([ ,=]|$)", value):
        return "must not hold a backslash before a space, comma or equals sign, nor end with one"
    return None


def check_value(value: Any, spec: Field, path: str, problems: list[Problem]) -> Any:
    """Type-check one scalar; returns the value (converted) or None after recording a problem."""
    kind = spec.kind
    if kind == "str":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            problems.append(Problem(path, f"must be a string, got {type(value).__name__}"))
            return None
        why = id_problem(value) if spec.ident else None
        if why is not None:
            problems.append(Problem(path, f"{why}, got {value!r}"))
            return None
    elif kind == "bool":
        if not isinstance(value, bool):
            problems.append(Problem(path, f"must be true or false, got {value!r}"))
            return None
    elif kind in ("int", "number"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            problems.append(Problem(path, f"must be a number, got {value!r}"))
            return None
        if kind == "int" and not float(value).is_integer():
            problems.append(Problem(path, f"must be an integer, got {value!r}"))
            return None
        if value != value or value in (float("inf"), float("-inf")):
            problems.append(Problem(path, f"must be a finite number, got {value!r}"))
            return None
        if spec.positive and value <= 0:
            problems.append(Problem(path, f"must be > 0, got {value!r}"))
            return None
        if spec.non_negative and value < 0:
            problems.append(Problem(path, f"must be >= 0, got {value!r}"))
            return None
        value = int(value) if kind == "int" else float(value)
    elif kind == "enum" and value not in spec.choices:
        problems.append(Problem(path, f"must be one of {', '.join(spec.choices)}, got {value!r}"))
        return None
    return value


def read_mapping(
    data: Any, fields: Mapping[str, Field], path: str, problems: list[Problem]
) -> dict[str, Any] | None:
    """Check a mapping against ``fields``: unknown keys, missing keys, types; defaults filled in.

    Returns None when ``data`` is not a mapping; otherwise every field, with None where the value
    was missing or bad (and a problem recorded), so callers can go on checking the rest.
    """
    if not isinstance(data, dict):
        problems.append(Problem(path, f"must be a mapping, got {type(data).__name__}"))
        return None
    out: dict[str, Any] = {}
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            problems.append(Problem(join_path(path, str(key)), f"unknown key{hint}"))
    for key, spec in fields.items():
        if key not in data or data[key] is None:
            if spec.required:
                problems.append(Problem(join_path(path, key), "is required"))
            out[key] = spec.default
        elif spec.kind == "any":
            out[key] = data[key]
        else:
            out[key] = check_value(data[key], spec, join_path(path, key), problems)
    return out


def complete(got: Mapping[str, Any], fields: Mapping[str, Field]) -> bool:
    """True when every required or typed field holds a usable value."""
    return all(got[k] is not None or (f.default is None and not f.required) for k, f in fields.items())


def duplicates(ids: list[tuple[str, str]], what: str, problems: list[Problem]) -> None:
    seen: dict[str, str] = {}
    for path, ident in ids:
        if ident in seen:
            problems.append(Problem(path, f"duplicate {what} id {ident!r} (first at {seen[ident]})"))
        else:
            seen[ident] = path


def section(raw: Any, fields: Mapping[str, Field], path: str, problems: list[Problem],
             build: Callable[..., Any]) -> Any:
    before = len(problems)
    got = read_mapping(raw if raw is not None else {}, fields, path, problems)
    return None if got is None or len(problems) > before else build(**got)
