"""The admin API's views of a running service (DESIGN 3): site JSON, plan JSON, health.

Read-only: built from the controllers and what the charger port reports live, never changing
either.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from adapters.meter.hub import meter_fields
from balancer.timeline import SLOT_S, horizon_slots, slot_floor

if TYPE_CHECKING:
    from adapters.app import Service

__all__ = ["health_json", "plan_json", "site_json"]


def site_json(service: Service, site_id: str) -> dict[str, Any] | None:
    controller = service.controllers.get(site_id)
    if controller is None:
        return None
    status = controller.status(service.now())
    chargers = []
    for c in status.chargers:
        live = service.chargers.charger_status(c["id"])
        chargers.append({**c, "protocol": live.get("protocol") or c["protocol"],
                         "connected": bool(live.get("connected", c["connected"])),
                         "obeys": live.get("obeys", c["obeys"]),
                         "capabilities": live.get("capabilities"),
                         # What its composite schedule allowed at the last read-back: all its
                         # profiles combined, what it really may draw (None: not read yet).
                         "composite_a": live.get("composite_a")})
    return {
        "id": site_id,
        "at": status.at.isoformat(),
        "capacity_w": round(status.capacity_w, 1),
        "capacity_a": [round(x, 2) for x in status.capacity_a],
        "capacity_source": status.capacity_source,
        "allocated_a": [round(x, 2) for x in status.allocated_a],
        "idle_allocated_a": [round(x, 2) for x in status.idle_allocated_a],
        "measured_a": [round(x, 2) for x in status.measured_a],
        "grid_operator_online": service.fp.is_online(site_id),
        "allocation_status": status.allocation_status,
        "plan_status": controller.plan_status,
        "plan_message": controller.plan_message,
        **meter_fields(status),
        "chargers": chargers,
    }


def plan_json(service: Service, site_id: str) -> dict[str, Any] | None:
    controller = service.controllers.get(site_id)
    if controller is None:
        return None
    now = service.now()
    start = slot_floor(now)
    n_slots = horizon_slots(service.config.control.plan_horizon_h)
    capacity = controller.capacity_ahead(start, n_slots)
    body: dict[str, Any] = {"site": site_id, "start": start.isoformat(), "slot_minutes": SLOT_S // 60,
                            "status": controller.plan_status, "message": controller.plan_message,
                            "capacity_a": np.round(capacity, 2).tolist(), "chargers": {},
                            "hourly_from_slot": None}
    result = controller.plan
    if result is not None:
        offset = int((start - result.start).total_seconds() // result.slot_s)
        for j, cid in enumerate(result.charger_ids):
            row = result.limit_a[j, max(offset, 0):]
            body["chargers"][cid] = {"limit_a": np.round(row, 2).tolist()}
        body["plan_start"] = result.start.isoformat()
        hourly = result.hourly_from_slot
        body["hourly_from_slot"] = None if hourly is None else max(hourly - offset, 0)
    return body


def health_json(service: Service) -> dict[str, Any]:
    """``status`` "ok", or "degraded" with ``reasons`` while control runs on but something is off.

    ``state_age_seconds``: how old the state on disk is, i.e. what a crash now would lose.
    """
    store = service.store
    now = time.time()
    reasons = []
    if store.fault is not None:
        reasons.append(f"state not persisted since {now - (store.fault_since or now):.0f} s: {store.fault}")
    return {"status": "degraded" if reasons else "ok", "reasons": reasons,
            "uptime_s": round(time.monotonic() - service.started_at, 1), "sites": len(service.controllers),
            "state_age_seconds": round(max(now - store.saved_at, 0.0), 3),
            "state_saved_at": datetime.fromtimestamp(store.saved_at, UTC).isoformat(),
            "state_pending_writes": store.pending, "state_write_failures": store.failures}
