"""The service's settings: the transports, endpoints and stores around the sites (``balancer.config``
parses them; ``balancer.model`` re-exports them with the site model)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "CapacityProviderSettings",
    "ClusterSettings",
    "HttpSettings",
    "InfluxSettings",
    "OcpiLocation",
    "OcpiSettings",
    "OcppSettings",
    "OscpSettings",
    "UpstreamSettings",
]


@dataclass(frozen=True, slots=True)
class UpstreamSettings:
    """Local controller mode (DESIGN 3.11): the operator's CSMS the chargers are forwarded to."""

    url: str
    auth: str = "passthrough"
    password: str | None = None
    offline_authorize: str = "accept"
    answer_timeout_s: float = 10.0
    """How long a charger's call waits for the CSMS's answer before the balancer answers it [s]."""
    reconnect_max_s: float = 60.0
    """Ceiling of the backoff between connection attempts to the CSMS [s] (full jitter below it)."""
    ca_file: str | None = None
    """CA certificates (PEM) trusted for a ``wss://`` CSMS besides the system's."""


@dataclass(frozen=True, slots=True)
class OcppSettings:
    host: str = "0.0.0.0"
    port: int = 9000
    heartbeat_interval_s: int = 300
    tls_cert: str | None = None
    tls_key: str | None = None
    authorize: str = "accept_all"
    max_message_bytes: int = 65536
    rate_limit_per_s: float = 50.0
    response_timeout_s: float = 10.0
    deadband_a: float = 1.0
    upstream: UpstreamSettings | None = None


@dataclass(frozen=True, slots=True)
class HttpSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    admin_token: str | None = None
    max_body_bytes: int = 1_048_576


@dataclass(frozen=True, slots=True)
class CapacityProviderSettings:
    base_url: str
    token: str


@dataclass(frozen=True, slots=True)
class OscpSettings:
    token: str | None = None
    capacity_provider: CapacityProviderSettings | None = None
    heartbeat_interval_s: int = 60
    measurement_interval_s: int = 900
    adjust_forecast: bool = False
    public_base_url: str | None = None


@dataclass(frozen=True, slots=True)
class OcpiLocation:
    """How a site is published as an OCPI Location (address and coordinates)."""

    site_id: str
    name: str = ""
    address: str = ""
    city: str = ""
    postal_code: str = ""
    country: str = ""
    latitude: float = 0.0
    longitude: float = 0.0
    time_zone: str = "UTC"


@dataclass(frozen=True, slots=True)
class ClusterSettings:
    """Cluster mode (DESIGN 3.12): state in PostgreSQL, charger traffic between instances on NATS."""

    postgres_url: str
    nats_url: str
    instance_id: str


@dataclass(frozen=True, slots=True)
class OcpiSettings:
    """OCPI 2.2.1, CPO side (DESIGN 3.10): who we are and the tokens A handed out of band."""

    country_code: str
    party_id: str
    token_a: tuple[str, ...]
    public_base_url: str | None = None
    deadband_a: float = 1.0
    profile_timeout_s: int = 30
    rate_limit_per_s: float = 100.0
    update_interval_s: float = 60.0
    business_name: str = "Smart-charging load balancer"
    locations: tuple[OcpiLocation, ...] = ()

    def location(self, site_id: str) -> OcpiLocation:
        for location in self.locations:
            if location.site_id == site_id:
                return location
        return OcpiLocation(site_id=site_id, name=site_id)


@dataclass(frozen=True, slots=True)
class InfluxSettings:
    url: str
    token: str = ""
    org: str = ""
    bucket: str = "balancer"
    api: str = "v2"
    database: str = ""
    username: str = ""
    password: str = ""
    flush_interval_s: float = 1.0
    buffer_points: int = 100_000
