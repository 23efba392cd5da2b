"""The example configs hold no secret: every password and token is ``${VAR}`` from the environment.

Each example loads with its variables set (and with nothing else), names every unset one as a
problem at its path when they are not, and ``balancer plan`` (which needs no secret) runs on it
as printed in the README without any of them.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from adapters.config_file import load_config, placeholder_secrets
from balancer.errors import InvalidConfig

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"
EXAMPLES = sorted(CONFIGS.glob("*.yaml"))
VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
SECRET_KEYS = {"password", "token", "admin_token", "upstream_password", "token_a"}


def variables(path: Path) -> list[str]:
    return sorted(set(VAR.findall(path.read_text())))


def secrets(data: Any, path: str = "") -> list[tuple[str, Any]]:
    """(path, value) of every secret-looking key in the YAML document."""
    found = []
    if isinstance(data, dict):
        for key, value in data.items():
            where = f"{path}.{key}" if path else str(key)
            if key in SECRET_KEYS:
                found.append((where, value))
            found += secrets(value, where)
    elif isinstance(data, list):
        for i, value in enumerate(data):
            found += secrets(value, f"{path}[{i}]")
    return found


def test_there_are_examples() -> None:
    assert {p.name for p in EXAMPLES} >= {"office-4.yaml", "depot-40.yaml", "carpark-300.yaml"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_no_plaintext_secret_in_an_example(path: Path) -> None:
    found = secrets(yaml.safe_load(path.read_text()))
    assert found, "every example sets at least its tokens"
    plain = [(where, value) for where, value in found if not (isinstance(value, str) and VAR.fullmatch(value))]
    assert not plain, plain


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_loads_with_its_variables_set(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    names = variables(path)
    for name in names:
        monkeypatch.setenv(name, f"{name.lower()}-7c1e")
    config = load_config(path)
    assert config.sites and all(site.chargers for site in config.sites)
    assert config.oscp.token == "oscp_token-7c1e" and config.http.admin_token == "admin_token-7c1e"
    passwords = [c.password for site in config.sites for c in site.chargers if c.password]
    assert all(p.endswith("-7c1e") for p in passwords)
    assert placeholder_secrets(config) == []  # serve would start with these


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_an_unset_variable_is_a_problem_at_its_path(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    names = variables(path)
    for name in names:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(InvalidConfig) as err:
        load_config(path)
    text = "\n".join(str(p) for p in err.value.problems)
    for name in names:
        assert f"environment variable {name} is not set" in text
    assert "oscp.token: environment variable OSCP_TOKEN is not set" in text


def test_plan_runs_on_an_example_without_any_secret_set() -> None:
    names = {name for path in EXAMPLES for name in variables(path)}
    env = {k: v for k, v in os.environ.items() if k not in names}
    done = subprocess.run([sys.executable, "-m", "adapters.cli", "plan", "--config", "configs/depot-40.yaml",
                           "--forecast", "configs/examples/forecast-depot.json",
                           "--sessions", "configs/examples/sessions-depot.json", "--start", "2026-03-02T12:00:00Z"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
    assert done.returncode == 0, done.stderr
    assert "DEP001" in done.stdout
