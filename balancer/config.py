"""Parse a deployment config (already loaded from YAML into plain data) into the immutable model.

``parse_config`` checks everything (schema and meaning) and reports every problem in one
``InvalidConfig``, each located by a path such as ``sites[0].chargers[3].max_current_a``.
It is pure: the environment used for ``${VAR}`` substitution is passed in. The helpers live in
``config_fields``, the ``sites`` section in ``config_site``, the service sections in
``config_services``; this module is where they are put together and imported from.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from balancer.config_fields import Field, complete, read_mapping, section, substitute_env
from balancer.config_services import (
    CAPACITY_PROVIDER_FIELDS,
    CONTROL_FIELDS,
    HTTP_FIELDS,
    INFLUX_FIELDS,
    OCPP_FIELDS,
    OSCP_FIELDS,
    parse_ocpi,
    parse_upstream,
)
from balancer.config_site import parse_sites
from balancer.errors import InvalidConfig, Problem
from balancer.model import (
    CapacityProviderSettings,
    Config,
    ControlSettings,
    HttpSettings,
    InfluxSettings,
    OcppSettings,
    OscpSettings,
)

__all__ = ["parse_config", "substitute_env", "summary"]

_TOP = {
    "sites": Field("any", required=True),
    "ocpp": Field("any", default={}),
    "http": Field("any", default={}),
    "oscp": Field("any", default={}),
    "influxdb": Field("any"),
    "ocpi": Field("any"),
    "control": Field("any", default={}),
    "state_dir": Field("str", default="./state"),
}


def parse_config(data: Any, env: Mapping[str, str] | None = None) -> Config:
    """Validate ``data`` (the YAML document) and build a ``Config``; raises ``InvalidConfig``."""
    if data is None:
        raise InvalidConfig([Problem("", "the config is empty: it needs at least a 'sites' list "
                                         "(see configs/README.md)")])
    problems: list[Problem] = []
    data = substitute_env(data, env or {}, problems)
    top = read_mapping(data, _TOP, "", problems)
    if top is None:
        raise InvalidConfig(problems)
    sites = parse_sites(top["sites"], problems)
    ocpp = section(top["ocpp"], OCPP_FIELDS, "ocpp", problems, OcppSettings)
    if ocpp is not None and bool(ocpp.tls_cert) != bool(ocpp.tls_key):
        problems.append(Problem("ocpp.tls_key" if ocpp.tls_cert else "ocpp.tls_cert",
                                "tls_cert and tls_key must be given together"))
    if ocpp is not None and ocpp.upstream is not None:
        upstream = parse_upstream(ocpp.upstream, top["sites"], problems)
        ocpp = replace(ocpp, upstream=upstream)
        sites = [replace(site, chargers=tuple(replace(c, profile_strategy="ChargePointMax") for c in site.chargers))
                 for site in sites]
    http = section(top["http"], HTTP_FIELDS, "http", problems, HttpSettings)
    oscp = None
    oscp_raw = read_mapping(top["oscp"] if top["oscp"] is not None else {}, OSCP_FIELDS, "oscp", problems)
    if oscp_raw is not None:
        cp = None
        if oscp_raw["capacity_provider"] is not None:
            cp = section(oscp_raw["capacity_provider"], CAPACITY_PROVIDER_FIELDS, "oscp.capacity_provider",
                          problems, CapacityProviderSettings)
        if complete(oscp_raw, OSCP_FIELDS):
            oscp = OscpSettings(**{**oscp_raw, "capacity_provider": cp})
    influx = None
    if top["influxdb"] is not None:
        influx = section(top["influxdb"], INFLUX_FIELDS, "influxdb", problems, InfluxSettings)
    control = section(top["control"], CONTROL_FIELDS, "control", problems, ControlSettings)
    ocpi = None if top["ocpi"] is None else parse_ocpi(top["ocpi"], problems, {s.id for s in sites})
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
