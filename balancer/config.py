"""Parse a deployment config (already loaded from YAML into plain data) into the immutable model.

``parse_config`` checks everything (schema and meaning) and reports every problem in one
``InvalidConfig``, each located by a path such as ``sites[0].chargers[3].max_current_a``.
It is pure: the environment used for ``${VAR}`` substitution is passed in.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from balancer.errors import InvalidConfig, Problem
from balancer.model import (
    CONNECTION,
    PHASES,
    ROTATIONS,
    CapacityProviderSettings,
    Charger,
    Circuit,
    Config,
    ControlSettings,
    HttpSettings,
    InfluxSettings,
    MeterSettings,
    OcpiLocation,
    OcpiSettings,
    OcppSettings,
    OscpSettings,
    Site,
    UpstreamSettings,
)

__all__ = ["parse_config", "substitute_env", "summary"]

_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")

PROFILE_STRATEGIES = ("TxProfile", "TxDefaultProfile", "ChargePointMax")
PAUSE_METHODS = ("zero_limit", "min_current")


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
        return {k: substitute_env(v, env, problems, _join(path, str(k))) for k, v in data.items()}
    if isinstance(data, list):
        return [substitute_env(v, env, problems, f"{path}[{i}]") for i, v in enumerate(data)]
    return data


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


@dataclass(frozen=True)
class _Field:
    kind: str  # "str", "int", "number", "bool", "enum", "any"
    required: bool = False
    default: Any = None
    positive: bool = False
    non_negative: bool = False
    choices: tuple[str, ...] = ()
    ident: bool = False  # an id: also a tag in InfluxDB and a label in /metrics


def _id_problem(value: str) -> str | None:
    """Why an id cannot be used, or None. Ids travel in InfluxDB line protocol, /metrics labels, OCPP
    URLs and log lines: line protocol carries no line feed, and no backslash where it would escape
    the next character or the separator after the value."""
    if any(ord(c) < 32 or 127 <= ord(c) < 160 for c in value):
        return "must not contain control characters"
    if re.search(r"\\([ ,=]|$)", value):
        return "must not hold a backslash before a space, comma or equals sign, nor end with one"
    return None


def _check_value(value: Any, spec: _Field, path: str, problems: list[Problem]) -> Any:
    """Type-check one scalar; returns the value (converted) or None after recording a problem."""
    kind = spec.kind
    if kind == "str":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            problems.append(Problem(path, f"must be a string, got {type(value).__name__}"))
            return None
        why = _id_problem(value) if spec.ident else None
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


def _read_mapping(
    data: Any, fields: Mapping[str, _Field], path: str, problems: list[Problem]
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
            problems.append(Problem(_join(path, str(key)), f"unknown key{hint}"))
    for key, spec in fields.items():
        if key not in data or data[key] is None:
            if spec.required:
                problems.append(Problem(_join(path, key), "is required"))
            out[key] = spec.default
        elif spec.kind == "any":
            out[key] = data[key]
        else:
            out[key] = _check_value(data[key], spec, _join(path, key), problems)
    return out


def _complete(got: Mapping[str, Any], fields: Mapping[str, _Field]) -> bool:
    """True when every required or typed field holds a usable value."""
    return all(got[k] is not None or (f.default is None and not f.required) for k, f in fields.items())


_SITE = {
    "id": _Field("str", required=True, ident=True),
    "oscp_group_id": _Field("str", ident=True),
    "voltage_v": _Field("number", default=230.0, positive=True),
    "grid_limit_a": _Field("number", required=True, positive=True),
    "fallback_kw": _Field("number", required=True, non_negative=True),
    "rotation_period_s": _Field("number", default=900.0, positive=True),
    "headroom_a": _Field("number", default=2.0, non_negative=True),
    "circuits": _Field("any", default=[]),
    "chargers": _Field("any", default=[]),
    "meter": _Field("any"),
    "export_limit_a": _Field("number", default=0.0, non_negative=True),
}
_METER = {
    "source": _Field("enum", required=True, choices=("modbus", "http")),
    "host": _Field("str"),
    "port": _Field("int", default=502, positive=True),
    "unit_id": _Field("int", default=1, non_negative=True),
    "map": _Field("enum", default="sunspec", choices=("sunspec", "sdm630")),
    "poll_s": _Field("number", default=1.0, positive=True),
    "timeout_s": _Field("number", default=2.0, positive=True),
    "stale_after_s": _Field("number", default=10.0, positive=True),
    "fallback_base_load_a": _Field("any", required=True),
    "margin_a": _Field("number", default=1.0, non_negative=True),
    "frozen_after_s": _Field("number", default=60.0, non_negative=True),
}
_CIRCUIT = {
    "id": _Field("str", required=True, ident=True),
    "parent": _Field("str", default=CONNECTION),
    "max_current_a": _Field("number", required=True, positive=True),
}
_CHARGER = {
    "id": _Field("str", required=True, ident=True),
    "circuit": _Field("str", default=CONNECTION),
    "phases": _Field("int", default=3),
    "phase": _Field("enum", default="L1", choices=PHASES),
    "phase_rotation": _Field("enum", default="RST", choices=ROTATIONS),
    "max_current_a": _Field("number", required=True, positive=True),
    "min_current_a": _Field("number", default=6.0, non_negative=True),
    "priority": _Field("int", default=1, non_negative=True),
    "password": _Field("str"),
    "integer_amps": _Field("bool", default=False),
    "profile_strategy": _Field("enum", default="TxProfile", choices=PROFILE_STRATEGIES),
    "pause_method": _Field("enum", default="zero_limit", choices=PAUSE_METHODS),
    "evse_id": _Field("int", default=1, positive=True),
    "upstream_id": _Field("str", ident=True),
    "upstream_password": _Field("str"),
    "allow_discharge": _Field("bool", default=False),
    "max_discharge_current_a": _Field("number", non_negative=True),
}
_OCPP = {
    "host": _Field("str", default="0.0.0.0"),
    "port": _Field("int", default=9000, non_negative=True),
    "heartbeat_interval_s": _Field("int", default=300, positive=True),
    "tls_cert": _Field("str"),
    "tls_key": _Field("str"),
    "authorize": _Field("enum", default="accept_all", choices=("accept_all", "reject_all")),
    "max_message_bytes": _Field("int", default=65536, positive=True),
    "rate_limit_per_s": _Field("number", default=50.0, positive=True),
    "response_timeout_s": _Field("number", default=10.0, positive=True),
    "deadband_a": _Field("number", default=1.0, non_negative=True),
    "upstream": _Field("any"),
}
_UPSTREAM = {
    "url": _Field("str", required=True),
    "auth": _Field("enum", default="passthrough", choices=("passthrough", "config")),
    "password": _Field("str"),
    "offline_authorize": _Field("enum", default="accept", choices=("accept", "reject")),
    "answer_timeout_s": _Field("number", default=10.0, positive=True),
    "reconnect_max_s": _Field("number", default=60.0, positive=True),
    "ca_file": _Field("str"),
}
_HTTP = {
    "host": _Field("str", default="127.0.0.1"),
    "port": _Field("int", default=8080, non_negative=True),
    "admin_token": _Field("str"),
    "max_body_bytes": _Field("int", default=1_048_576, positive=True),
}
_OSCP = {
    "token": _Field("str"),
    "capacity_provider": _Field("any"),
    "heartbeat_interval_s": _Field("int", default=60, positive=True),
    "measurement_interval_s": _Field("int", default=900, positive=True),
    "adjust_forecast": _Field("bool", default=False),
    "public_base_url": _Field("str"),
}
_CAPACITY_PROVIDER = {
    "base_url": _Field("str", required=True),
    "token": _Field("str", required=True),
}
_OCPI = {
    "country_code": _Field("str", required=True),
    "party_id": _Field("str", required=True),
    "token_a": _Field("any", required=True),
    "public_base_url": _Field("str"),
    "deadband_a": _Field("number", default=1.0, non_negative=True),
    "profile_timeout_s": _Field("int", default=30, positive=True),
    "rate_limit_per_s": _Field("number", default=100.0, positive=True),
    "update_interval_s": _Field("number", default=60.0, positive=True),
    "business_name": _Field("str", default="Smart-charging load balancer"),
    "locations": _Field("any"),
}
_OCPI_LOCATION = {
    "name": _Field("str", default=""),
    "address": _Field("str", default=""),
    "city": _Field("str", default=""),
    "postal_code": _Field("str", default=""),
    "country": _Field("str", default=""),
    "latitude": _Field("number", default=0.0),
    "longitude": _Field("number", default=0.0),
    "time_zone": _Field("str", default="UTC"),
}
_INFLUX = {
    "url": _Field("str", required=True),
    "token": _Field("str", default=""),
    "org": _Field("str", default=""),
    "bucket": _Field("str", default="balancer"),
    "api": _Field("enum", default="v2", choices=("v2", "v1")),
    "database": _Field("str", default=""),
    "username": _Field("str", default=""),
    "password": _Field("str", default=""),
    "flush_interval_s": _Field("number", default=1.0, positive=True),
    "buffer_points": _Field("int", default=100_000, positive=True),
}
_CONTROL = {
    "interval_s": _Field("number", default=5.0, positive=True),
    "planner_budget_s": _Field("number", default=2.0, positive=True),
    "plan_horizon_h": _Field("int", default=24, positive=True),
    "plan_fine_h": _Field("number", default=2.0, positive=True),
    "min_pause_s": _Field("number", default=0.0, non_negative=True),
    "min_charge_s": _Field("number", default=1800.0, non_negative=True),
}
_TOP = {
    "sites": _Field("any", required=True),
    "ocpp": _Field("any", default={}),
    "http": _Field("any", default={}),
    "oscp": _Field("any", default={}),
    "influxdb": _Field("any"),
    "ocpi": _Field("any"),
    "control": _Field("any", default={}),
    "state_dir": _Field("str", default="./state"),
}


def _duplicates(ids: list[tuple[str, str]], what: str, problems: list[Problem]) -> None:
    seen: dict[str, str] = {}
    for path, ident in ids:
        if ident in seen:
            problems.append(Problem(path, f"duplicate {what} id {ident!r} (first at {seen[ident]})"))
        else:
            seen[ident] = path


def _parse_circuits(raw: Any, path: str, problems: list[Problem]) -> list[Circuit]:
    if not isinstance(raw, list):
        problems.append(Problem(path, "must be a list"))
        return []
    circuits: list[Circuit] = []
    paths: dict[str, str] = {}
    id_paths: list[tuple[str, str]] = []
    for i, item in enumerate(raw):
        p = f"{path}[{i}]"
        got = _read_mapping(item, _CIRCUIT, p, problems)
        if got is None or got["id"] is None:
            continue
        if got["id"] == CONNECTION:
            problems.append(Problem(f"{p}.id", "must not be empty"))
            continue
        id_paths.append((f"{p}.id", got["id"]))
        if got["id"] in paths or not _complete(got, _CIRCUIT):
            continue
        circuits.append(Circuit(id=got["id"], max_current_a=got["max_current_a"], parent=got["parent"]))
        paths[got["id"]] = p
    _duplicates(id_paths, "circuit", problems)
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
        got = _read_mapping(item, _CHARGER, p, problems)
        if got is None:
            continue
        if got["id"] is not None:
            id_paths.append((f"{p}.id", got["id"]))
        usable = _check_charger(got, p, by_id, grid_limit_a, problems)
        if usable and _complete(got, _CHARGER):
            chargers.append(Charger(**got))
    _duplicates(id_paths, "charger", problems)
    return chargers


def _parse_site(raw: Any, path: str, problems: list[Problem]) -> Site | None:
    before = len(problems)
    got = _read_mapping(raw, _SITE, path, problems)
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
    got = _read_mapping(raw, _METER, path, problems)
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
            spec = _Field("number", non_negative=True)
            for k, value in enumerate(base):
                checked = _check_value(value, spec, f"{path}.fallback_base_load_a[{k}]", problems)
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


def _section(raw: Any, fields: Mapping[str, _Field], path: str, problems: list[Problem],
             build: Callable[..., Any]) -> Any:
    before = len(problems)
    got = _read_mapping(raw if raw is not None else {}, fields, path, problems)
    return None if got is None or len(problems) > before else build(**got)


def _parse_sites(raw_sites: Any, problems: list[Problem]) -> list[Site]:
    if not isinstance(raw_sites, list):
        if raw_sites is not None:
            problems.append(Problem("sites", "must be a list"))
        return []
    if not raw_sites:
        problems.append(Problem("sites", "must hold at least one site"))
    sites = [s for i, raw in enumerate(raw_sites) if (s := _parse_site(raw, f"sites[{i}]", problems))]
    dicts = [(i, s) for i, s in enumerate(raw_sites) if isinstance(s, dict)]
    _duplicates([(f"sites[{i}].id", str(s["id"])) for i, s in dicts if s.get("id") is not None],
                "site", problems)
    _duplicates([(f"sites[{i}].oscp_group_id", str(s.get("oscp_group_id") or s["id"]))
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


def _parse_ocpi_locations(raw: Any, site_ids: set[str], problems: list[Problem]) -> tuple[OcpiLocation, ...]:
    """``ocpi.locations``: site id -> address and coordinates of its OCPI Location."""
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        problems.append(Problem("ocpi.locations", "must be a mapping of site id to a location"))
        return ()
    out = []
    for site_id, spec in raw.items():
        path = f"ocpi.locations.{site_id}"
        if site_id not in site_ids:
            problems.append(Problem(path, f"unknown site {site_id!r}"))
            continue
        got = _read_mapping(spec, _OCPI_LOCATION, path, problems)
        if got is None:
            continue
        country = got["country"]
        if country and not (len(country) == 3 and country.isalpha()):
            problems.append(Problem(f"{path}.country", f"must be an ISO 3166 alpha-3 code, got {country!r}"))
        for key, bound in (("latitude", 90), ("longitude", 180)):
            if got[key] is not None and not -bound <= got[key] <= bound:
                problems.append(Problem(f"{path}.{key}", f"must be between -{bound} and {bound}, got {got[key]!r}"))
        if _complete(got, _OCPI_LOCATION):
            out.append(OcpiLocation(site_id=str(site_id), **got))
    return tuple(out)


def _parse_ocpi(raw: Any, problems: list[Problem], site_ids: set[str]) -> OcpiSettings | None:
    """The ``ocpi`` section: CiString country code (2) and party id (3), one or more tokens A."""
    before = len(problems)
    got = _read_mapping(raw, _OCPI, "ocpi", problems)
    if got is None:
        return None
    for key, size in (("country_code", 2), ("party_id", 3)):
        value = got[key]
        if isinstance(value, str) and not (len(value) == size and value.isascii() and value.isalnum()):
            problems.append(Problem(f"ocpi.{key}", f"must be {size} letters or digits, got {value!r}"))
    tokens = got["token_a"]
    token_list = [tokens] if isinstance(tokens, str) else tokens
    if tokens is not None:
        if not isinstance(token_list, list) or not token_list:
            problems.append(Problem("ocpi.token_a", "must be a string or a non-empty list of strings"))
            token_list = []
        for i, token in enumerate(token_list):
            where = "ocpi.token_a" if isinstance(tokens, str) else f"ocpi.token_a[{i}]"
            if not isinstance(token, str) or not token or len(token) > 64 or not token.isascii() \
                    or not token.isprintable():
                problems.append(Problem(where, "must be 1 to 64 printable ASCII characters (OCPI credentials token)"))
        if isinstance(token_list, list) and len(set(map(str, token_list))) != len(token_list):
            problems.append(Problem("ocpi.token_a", "tokens A must be distinct (one per party)"))
    url = got["public_base_url"]
    if isinstance(url, str) and not url.startswith(("http://", "https://")):
        problems.append(Problem("ocpi.public_base_url", f"must start with http:// or https://, got {url!r}"))
    locations = _parse_ocpi_locations(got["locations"], site_ids, problems)
    if len(problems) > before:
        return None
    return OcpiSettings(**{**got, "token_a": tuple(token_list), "public_base_url": (url or "").rstrip("/") or None,
                           "locations": locations})


def _parse_upstream(raw: Any, raw_sites: Any, problems: list[Problem]) -> UpstreamSettings | None:
    """``ocpp.upstream`` (local controller mode, DESIGN 3.11) and what it asks of the chargers.

    The balancer's limits go as station maximum profiles there, beneath which the CSMS's own
    TxProfile/TxDefaultProfile apply: a charger set to another ``profile_strategy`` is an error.
    """
    before = len(problems)
    got = _read_mapping(raw, _UPSTREAM, "ocpp.upstream", problems)
    if got is not None and got["url"] is not None and not got["url"].startswith(("ws://", "wss://")):
        problems.append(Problem("ocpp.upstream.url", f"must start with ws:// or wss://, got {got['url']!r}"))
    upstream = UpstreamSettings(**got) if got is not None and len(problems) == before else None
    entries = [(f"sites[{i}].chargers[{j}]", c) for i, s in enumerate(raw_sites or [])
               if isinstance(s, dict) and isinstance(s.get("chargers"), list)
               for j, c in enumerate(s["chargers"]) if isinstance(c, dict)]
    for path, charger in entries:
        strategy = charger.get("profile_strategy")
        if strategy is not None and strategy != "ChargePointMax":
            problems.append(Problem(f"{path}.profile_strategy",
                                    f"must be ChargePointMax (or left out) with ocpp.upstream, got {strategy!r}"))
        if got is not None and got["auth"] == "config" and not got["password"] \
                and not charger.get("upstream_password"):
            problems.append(Problem(f"{path}.upstream_password",
                                    "is required with ocpp.upstream.auth: config and no ocpp.upstream.password"))
    return upstream


def parse_config(data: Any, env: Mapping[str, str] | None = None) -> Config:
    """Validate ``data`` (the YAML document) and build a ``Config``; raises ``InvalidConfig``."""
    if data is None:
        raise InvalidConfig([Problem("", "the config is empty: it needs at least a 'sites' list "
                                         "(see configs/README.md)")])
    problems: list[Problem] = []
    data = substitute_env(data, env or {}, problems)
    top = _read_mapping(data, _TOP, "", problems)
    if top is None:
        raise InvalidConfig(problems)
    sites = _parse_sites(top["sites"], problems)
    ocpp = _section(top["ocpp"], _OCPP, "ocpp", problems, OcppSettings)
    if ocpp is not None and bool(ocpp.tls_cert) != bool(ocpp.tls_key):
        problems.append(Problem("ocpp.tls_key" if ocpp.tls_cert else "ocpp.tls_cert",
                                "tls_cert and tls_key must be given together"))
    if ocpp is not None and ocpp.upstream is not None:
        upstream = _parse_upstream(ocpp.upstream, top["sites"], problems)
        ocpp = replace(ocpp, upstream=upstream)
        sites = [replace(site, chargers=tuple(replace(c, profile_strategy="ChargePointMax") for c in site.chargers))
                 for site in sites]
    http = _section(top["http"], _HTTP, "http", problems, HttpSettings)
    oscp = None
    oscp_raw = _read_mapping(top["oscp"] if top["oscp"] is not None else {}, _OSCP, "oscp", problems)
    if oscp_raw is not None:
        cp = None
        if oscp_raw["capacity_provider"] is not None:
            cp = _section(oscp_raw["capacity_provider"], _CAPACITY_PROVIDER, "oscp.capacity_provider",
                          problems, CapacityProviderSettings)
        if _complete(oscp_raw, _OSCP):
            oscp = OscpSettings(**{**oscp_raw, "capacity_provider": cp})
    influx = None
    if top["influxdb"] is not None:
        influx = _section(top["influxdb"], _INFLUX, "influxdb", problems, InfluxSettings)
    control = _section(top["control"], _CONTROL, "control", problems, ControlSettings)
    ocpi = None if top["ocpi"] is None else _parse_ocpi(top["ocpi"], problems, {s.id for s in sites})
    if problems:
        raise InvalidConfig(problems)
    assert ocpp is not None and http is not None and oscp is not None and control is not None
    return Config(sites=tuple(sites), ocpp=ocpp, http=http, oscp=oscp, influxdb=influx, ocpi=ocpi,
                  control=control, state_dir=top["state_dir"])


def summary(config: Config) -> str:
    """One line describing a valid config, for ``balancer check-config``."""
    n_chargers = sum(len(s.chargers) for s in config.sites)
    n_circuits = sum(len(s.circuits) for s in config.sites)
    sites = ", ".join(f"{s.id} ({len(s.chargers)} chargers, {s.grid_limit_a:g} A)" for s in config.sites)
    return (f"OK: {len(config.sites)} site(s), {n_chargers} charger(s), {n_circuits} circuit(s): {sites}")
