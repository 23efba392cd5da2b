"""OCPI CPO: Locations and Sessions (Sender) and ``charging_preferences``."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta
from typing import Any

from aiohttp import web

from adapters.ocpi.cpo_base import (
    EVSE_STATUS,
    RECENT_SESSIONS,
)
from adapters.ocpi.cpo_credentials import CpoCredentials
from adapters.ocpi.messages import (
    VERSION,
    OcpiError,
    iso,
    ocpi_response,
    paginate,
    parse_preferences,
)
from balancer.control import ChargerState
from balancer.events import Event, NeedsUpdated, ProfileResult, SessionStarted, SessionStopped

__all__ = ["DONE_PREFIX", "LEGACY_DONE_KEY", "CpoSessions"]

log = logging.getLogger("balancer.ocpi")

DONE_PREFIX = "ocpi:sessions_done:"
"""+ site id: the site's last ``RECENT_SESSIONS`` ended sessions, for the Sessions list."""
LEGACY_DONE_KEY = "ocpi:sessions_done"
"""The ended sessions of every site in one key (before ``DONE_PREFIX``): read, and emptied site by site."""

class CpoSessions(CpoCredentials):
    """Locations and Sessions (Sender), the sessions index, charging preferences."""

    def _location(self, site_id: str) -> dict[str, Any]:
        site = self.config.site(site_id)
        controller = self.controllers[site_id]
        now = iso(self.now())
        evses = []
        for charger in site.chargers:
            state = controller.states[charger.id]
            status = EVSE_STATUS.get(state.status, "UNKNOWN") if state.connected else "UNKNOWN"
            if state.connected and state.transaction_id is not None:
                status = "CHARGING"
            evses.append({"uid": charger.id, "evse_id": charger.id, "status": status, "last_updated": now,
                          "connectors": [{
                              "id": "1", "standard": "IEC_62196_T2", "format": "SOCKET",
                              "power_type": "AC_3_PHASE" if charger.phases == 3 else "AC_1_PHASE",
                              "max_voltage": int(site.voltage_v), "max_amperage": int(charger.max_current_a),
                              "last_updated": now}]})
        s = self.settings
        where = s.location(site.id)
        body: dict[str, Any] = {
            "country_code": s.country_code, "party_id": s.party_id, "id": site.id, "publish": True,
            "name": where.name or site.id, "address": where.address, "city": where.city, "country": where.country,
            "coordinates": {"latitude": f"{where.latitude:.6f}", "longitude": f"{where.longitude:.6f}"},
            "time_zone": where.time_zone, "evses": evses, "last_updated": now}
        if where.postal_code:
            body["postal_code"] = where.postal_code
        return body

    def site_part(self, site_id: str) -> dict[str, Any]:
        """A site's share of the lists, from this instance's view: its location and its sessions
        (in progress, then ended). In a cluster its owner's is the live one (``_parts``)."""
        items = []
        for cid, state in self.controllers[site_id].states.items():
            if state.transaction_id is not None:
                start = iso(state.session_start) if state.session_start else None
                items.append(self._session_json(site_id, cid, f"{cid}-{state.transaction_id}", start,
                                                state.session_delivered_wh() / 1000.0, None))
        for done in self._done(site_id):
            items.append(self._session_json(site_id, done["charger_id"], done["id"], done["start"], done["kwh"],
                                            done["end"], done.get("uid")))
        return {"location": self._location(site_id), "sessions": items}

    async def _parts(self, site_ids: list[str]) -> list[dict[str, Any]]:
        """``site_part`` of each site, in order. In a cluster a site another instance controls is
        asked of its owner (``gather``), so every instance answers the same lists; when no owner
        answers, its last snapshot in PostgreSQL stands in (``stale``; chargers UNKNOWN then)."""

        async def part(site_id: str) -> dict[str, Any]:
            if self.gather is not None and not self.controls(site_id):
                found = await self.gather(site_id)
                if found is not None:
                    return found
                self.stale(site_id)
            return self.site_part(site_id)

        return list(await asyncio.gather(*(part(site_id) for site_id in site_ids)))

    async def locations(self, request: web.Request, party: str | None) -> web.Response:
        items = [p["location"] for p in await self._parts([site.id for site in self.config.sites])]
        page, headers = paginate(request, items, f"{self._base(request)}/ocpi/{VERSION}/locations")
        return ocpi_response(request, page, headers=headers)

    async def location(self, request: web.Request, party: str | None) -> web.Response:
        site_id = request.match_info["location_id"]
        if site_id not in self.controllers:
            raise OcpiError(f"unknown location {site_id!r}", "location_id", status_code=2003, http=404)
        (found,) = await self._parts([site_id])
        return ocpi_response(request, found["location"])

    # ----------------------------------------------------------------- sessions
    def _session(self, session_id: str) -> tuple[str, str, ChargerState] | None:
        """(site id, charger id, state) of the session in progress ``session_id``, or None.

        An index checked on every hit (the charger still runs that transaction) and rebuilt on a miss.
        """
        hit = self._sessions.get(session_id)
        for attempt in range(2):
            if hit is not None:
                site_id, cid = hit
                controller = self.controllers.get(site_id)
                state = controller.states.get(cid) if controller is not None else None
                if state is not None and state.transaction_id is not None \
                        and f"{cid}-{state.transaction_id}" == session_id:
                    return site_id, cid, state
            if attempt == 0:
                self._sessions = {f"{cid}-{state.transaction_id}": (site_id, cid)
                                  for site_id, controller in self.controllers.items()
                                  for cid, state in controller.states.items() if state.transaction_id is not None}
                hit = self._sessions.get(session_id)
        return None

    def _session_json(self, site_id: str, cid: str, session_id: str, start: str | None, kwh: float,
                      end: str | None, uid: str | None = None) -> dict[str, Any]:
        s = self.settings
        uid = uid or self._id_tags.get(session_id) or "unknown"
        now = iso(self.now())
        body = {"country_code": s.country_code, "party_id": s.party_id, "id": session_id,
                "start_date_time": start or now, "kwh": round(kwh, 3),
                "cdr_token": {"country_code": s.country_code, "party_id": s.party_id, "uid": uid, "type": "OTHER",
                              "contract_id": uid},
                "auth_method": "WHITELIST", "location_id": site_id, "evse_uid": cid, "connector_id": "1",
                "currency": "EUR", "status": "COMPLETED" if end else "ACTIVE", "last_updated": end or now}
        if end:
            body["end_date_time"] = end
        return body

    async def sessions(self, request: web.Request, party: str | None) -> web.Response:
        items = [item for p in await self._parts([site.id for site in self.config.sites]) for item in p["sessions"]]
        page, headers = paginate(request, items, f"{self._base(request)}/ocpi/{VERSION}/sessions")
        return ocpi_response(request, page, headers=headers)

    def _done(self, site_id: str) -> list[dict[str, Any]]:
        """The site's ended sessions, oldest first: one key per site, written by its owner only (one
        key for all let owners overwrite each other's); the single key of before read too, less what
        moved already (in a cluster two owners emptying it may each write back the other's part)."""
        own = list(self.store.get_json(f"{DONE_PREFIX}{site_id}") or [])
        moved = {d.get("id") for d in own}
        legacy = [d for d in self.store.get_json(LEGACY_DONE_KEY) or []
                  if d.get("site_id") == site_id and d.get("id") not in moved]
        return legacy + own

    def observe(self, event: Event) -> None:
        """Called for every event before the controllers see it: keeps ended sessions and drops
        the caps and preferences of a session that ends."""
        if isinstance(event, ProfileResult):
            self._release(event)
            return
        if isinstance(event, SessionStarted):
            if event.id_tag:
                self._id_tags[f"{event.charger_id}-{event.transaction_id}"] = event.id_tag[:36]
            return
        if not isinstance(event, SessionStopped):
            return
        for site_id, controller in self.controllers.items():
            state = controller.states.get(event.charger_id)
            if state is None or state.transaction_id != event.transaction_id:
                continue
            session_id = f"{event.charger_id}-{event.transaction_id}"
            delivered = state.session_delivered_wh()
            if event.meter_stop_wh is not None and state.session_energy_start_wh is not None:
                delivered = max(0.0, event.meter_stop_wh - state.session_energy_start_wh)
            done = self._done(site_id)
            done.append({"id": session_id, "site_id": site_id, "charger_id": event.charger_id,
                         "start": iso(state.session_start) if state.session_start else None,
                         "end": iso(event.at), "kwh": delivered / 1000.0,
                         "uid": self._id_tags.pop(session_id, None)})
            self.store.put_json(f"{DONE_PREFIX}{site_id}", done[-RECENT_SESSIONS:], flush=False)
            legacy = self.store.get_json(LEGACY_DONE_KEY)
            if legacy is not None:  # this site's entries moved to its own key
                rest = [d for d in legacy if d.get("site_id") != site_id]
                if rest:
                    self.store.put_json(LEGACY_DONE_KEY, rest, flush=False)
                else:
                    self.store.delete_json(LEGACY_DONE_KEY, flush=False)
            self.store.delete_json(f"ocpi:profile:{session_id}", flush=False)
            self.store.delete_json(f"ocpi:prefs:{session_id}", flush=False)
            self.store.flush()

    async def preferences(self, party: str | None, session_id: str, body: Any, query: dict[str, str]) -> Any:
        prefs = parse_preferences(body)
        found = self._session(session_id)
        if found is None:
            raise OcpiError(f"unknown session {session_id!r}", "session_id", status_code=2001, http=404)
        _, cid, state = found
        now = self.now()
        if prefs.profile_type in ("CHEAP", "GREEN"):
            return "PROFILE_TYPE_NOT_SUPPORTED"
        if prefs.departure is None:
            return "DEPARTURE_REQUIRED"
        if prefs.energy_need_kwh is None:
            return "ENERGY_NEED_REQUIRED"
        if prefs.departure <= now or prefs.departure > now + timedelta(days=7):
            return "NOT_POSSIBLE"
        self.store.put_json(f"ocpi:prefs:{session_id}", {
            "session_id": session_id, "party": party, "profile_type": prefs.profile_type,
            "departure_time": iso(prefs.departure), "energy_need": prefs.energy_need_kwh, "set_at": iso(now)})
        self._apply_preferences(cid, state, prefs.energy_need_kwh, prefs.departure)
        return "ACCEPTED"

    def _apply_preferences(self, cid: str, state: ChargerState, energy_need_kwh: float, departure: datetime) -> None:
        """The car's needs for the planner: the session's energy need less what it has delivered."""
        remaining_wh = max(0.0, energy_need_kwh * 1000.0 - state.session_delivered_wh())
        self.on_event(NeedsUpdated(charger_id=cid, at=self.now(), energy_wh=remaining_wh, departure=departure,
                                   source="ocpi"))
