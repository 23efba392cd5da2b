"""The ``sites`` section of the config: sites, their fuse tree, chargers and site meter. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from balancer.config_fields import Field, check_value, complete, duplicates, read_mapping
from balancer.errors import Problem
from balancer.model import CONNECTION, PHASES, ROTATIONS, Charger, Circuit, MeterSettings, Site

__all__ = ["PAUSE_METHODS", "PROFILE_STRATEGIES", "parse_sites"]

PROFILE_STRATEGIES = ("TxProfile", "TxDefaultProfile", "ChargePointMax")
PAUSE_METHODS = ("zero_limit", "min_current")

_SITE = {
    "id": Field("str", required=True, ident=True),
    "oscp_group_id": Field("str", ident=True),
    "voltage_v": Field("number", default=230.0, positive=True),
    "grid_limit_a": Field("number", required=True, positive=True),
    "fallback_kw": Field("number", required=True, non_negative=True),
    "rotation_period_s": Field("number", default=900.0, positive=True),
    "headroom_a": Field("number", default=2.0, non_negative=True),
    "circuits": Field("any", default=[]),
    "chargers": Field("any", default=[]),
    "meter": Field("any"),
    "export_limit_a": Field("number", default=0.0, non_negative=True),
}
_METER = {
    "source": Field("enum", required=True, choices=("modbus", "http")),
    "host": Field("str"),
    "port": Field("int", default=502, positive=True),
    "unit_id": Field("int", default=1, non_negative=True),
    "map": Field("enum", default="sunspec", choices=("sunspec", "sdm630")),
    "poll_s": Field("number", default=1.0, positive=True),
    "timeout_s": Field("number", default=2.0, positive=True),
    "stale_after_s": Field("number", default=10.0, positive=True),
    "fallback_base_load_a": Field("any", required=True),
    "margin_a": Field("number", default=1.0, non_negative=True),
    "frozen_after_s": Field("number", default=60.0, non_negative=True),
}
_CIRCUIT = {
    "id": Field("str", required=True, ident=True),
    "parent": Field("str", default=CONNECTION),
    "max_current_a": Field("number", required=True, positive=True),
}
_CHARGER = {
    "id": Field("str", required=True, ident=True),
    "circuit": Field("str", default=CONNECTION),
    "phases": Field("int", default=3),
    "phase": Field("enum", default="L1", choices=PHASES),
    "phase_rotation": Field("enum", default="RST", choices=ROTATIONS),
    "max_current_a": Field("number", required=True, positive=True),
    "min_current_a": Field("number", default=6.0, non_negative=True),
    "priority": Field("int", default=1, non_negative=True),
    "password": Field("str"),
    "integer_amps": Field("bool", default=False),
    "profile_strategy": Field("enum", default="TxProfile", choices=PROFILE_STRATEGIES),
    "pause_method": Field("enum", default="zero_limit", choices=PAUSE_METHODS),
    "evse_id": Field("int", default=1, positive=True),
    "upstream_id": Field("str", ident=True),
    "upstream_password": Field("str"),
    "allow_discharge": Field("bool", default=False),
    "max_discharge_current_a": Field("number", non_negative=True),
}


def _parse_circuits(raw: Any, path: str, problems: list[Problem]) -> list[Circuit]:
    if not isinstance(raw, list):
        problems.append(Problem(path, "must be a list"))
        return []
    circuits: list[Circuit] = []
    paths: dict[str, str] = {}
    id_paths: list[tuple[str, str]] = []
    for i, item in enumerate(raw):
        p = f"{path}[{i}]"
        got = read_mapping(item, _CIRCUIT, p, problems)
        if got is None or got["id"] is None:
            continue
        if got["id"] == CONNECTION:
            problems.append(Problem(f"{p}.id", "must not be empty"))
            continue
        id_paths.append((f"{p}.id", got["id"]))
        if got["id"] in paths or not complete(got, _CIRCUIT):
            continue
        circuits.append(Circuit(id=got["id"], max_current_a=got["max_current_a"], parent=got["parent"]))
        paths[got["id"]] = p
    duplicates(id_paths, "circuit", problems)
    by_id = {c.id: c for c in circuits}
    for c in circuits:
        if c.parent != CONNECTION and c.parent not in by_id:
            problems.append(Problem(f"{paths[c.id]}.parent", f"unknown circuit {c.parent!r}"))
    # Cycles: walk up from every circuit until the connection or a circuit already on the walk.
    reported: set[str] = set()
    for c in circuits:
        walk = [c.id]
        node = c
        while node.parent != CONNECTION and node.parent in by_id:
            node = by_id[node.parent]
            if node.id in walk:
                cycle = [*walk[walk.index(node.id):], node.id]
                key = min(cycle)
                if key not in reported:
                    reported.add(key)
                    problems.append(Problem(f"{paths[c.id]}.parent",
                                            f"cycle in circuit tree: {' -> '.join(cycle)}"))
                break
            walk.append(node.id)
    return circuits


def _circuit_ceiling(circuit_id: str, by_id: Mapping[str, Circuit], grid_limit_a: float) -> float:
    """The lowest fuse on the path from a circuit up to the connection [A]."""
    ceiling = grid_limit_a
    hops = 0
    while circuit_id != CONNECTION and circuit_id in by_id and hops <= len(by_id):
        ceiling = min(ceiling, by_id[circuit_id].max_current_a)
        circuit_id = by_id[circuit_id].parent
        hops += 1
    return ceiling


def _check_charger(got: dict[str, Any], p: str, by_id: Mapping[str, Circuit], grid_limit_a: float | None,
                   problems: list[Problem]) -> bool:
    """Meaning checks of one charger, each run when the fields it needs are well-typed; True when usable.

    A field that failed its type check is None here: the checks that do not need it still run, so
    one run reports everything wrong with the entry.
    """
    before = len(problems)
    label = f"{p} ({got['id']})"
    phases, circuit = got["phases"], got["circuit"]
    low, high = got["min_current_a"], got["max_current_a"]
    if phases is not None and phases not in (1, 3):
        problems.append(Problem(f"{p}.phases", f"must be 1 or 3, got {phases}"))
    if low is not None and high is not None and low > high:
        problems.append(Problem(
            f"{p}.min_current_a", f"{label}: min_current_a={low:g} exceeds max_current_a={high:g}"))
    if circuit is not None and circuit != CONNECTION and circuit not in by_id:
        problems.append(Problem(f"{p}.circuit", f"unknown circuit {circuit!r}"))
    elif circuit is not None and grid_limit_a is not None:
        ceiling = _circuit_ceiling(circuit, by_id, grid_limit_a)
        where = f"circuit {circuit}" if circuit else "the connection (grid_limit_a)"
        for key in ("max_current_a", "min_current_a"):
            if got[key] is not None and got[key] > ceiling:
                problems.append(Problem(
                    f"{p}.{key}", f"{label}: {key}={got[key]:g} exceeds {where} limit {ceiling:g} A"))
    if got["integer_amps"] and low is not None and not float(low).is_integer():
        problems.append(Problem(f"{p}.min_current_a", "must be a whole number of amperes with integer_amps"))
    return len(problems) == before


def _parse_chargers(
    raw: Any, path: str, circuits: list[Circuit], grid_limit_a: float | None, problems: list[Problem]
) -> list[Charger]:
    if not isinstance(raw, list):
        problems.append(Problem(path, "must be a list"))
        return []
    by_id = {c.id: c for c in circuits}
    chargers: list[Charger] = []
    id_paths: list[tuple[str, str]] = []
    for i, item in enumerate(raw):
        p = f"{path}[{i}]"
        got = read_mapping(item, _CHARGER, p, problems)
        if got is None:
            continue
        if got["id"] is not None:
            id_paths.append((f"{p}.id", got["id"]))
        usable = _check_charger(got, p, by_id, grid_limit_a, problems)
        if usable and complete(got, _CHARGER):
            chargers.append(Charger(**got))
    duplicates(id_paths, "charger", problems)
    return chargers


def _parse_site(raw: Any, path: str, problems: list[Problem]) -> Site | None:
    before = len(problems)
    got = read_mapping(raw, _SITE, path, problems)
    if got is None:
        return None
    circuits = _parse_circuits(got["circuits"] or [], f"{path}.circuits", problems)
    chargers = _parse_chargers(got["chargers"] or [], f"{path}.chargers", circuits, got["grid_limit_a"],
                               problems)
    meter = None if got["meter"] is None else _parse_meter(got["meter"], f"{path}.meter", got["grid_limit_a"],
                                                           problems)
    if len(problems) > before:
        return None
    fields = {k: v for k, v in got.items() if k not in ("circuits", "chargers", "meter")}
    fields["meter"] = meter
    fields["oscp_group_id"] = fields["oscp_group_id"] or ""
    return Site(circuits=tuple(circuits), chargers=tuple(chargers), **fields)


def _parse_meter(raw: Any, path: str, grid_limit_a: float | None, problems: list[Problem]) -> MeterSettings | None:
    """``sites[].meter`` (DESIGN 3.8): where the site meter is read and what is assumed while it is stale."""
    before = len(problems)
    got = read_mapping(raw, _METER, path, problems)
    if got is None:
        return None
    if got["source"] == "modbus" and not got["host"]:
        problems.append(Problem(f"{path}.host", "is required when source is modbus"))
    if got["port"] is not None and got["port"] > 65535:
        problems.append(Problem(f"{path}.port", f"must be <= 65535, got {got['port']!r}"))
    if got["unit_id"] is not None and got["unit_id"] > 247:
        problems.append(Problem(f"{path}.unit_id", f"must be <= 247, got {got['unit_id']!r}"))
    base = got["fallback_base_load_a"]
    fallback: list[float] = []
    if base is not None:
        if isinstance(base, (int, float)) and not isinstance(base, bool):
            base = [base] * 3
        if not isinstance(base, list) or len(base) != 3:
            problems.append(Problem(f"{path}.fallback_base_load_a",
                                    f"must be a list of 3 currents [L1, L2, L3] or one number, got {base!r}"))
        else:
            spec = Field("number", non_negative=True)
            for k, value in enumerate(base):
                checked = check_value(value, spec, f"{path}.fallback_base_load_a[{k}]", problems)
                if checked is None:
                    continue
                if grid_limit_a is not None and checked > grid_limit_a:
                    problems.append(Problem(f"{path}.fallback_base_load_a[{k}]",
                                            f"must be <= grid_limit_a {grid_limit_a:g}, got {checked!r}"))
                fallback.append(float(checked))
    if len(problems) > before or len(fallback) != 3:
        return None
    fields = {**got, "host": got["host"] or "", "fallback_base_load_a": tuple(fallback)}
    return MeterSettings(**fields)


def parse_sites(raw_sites: Any, problems: list[Problem]) -> list[Site]:
    if not isinstance(raw_sites, list):
        if raw_sites is not None:
            problems.append(Problem("sites", "must be a list"))
        return []
    if not raw_sites:
        problems.append(Problem("sites", "must hold at least one site"))
    sites = [s for i, raw in enumerate(raw_sites) if (s := _parse_site(raw, f"sites[{i}]", problems))]
    dicts = [(i, s) for i, s in enumerate(raw_sites) if isinstance(s, dict)]
    duplicates([(f"sites[{i}].id", str(s["id"])) for i, s in dicts if s.get("id") is not None],
                "site", problems)
    duplicates([(f"sites[{i}].oscp_group_id", str(s.get("oscp_group_id") or s["id"]))
                 for i, s in dicts if s.get("oscp_group_id") or s.get("id")], "OSCP group", problems)
    # Charger ids are the OCPP identity, so they must be unique across sites too.
    across = [(f"sites[{i}].chargers[{j}].id", i, str(c["id"])) for i, s in dicts
              if isinstance(s.get("chargers"), list)
              for j, c in enumerate(s["chargers"]) if isinstance(c, dict) and c.get("id")]
    first: dict[str, tuple[str, int]] = {}
    for p, i, ident in across:
        if ident in first and first[ident][1] != i:
            problems.append(Problem(p, f"duplicate charger id {ident!r} across sites"
                                       f" (first at {first[ident][0]})"))
        first.setdefault(ident, (p, i))
    return sites
