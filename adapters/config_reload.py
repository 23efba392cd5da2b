"""Reloading the config file of a running service (SIGHUP, or the file changing on disk).

An invalid file, or one that changes what needs a restart (sites, ports, state_dir, adding or
removing OCPI), is refused and the running config stays; either way an annotation goes to every
site's dashboard.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from adapters.config_file import load_config
from adapters.metrics import event_point
from balancer.errors import InvalidInput

if TYPE_CHECKING:
    from adapters.app import Service

__all__ = ["mtime", "reload_config", "watch_config"]

log = logging.getLogger("balancer.service")

WATCH_EVERY_S = 2.0


def mtime(path: Path | None) -> float:
    if path is None:
        return 0.0
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


async def watch_config(service: Service) -> None:
    """Reload whenever the file's modification time changes."""
    seen = mtime(service.config_path)
    while True:
        await asyncio.sleep(WATCH_EVERY_S)
        now = mtime(service.config_path)
        if now != seen:
            seen = now
            service.reload_config()


def reload_config(service: Service) -> bool:
    """Load the config file again; an invalid one is refused and the old one keeps running."""
    if service.config_path is None:
        return False
    try:
        new = load_config(service.config_path)
    except InvalidInput as exc:
        service.counters["config_rejected"] += 1
        log.error("config reload refused, keeping the running config: %s", exc)
        _config_event(service, ok=False, result=str(exc))
        return False
    old = service.config
    if {s.id for s in new.sites} != set(service.controllers) or new.state_dir != old.state_dir \
            or new.ocpp.port != old.ocpp.port or new.http.port != old.http.port \
            or (new.ocpi is None) != (service.ocpi is None):
        service.counters["config_rejected"] += 1
        log.error("config reload refused: sites, ports, state_dir and adding or removing ocpi need a restart")
        _config_event(service, ok=False, result="sites, ports, state_dir and adding or removing ocpi need a restart")
        return False
    for site in new.sites:
        service.controllers[site.id].reconfigure(site)
    service.chargers.update_config(new)
    service.fp.update_config(new)
    service.spawn(service.meters.update_config(new))
    if service.ocpi is not None:
        service.ocpi.update_config(new)
    service.config = new
    service.counters["config_reloads"] += 1
    log.info("config reloaded from %s", service.config_path)
    _config_event(service, ok=True, result=str(service.config_path))
    service.wake()
    return True


def _config_event(service: Service, *, ok: bool, result: str) -> None:
    """A ``config_reloaded`` / ``config_rejected`` annotation on every site's dashboard."""
    if service.influx is not None:
        service.influx.write([event_point(site_id, service.now(), kind="config_reloaded" if ok else "config_rejected",
                                          ok=ok, result=result) for site_id in service.controllers])
