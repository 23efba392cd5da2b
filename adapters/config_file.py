"""Load a YAML config file from disk, substituting ``${VAR}`` from the process environment.

``serve`` and ``check-config`` need every variable set (an unset one is a problem at its path).
``plan`` and ``demo`` read only the sites (and the InfluxDB settings): they load with
``require_env=False``, where an unset variable is empty, so the example configs, whose passwords
and tokens are all ``${VAR}``, plan without any secret in the environment.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path

import yaml

from balancer.config import parse_config
from balancer.errors import InvalidConfig, Problem
from balancer.model import Config

__all__ = ["load_config", "placeholder_secrets"]


class _EnvOrEmpty(Mapping[str, str]):
    """The process environment where every unset variable reads as ""."""

    def __getitem__(self, name: str) -> str:
        return os.environ.get(name, "")

    def __contains__(self, name: object) -> bool:
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(os.environ)

    def __len__(self) -> int:
        return len(os.environ)


def load_config(path: str | Path, *, require_env: bool = True) -> Config:
    """Read, parse and validate ``path``; raises ``InvalidConfig`` listing every problem.

    ``require_env=False``: an unset ``${VAR}`` is empty instead of a problem (see the module docstring).
    """
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
    return parse_config(data, dict(os.environ) if require_env else _EnvOrEmpty())


_PLACEHOLDER = re.compile(r"change[-_ ]?me|^(\.\.\.|x+|secret|password|token|todo|example)$", re.IGNORECASE)


def placeholder_secrets(config: Config) -> list[Problem]:
    """Secrets still holding an example value (``change-me``, ``...``): ``serve`` refuses to run with them."""
    secrets = [("http.admin_token", config.http.admin_token), ("oscp.token", config.oscp.token)]
    if config.oscp.capacity_provider is not None:
        secrets.append(("oscp.capacity_provider.token", config.oscp.capacity_provider.token))
    if config.influxdb is not None:
        secrets += [("influxdb.token", config.influxdb.token), ("influxdb.password", config.influxdb.password)]
    if config.ocpi is not None:
        secrets += [(f"ocpi.token_a[{k}]", token) for k, token in enumerate(config.ocpi.token_a)]
    for i, site in enumerate(config.sites):
        secrets += [(f"sites[{i}].chargers[{j}].password", c.password) for j, c in enumerate(site.chargers)]
    return [Problem(path, f"{value!r} is a placeholder: set a real secret (e.g. from ${{VAR}})")
            for path, value in secrets if value and _PLACEHOLDER.search(value)]
