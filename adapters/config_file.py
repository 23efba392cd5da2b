"""Load a YAML config file from disk, substituting ``${VAR}`` from the process environment."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from balancer.config import parse_config
from balancer.errors import InvalidConfig, Problem
from balancer.model import Config

__all__ = ["load_config"]


def load_config(path: str | Path) -> Config:
    """Read, parse and validate ``path``; raises ``InvalidConfig`` listing every problem."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidConfig([Problem("", f"cannot read {path}: {exc.strerror or exc}")]) from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "document"
        raise InvalidConfig([Problem(where, f"not valid YAML: {getattr(exc, 'problem', exc)}")]) from exc
    return parse_config(data, dict(os.environ))
