"""The service sections of the config: OCPP (and its upstream CSMS), HTTP, OSCP, OCPI, InfluxDB,
control. Field specs and the checks that span fields. Pure."""

from __future__ import annotations

from typing import Any

from balancer.config_fields import Field, complete, read_mapping
from balancer.errors import Problem
from balancer.model import OcpiLocation, OcpiSettings, UpstreamSettings

__all__ = ["CAPACITY_PROVIDER_FIELDS", "CONTROL_FIELDS", "HTTP_FIELDS", "INFLUX_FIELDS", "OCPP_FIELDS", "OSCP_FIELDS",
           "parse_ocpi", "parse_upstream"]

OCPP_FIELDS = {
    "host": Field("str", default="0.0.0.0"),
    "port": Field("int", default=9000, non_negative=True),
    "heartbeat_interval_s": Field("int", default=300, positive=True),
    "tls_cert": Field("str"),
    "tls_key": Field("str"),
    "authorize": Field("enum", default="accept_all", choices=("accept_all", "reject_all")),
    "max_message_bytes": Field("int", default=65536, positive=True),
    "rate_limit_per_s": Field("number", default=50.0, positive=True),
    "response_timeout_s": Field("number", default=10.0, positive=True),
    "deadband_a": Field("number", default=1.0, non_negative=True),
    "upstream": Field("any"),
}
_UPSTREAM = {
    "url": Field("str", required=True),
    "auth": Field("enum", default="passthrough", choices=("passthrough", "config")),
    "password": Field("str"),
    "offline_authorize": Field("enum", default="accept", choices=("accept", "reject")),
    "answer_timeout_s": Field("number", default=10.0, positive=True),
    "reconnect_max_s": Field("number", default=60.0, positive=True),
    "ca_file": Field("str"),
}
HTTP_FIELDS = {
    "host": Field("str", default="127.0.0.1"),
    "port": Field("int", default=8080, non_negative=True),
    "admin_token": Field("str"),
    "max_body_bytes": Field("int", default=1_048_576, positive=True),
}
OSCP_FIELDS = {
    "token": Field("str"),
    "capacity_provider": Field("any"),
    "heartbeat_interval_s": Field("int", default=60, positive=True),
    "measurement_interval_s": Field("int", default=900, positive=True),
    "adjust_forecast": Field("bool", default=False),
    "public_base_url": Field("str"),
}
CAPACITY_PROVIDER_FIELDS = {
    "base_url": Field("str", required=True),
    "token": Field("str", required=True),
}
_OCPI = {
    "country_code": Field("str", required=True),
    "party_id": Field("str", required=True),
    "token_a": Field("any", required=True),
    "public_base_url": Field("str"),
    "deadband_a": Field("number", default=1.0, non_negative=True),
    "profile_timeout_s": Field("int", default=30, positive=True),
    "rate_limit_per_s": Field("number", default=100.0, positive=True),
    "update_interval_s": Field("number", default=60.0, positive=True),
    "business_name": Field("str", default="Smart-charging load balancer"),
    "locations": Field("any"),
}
_OCPI_LOCATION = {
    "name": Field("str", default=""),
    "address": Field("str", default=""),
    "city": Field("str", default=""),
    "postal_code": Field("str", default=""),
    "country": Field("str", default=""),
    "latitude": Field("number", default=0.0),
    "longitude": Field("number", default=0.0),
    "time_zone": Field("str", default="UTC"),
}
INFLUX_FIELDS = {
    "url": Field("str", required=True),
    "token": Field("str", default=""),
    "org": Field("str", default=""),
    "bucket": Field("str", default="balancer"),
    "api": Field("enum", default="v2", choices=("v2", "v1")),
    "database": Field("str", default=""),
    "username": Field("str", default=""),
    "password": Field("str", default=""),
    "flush_interval_s": Field("number", default=1.0, positive=True),
    "buffer_points": Field("int", default=100_000, positive=True),
}
CONTROL_FIELDS = {
    "interval_s": Field("number", default=5.0, positive=True),
    "planner_budget_s": Field("number", default=2.0, positive=True),
    "plan_horizon_h": Field("int", default=24, positive=True),
    "plan_fine_h": Field("number", default=2.0, positive=True),
    "min_pause_s": Field("number", default=0.0, non_negative=True),
    "min_charge_s": Field("number", default=1800.0, non_negative=True),
}


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
        got = read_mapping(spec, _OCPI_LOCATION, path, problems)
        if got is None:
            continue
        country = got["country"]
        if country and not (len(country) == 3 and country.isalpha()):
            problems.append(Problem(f"{path}.country", f"must be an ISO 3166 alpha-3 code, got {country!r}"))
        for key, bound in (("latitude", 90), ("longitude", 180)):
            if got[key] is not None and not -bound <= got[key] <= bound:
                problems.append(Problem(f"{path}.{key}", f"must be between -{bound} and {bound}, got {got[key]!r}"))
        if complete(got, _OCPI_LOCATION):
            out.append(OcpiLocation(site_id=str(site_id), **got))
    return tuple(out)


def parse_ocpi(raw: Any, problems: list[Problem], site_ids: set[str]) -> OcpiSettings | None:
    """The ``ocpi`` section: CiString country code (2) and party id (3), one or more tokens A."""
    before = len(problems)
    got = read_mapping(raw, _OCPI, "ocpi", problems)
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


def parse_upstream(raw: Any, raw_sites: Any, problems: list[Problem]) -> UpstreamSettings | None:
    """``ocpp.upstream`` (local controller mode, DESIGN 3.11) and what it asks of the chargers.

    The balancer's limits go as station maximum profiles there, beneath which the CSMS's own
    TxProfile/TxDefaultProfile apply: a charger set to another ``profile_strategy`` is an error.
    """
    before = len(problems)
    got = read_mapping(raw, _UPSTREAM, "ocpp.upstream", problems)
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
