"""``GET /metrics``: the service's state in the Prometheus text exposition format (0.0.4).

Label values are escaped as the format requires (backslash, double quote and line feed), so a
site or charger id with quotes, commas or spaces stays one sample; metric names made from
counter names are reduced to the characters a name may hold; NaN and infinities are spelled
``NaN``/``+Inf``/``-Inf``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from adapters.metrics import SOURCE_CODES
from balancer.control import Controller

__all__ = ["INFLUX_HELP", "OCPI_HELP", "OCPP_HELP", "OSCP_HELP", "SERVICE_HELP", "Family",
           "MetricsSource", "escape_label_value", "format_value", "render", "service_metrics_text"]

Labels = Mapping[str, str]
_NAME_INVALID = re.compile(r"[^a-zA-Z0-9_:]")


def escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def metric_name(name: str) -> str:
    """``name`` with every character a metric name may not hold replaced by ``_``."""
    cleaned = _NAME_INVALID.sub("_", name)
    return cleaned if cleaned and not cleaned[0].isdigit() else f"_{cleaned}"


def format_value(value: float) -> str:
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


@dataclass
class Family:
    """One metric: its name, type, help text and samples (labels, value)."""

    name: str
    type: str
    help: str = ""
    samples: list[tuple[Labels, float]] = field(default_factory=list)


def render(families: Sequence[Family]) -> str:
    lines: list[str] = []
    for family in families:
        if family.help:
            lines.append(f"# HELP {family.name} {_escape_help(family.help)}")
        lines.append(f"# TYPE {family.name} {family.type}")
        for labels, value in family.samples:
            label = ",".join(f'{metric_name(k)}="{escape_label_value(str(v))}"' for k, v in labels.items())
            lines.append(f"{family.name}{{{label}}} {format_value(value)}" if label
                         else f"{family.name} {format_value(value)}")
    return "\n".join(lines) + "\n"


class _Counted(Protocol):
    @property
    def counters(self) -> Mapping[str, float]: ...


class _OnlineSource(_Counted, Protocol):
    def is_online(self, site_id: str) -> bool: ...


class _Outbox(Protocol):
    def outbox_size(self) -> int: ...


class MetricsSource(Protocol):
    """What the service offers ``/metrics``."""

    @property
    def controllers(self) -> Mapping[str, Controller]: ...
    @property
    def fp(self) -> _OnlineSource: ...
    @property
    def ocpp(self) -> _Counted: ...
    @property
    def store(self) -> _Outbox: ...
    @property
    def oscp_client(self) -> Any: ...
    @property
    def counters(self) -> Mapping[str, float]: ...
    @property
    def last_step_s(self) -> float: ...
    @property
    def influx(self) -> Any: ...


def service_families(service: MetricsSource, now: datetime) -> list[Family]:
    def gauge(name: str, help_text: str) -> Family:
        return Family(name, "gauge", help_text)

    cap = gauge("balancer_capacity_amperes", "Capacity in force per phase")
    alloc = gauge("balancer_allocated_amperes", "Sum of charger limits per phase")
    meas = gauge("balancer_measured_amperes", "Sum of measured charger currents per phase")
    online = gauge("balancer_grid_operator_online", "1 when the grid operator is online")
    source = gauge("balancer_capacity_source_code",
                   "What the capacity in force comes from: 0 forecast, 1 fallback forecast, 2 fallback_kw")
    connected = gauge("balancer_charger_connected", "1 when the charger is connected")
    limits = gauge("balancer_charger_limit_amperes", "Current limit per charger")
    obeys = gauge("balancer_charger_obeys", "0 when a charger does not follow its profile")
    asleep = Family("balancer_cars_asleep_total", "counter",
                    "Cars found asleep: no draw within car_asleep_after_s after their limit was raised")
    for site_id, controller in service.controllers.items():
        asleep.samples.append(({"site": site_id}, float(controller.sleep.total)))
        status = controller.status(now)
        for k, phase in enumerate(("L1", "L2", "L3")):
            cap.samples.append(({"site": site_id, "phase": phase, "source": status.capacity_source},
                                status.capacity_a[k]))
            alloc.samples.append(({"site": site_id, "phase": phase}, status.allocated_a[k]))
            meas.samples.append(({"site": site_id, "phase": phase}, status.measured_a[k]))
        online.samples.append(({"site": site_id}, 1.0 if service.fp.is_online(site_id) else 0.0))
        source.samples.append(({"site": site_id}, float(SOURCE_CODES.get(status.capacity_source, 2))))
        for c in status.chargers:
            connected.samples.append(({"site": site_id, "charger": c["id"]}, 1.0 if c["connected"] else 0.0))
            limits.samples.append(({"site": site_id, "charger": c["id"]}, c["limit_a"]))
            obeys.samples.append(({"site": site_id, "charger": c["id"]}, 1.0 if c["obeys"] else 0.0))
    families = [cap, alloc, meas, online, source, connected, limits, obeys, asleep]
    families += _counters("balancer_", service.counters, SERVICE_HELP)
    families += _counters("balancer_ocpp_", service.ocpp.counters, OCPP_HELP)
    families += _counters("balancer_oscp_", service.fp.counters, OSCP_HELP)
    families.append(Family("balancer_oscp_outbox_messages", "gauge",
                           "OSCP messages waiting in the outbox for the capacity provider (0 without one)",
                           [({}, service.store.outbox_size())]))
    client = service.oscp_client
    if client is not None:
        families.append(Family("balancer_oscp_delivery_failures_total", "counter",
                               "Failed attempts to deliver an OSCP message to the capacity provider (retried)",
                               [({}, client.failures)]))
        families.append(Family("balancer_oscp_sent_total", "counter",
                               "OSCP messages delivered to the capacity provider, per message",
                               [({"message": path}, n) for path, n in sorted(client.sent.items())]))
    ocpi = getattr(service, "ocpi", None)
    if ocpi is not None:
        families += _counters("balancer_", ocpi.counters, OCPI_HELP)
        families.append(Family("balancer_ocpi_outbox_messages", "gauge",
                               "OCPI callbacks (results, profile updates) waiting in the outbox",
                               [({}, ocpi.outbox_size())]))
    families.append(Family("balancer_control_step_seconds", "gauge", "Duration of the last control step",
                           [({}, service.last_step_s)]))
    meters = getattr(service, "meters", None)  # the site meters (adapters.meter.hub), when the service has any
    if meters is not None:
        families += meters.families(now)
    if service.influx is not None:
        for name, value in service.influx.stats().items():
            kind, help_text = INFLUX_HELP.get(name, ("gauge", f"InfluxDB writer: {name}"))
            families.append(Family(metric_name(f"balancer_influx_{name}"), kind, help_text, [({}, value)]))
    return families


def _counters(prefix: str, counters: Mapping[str, float], help_texts: Mapping[str, str]) -> list[Family]:
    return [Family(metric_name(f"{prefix}{name}_total"), "counter",
                   help_texts.get(name, f"Count of {name.replace('_', ' ')}"), [({}, value)])
            for name, value in counters.items()]


SERVICE_HELP = {
    "control_steps": "Control loop steps run",
    "events": "Events handled (charger messages, forecasts, needs)",
    "plans": "24 h plans solved",
    "plan_failures": "Plans that did not solve (the allocator runs on without a plan)",
    "pushes": "Charging profile results received from chargers",
    "push_failures": "Charging profiles a charger did not accept",
    "config_reloads": "Config reloads applied",
    "config_rejected": "Config reloads refused (the running config stays)",
    "state_saves": "State snapshots written",
    "state_save_failures": "State snapshots that could not be written (retried)",
    "state_write_failures": "Failed state writes to disk",
    "compliance_errors": ("Times a site could not keep to its capacity "
                          "(reported to the grid operator at most once per slot)"),
}
OCPP_HELP = {
    "bad_frames": "OCPP frames refused by the frame guard (not JSON, bad message type, too large)",
    "rate_limited": "OCPP messages refused because a charger sent too many",
    "refused": "OCPP websocket handshakes refused (unknown charger id, wrong or missing password)",
    "connections": "OCPP websocket connections accepted",
    "pushes": "SetChargingProfile calls sent",
    "push_failures": "SetChargingProfile calls rejected, failed or unanswered",
    "implausible_meter_values": "Meter readings ignored as outside what the charger can draw or report",
    "upstream_forwarded": "Local controller mode: charger calls answered by the CSMS (answer forwarded)",
    "upstream_queued": "Local controller mode: charger calls queued on disk for the CSMS",
    "upstream_replayed": "Local controller mode: queued calls delivered to the CSMS",
    "upstream_local_answers": "Local controller mode: charger calls the balancer answered in the CSMS's stead",
    "upstream_connects": "Local controller mode: websocket connections opened to the CSMS",
    "upstream_connect_failures": "Local controller mode: failed connection attempts to the CSMS",
}
OSCP_HELP = {
    "forecasts": "OSCP capacity forecasts accepted",
    "heartbeats": "OSCP heartbeats received from the grid operator",
    "rejected": "OSCP messages rejected after the token check (bad body, too large, unknown group)",
    "repeats": "OSCP messages answered without being applied: a repeat (same X-Request-ID) of one applied",
}
OCPI_HELP = {
    "ocpi_requests": "OCPI requests received",
    "ocpi_rejected": "OCPI requests refused (missing or unknown token, bad body, registration failed)",
    "ocpi_profiles_set": "OCPI charging profiles (session caps) accepted",
    "ocpi_callbacks_sent": "OCPI callbacks delivered (profile results and ActiveChargingProfile updates)",
    "ocpi_callbacks_retried": "OCPI callback attempts that failed and were retried from the outbox",
    "ocpi_callbacks_dropped": "OCPI callbacks dropped: not delivered within the profile timeout",
    "ocpi_updates_sent": "OCPI ActiveChargingProfile updates queued for a party's Sender endpoint",
}
INFLUX_HELP = {
    "written_points": ("counter", "Points written to InfluxDB"),
    "failed_writes": ("counter", "InfluxDB write attempts that failed (points kept and retried)"),
    "dropped_points": ("counter", "Points dropped: the memory buffer was full and spilling to disk failed"),
    "spilled_points": ("counter", "Points spilled to state_dir during an InfluxDB outage"),
    "not_owned_points": ("counter", "Cluster mode: points of sites another instance controls, not written here"),
    "buffered": ("gauge", "Points waiting in memory to be written"),
    "spill_files": ("gauge", "Spill files waiting to be replayed"),
}


def service_metrics_text(service: MetricsSource, now: datetime) -> str:
    """The whole ``/metrics`` page."""
    return render(service_families(service, now))
