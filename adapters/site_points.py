"""The InfluxDB points of one site after a control step: the site, its meter, every charger."""

from __future__ import annotations

from datetime import datetime

from adapters.meter.hub import meter_point
from adapters.metrics import Point, charger_point, site_point, wired_phases
from balancer.control import SiteStatus
from balancer.model import Site

__all__ = ["site_points"]


def site_points(site: Site, status: SiteStatus, now: datetime, *, grid_online: bool) -> list[Point]:
    requested = sum((c["remaining_wh"] or 0.0) + c["session_delivered_wh"]
                    for c in status.chargers if c["transaction_id"])
    delivered = sum(c["session_delivered_wh"] for c in status.chargers if c["transaction_id"])
    points = [site_point(
        site.id, now, capacity_a=status.capacity_a, capacity_source=status.capacity_source,
        allocated_a=status.allocated_a, measured_a=status.measured_a,
        grid_online=grid_online, energy_requested_wh=requested,
        energy_delivered_wh=delivered,
        chargers_connected=sum(1 for c in status.chargers if c["connected"]),
        voltage_v=site.voltage_v,
    )]
    metered = meter_point(site.id, now, status)
    if metered is not None:
        points.append(metered)
    wired = wired_phases(site)
    for c in status.chargers:
        points.append(charger_point(
            site.id, c["id"], now, protocol=c["protocol"] or "", limit_a=c["limit_a"],
            measured_a=c["measured_a"], power_w=c["power_w"], energy_wh=c["energy_wh"],
            soc_pct=c["soc_pct"], state=c["state"], connected=c["connected"], obeys=c["obeys"],
            limit_reason=c["limit_reason"]["code"],
            grid_phases=wired.get(c["id"], (0, 1, 2)),
        ))
    return points
