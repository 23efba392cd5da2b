"""Config validation: every problem reported with its location, in one run."""

from __future__ import annotations

import contextlib
import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from balancer.config import parse_config
from balancer.errors import InvalidConfig
from balancer.model import ROTATIONS, Charger

CONFIGS = Path(__file__).resolve().parents[2] / "configs"

BASE: dict[str, Any] = {
    "sites": [{"id": "s", "grid_limit_a": 100, "fallback_kw": 20,
               "circuits": [{"id": "f", "max_current_a": 63}, {"id": "r", "parent": "f", "max_current_a": 32}],
               "chargers": [{"id": "A", "circuit": "r", "max_current_a": 32},
                            {"id": "B", "circuit": "f", "phases": 1, "phase": "L2", "max_current_a": 32}]}],
}


def problems(data: Any, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(InvalidConfig) as err:
        parse_config(data, env or {})
    return [str(p) for p in err.value.problems]


@pytest.mark.parametrize("name", ["office-4.yaml", "depot-40.yaml", "carpark-300.yaml"])
def test_examples_are_valid(name: str) -> None:
    text = (CONFIGS / name).read_text()
    env = {var: f"value-of-{var}" for var in re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", text)}
    config = parse_config(yaml.safe_load(text), env)
    assert config.sites and config.sites[0].chargers


def test_every_problem_in_one_run() -> None:
    data = copy.deepcopy(BASE)
    site = data["sites"][0]
    site["bogus"] = 1
    site["circuits"] += [{"id": "x", "parent": "y", "max_current_a": 10}, {"id": "y", "parent": "x", "max_current_a": 10},
                         {"id": "z", "parent": "nope", "max_current_a": 10}, {"id": "f", "max_current_a": 5}]
    site["chargers"] += [
        {"id": "C", "circuit": "r", "max_current_a": 40},             # above its circuit
        {"id": "D", "max_current_a": 10, "min_current_a": 16},        # min > max
        {"id": "A", "max_current_a": 16},                             # duplicate
        {"id": "E", "circuit": "ghost", "max_current_a": 16},         # unknown circuit
        {"id": "F", "phases": 2, "max_current_a": 16},                # phases
        {"id": "G", "max_current_a": "lots"},                          # type
        {"id": "H", "phase": "L4", "max_current_a": 16, "phases": 1},  # enum
        {"max_current_a": 16},                                        # missing id
        {"id": "I", "max_current_a": 16, "password": "${NOPE}"},      # unset env var
    ]
    got = problems(data)
    expected = [
        "sites[0].bogus: unknown key",
        "cycle in circuit tree",
        "sites[0].circuits[4].parent: unknown circuit 'nope'",
        "sites[0].circuits[5].id: duplicate circuit id 'f'",
        "sites[0].chargers[2].max_current_a: sites[0].chargers[2] (C): max_current_a=40 exceeds circuit r limit 32 A",
        "sites[0].chargers[3].min_current_a",
        "sites[0].chargers[4].id: duplicate charger id 'A'",
        "sites[0].chargers[5].circuit: unknown circuit 'ghost'",
        "sites[0].chargers[6].phases: must be 1 or 3",
        "sites[0].chargers[7].max_current_a: must be a number",
        "sites[0].chargers[8].phase: must be one of L1, L2, L3",
        "sites[0].chargers[9].id: is required",
        "sites[0].chargers[10].password: environment variable NOPE is not set",
    ]
    for text in expected:
        assert any(text in g for g in got), (text, got)


def test_env_substitution_and_defaults() -> None:
    data = copy.deepcopy(BASE)
    data["http"] = {"admin_token": "${ADMIN_TOKEN}"}
    config = parse_config(data, {"ADMIN_TOKEN": "s3cret"})
    assert config.http.admin_token == "s3cret"
    site = config.sites[0]
    assert site.group_id == "s" and site.charger("A").granularity_a == 0.1 and site.charger("A").priority == 1


@pytest.mark.parametrize("rotation", ROTATIONS)
def test_phase_rotation_maps_single_phase_car(rotation: str) -> None:
    charger = Charger(id="x", max_current_a=32, phase_rotation=rotation)
    grid_of_r = "RST".index(rotation[0])
    assert charger.grid_phases(1) == (grid_of_r,)
    assert charger.grid_phases(3) == (0, 1, 2)


def test_top_level_must_be_a_mapping() -> None:
    assert problems([1, 2]) == ["must be a mapping, got list"]
    assert any("sites: is required" in p for p in problems({}))


def test_chargers_not_a_list_is_reported_not_raised() -> None:
    # Found by the fuzz test below: the cross-site id check iterated over a float.
    assert "sites[0].chargers: must be a list" in problems({"sites": [{"chargers": 1.0}]})


@settings(max_examples=300, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=8),
                    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(
                        st.sampled_from(["sites", "id", "chargers", "circuits", "grid_limit_a", "fallback_kw",
                                         "max_current_a", "parent", "circuit", "ocpp", "port", "x"]), kids, max_size=5),
                    max_leaves=30))
def test_fuzz_only_invalid_config_escapes(data: Any) -> None:
    with contextlib.suppress(InvalidConfig):
        parse_config(data, {})


def test_unknown_keys_get_a_did_you_mean() -> None:
    data = copy.deepcopy(BASE)
    data["sites"][0]["voltage"] = 400
    data["sites"][0]["chargers"][0]["min_current"] = 8
    data["sites"][0]["chargers"][1]["colour"] = "red"
    found = problems(data)
    assert "sites[0].voltage: unknown key; did you mean 'voltage_v'?" in found
    assert "sites[0].chargers[0].min_current: unknown key; did you mean 'min_current_a'?" in found
    assert "sites[0].chargers[1].colour: unknown key" in found


def test_meaning_checks_run_when_another_field_of_the_entry_fails() -> None:
    data = copy.deepcopy(BASE)
    # max_current_a fails its type check; phases and circuit are still checked.
    data["sites"][0]["chargers"][0].update(phases=2, circuit="nowhere", max_current_a="lots", min_current_a=70)
    found = problems(data)
    assert any(p.startswith("sites[0].chargers[0].max_current_a:") for p in found)
    assert "sites[0].chargers[0].phases: must be 1 or 3, got 2" in found
    assert "sites[0].chargers[0].circuit: unknown circuit 'nowhere'" in found
    data = copy.deepcopy(BASE)
    data["sites"][0]["chargers"][1].update(max_current_a=-1, min_current_a=80)  # 80 A on a 63 A feeder
    found = problems(data)
    assert any(p.startswith("sites[0].chargers[1].min_current_a:") and "exceeds circuit f limit 63" in p for p in found)


def test_empty_file_says_so() -> None:
    assert problems(None) == ["the config is empty: it needs at least a 'sites' list (see configs/README.md)"]
