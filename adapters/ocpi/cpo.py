"""OCPI 2.2.1, CPO side (DESIGN 3.10), on the service's aiohttp server.

- Versions and version details; Credentials (POST/PUT/GET/DELETE): the token A -> B -> C
  registration. A party calls us with a token A from the config, we call its versions and
  details endpoints with its token B, store its endpoints and answer with a fresh token C; that
  token A is refused from then on. We can also register with a party (``register_with``).
  Several parties; everything is persisted in the state store.
- Locations (Sender): one Location per site, one EVSE per charger (``uid`` = charger id).
- Sessions (Sender): in progress and recent (id ``{charger_id}-{transaction_id}``), and
  ``PUT sessions/{id}/charging_preferences`` -> the car's needs for the planner.
- ChargingProfiles (Receiver): PUT sets a cap on the session (``ExternalCapSet``: the controller
  takes the lower of the cap and the site allocation), GET answers our schedule under the cap,
  DELETE clears the cap. The synchronous answer is a ChargingProfileResponse; the result is
  POSTed to ``response_url`` from a persisted outbox, retried with backoff until the answered
  ``timeout``, then dropped and counted. While a cap is set, an ActiveChargingProfile is PUT to
  the party's chargingprofiles Sender endpoint when our limit moves by more than ``deadband_a``,
  at most once per ``update_interval_s``.

State in the store (``ocpi:`` keys): parties, the tokens A used, profiles and preferences per
session, the outbox. Written before the answer, so a restart loses nothing that was answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
from aiohttp import web

from adapters.http_body import BadBody, error_response, loads, read_body, token_matches
from adapters.ocpi.messages import (
    VERSION,
    CredentialsIn,
    OcpiError,
    ProfileIn,
    decode_token,
    encode_token,
    iso,
    ocpi_response,
    paginate,
    parse_credentials,
    parse_datetime,
    parse_preferences,
    parse_set_profile,
    parse_url,
)
from adapters.store_port import Store
from balancer.control import ChargerState, Controller
from balancer.events import Event, ExternalCapSet, NeedsUpdated, ProfileResult, SessionStarted, SessionStopped
from balancer.model import Config, OcpiSettings

__all__ = ["OcpiCpo"]

log = logging.getLogger("balancer.ocpi")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

MAX_BACKOFF_S = 30.0
IN_FLIGHT = 64
"""Callbacks sent at the same time at most."""
RECENT_SESSIONS = 500
"""Ended sessions kept for the Sessions list."""
UPDATE_CHECK_S = 1.0
HOLD_RESULT_S = 5.0
"""A ChargingProfileResult waits at most this long for the charger to hold the cap (then goes out:
the cap is in force in the controller and reaches the charger when it can)."""
CAP_TOLERANCE_A = 0.05


def _cap_at(record: dict[str, Any], t: float) -> float | None:
    """The cap of a stored profile at ``t`` [epoch s] [A], None when none is in force."""
    until = record.get("until")
    if until is not None and t >= until:
        return None
    found = None
    for start, limit in record["periods"]:
        if start > t:
            break
        found = float(limit)
    return found

# OCPP connector status -> OCPI EVSE status.
EVSE_STATUS = {
    "Available": "AVAILABLE", "Preparing": "CHARGING", "Charging": "CHARGING", "SuspendedEV": "CHARGING",
    "SuspendedEVSE": "CHARGING", "Finishing": "CHARGING", "Occupied": "CHARGING", "Reserved": "RESERVED",
    "Unavailable": "INOPERATIVE", "Faulted": "OUTOFORDER",
}


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class OcpiCpo:
    """The CPO side of OCPI for one service (see the module docstring)."""

    def __init__(self, config: Config, store: Store, controllers: dict[str, Controller],
                 on_event: Callable[[Event], None], now: Callable[[], datetime]) -> None:
        assert config.ocpi is not None
        self.settings: OcpiSettings = config.ocpi
        self.config = config
        self.store = store
        self.controllers = controllers
        self.on_event = on_event
        self.now = now
        self.parties: dict[str, dict[str, Any]] = {}
        self._by_token: dict[str, str] = {}  # hash of the token a party calls us with -> party key
        self._used_a: set[str] = set(store.get_json("ocpi:token_a_used") or [])
        self._registering: set[str] = set()
        self._pending: set[str] = set()
        """Hashes of our tokens B offered to a party we register with: it reads our versions with them."""
        self._buckets: dict[str, list[float]] = {}
        self._outbox: dict[int, dict[str, Any]] = {}
        self._waiting: set[int] = set()
        self._id_tags: dict[str, str] = {}
        self._sessions: dict[str, tuple[str, str]] = {}
        """Session id -> (site id, charger id): the index ``_session`` keeps."""
        """The id tag (token uid) each session was started with, by session id (memory only)."""
        """Outbox items held until a charger holds a cap (``_release``)."""
        self._in_flight: set[int] = set()
        self._send_tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._http: aiohttp.ClientSession | None = None
        self.counters: dict[str, float] = {"ocpi_requests": 0, "ocpi_rejected": 0, "ocpi_profiles_set": 0,
                                           "ocpi_callbacks_sent": 0, "ocpi_callbacks_retried": 0,
                                           "ocpi_callbacks_dropped": 0, "ocpi_updates_sent": 0}
        for key in store.keys("ocpi:party:"):
            party = store.get_json(key)
            self.parties[party["key"]] = party
            self._by_token[_hash(party["token_in"])] = party["key"]
        for key in store.keys("ocpi:outbox:"):
            item = store.get_json(key)
            self._outbox[int(item["id"])] = item
            if "wait_charger" in item:
                self._waiting.add(int(item["id"]))
        self._next_id = max(self._outbox, default=0) + 1

    # ----------------------------------------------------------------- lifecycle
    def update_config(self, config: Config) -> None:
        """A reloaded config (same sites): new tokens A, chargers, locations and settings apply."""
        assert config.ocpi is not None
        self.config, self.settings = config, config.ocpi

    def restore(self) -> None:
        """Re-apply the persisted caps and preferences of sessions still running (after a restart)."""
        for key in self.store.keys("ocpi:profile:"):
            profile = self.store.get_json(key)
            found = self._session(profile["session_id"])
            if found is None:
                self.store.delete_json(key, flush=False)
                continue
            self._emit_cap(profile)
        for key in self.store.keys("ocpi:prefs:"):
            prefs = self.store.get_json(key)
            found = self._session(prefs["session_id"])
            if found is None:
                self.store.delete_json(key, flush=False)
                continue
            _, cid, state = found
            departure = parse_datetime(prefs["departure_time"], "departure_time")
            self._apply_preferences(cid, state, prefs["energy_need"], departure)
        self.store.flush()

    def _apply_preferences(self, cid: str, state: ChargerState, energy_need_kwh: float, departure: datetime) -> None:
        """The car's needs for the planner: the session's energy need less what it has delivered."""
        remaining_wh = max(0.0, energy_need_kwh * 1000.0 - state.session_delivered_wh())
        self.on_event(NeedsUpdated(charger_id=cid, at=self.now(), energy_wh=remaining_wh, departure=departure,
                                   source="ocpi"))

    async def start(self) -> None:
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        self._tasks.append(asyncio.create_task(self._deliver_loop(), name="ocpi-outbox"))
        self._tasks.append(asyncio.create_task(self._update_loop(), name="ocpi-updates"))

    async def stop(self) -> None:
        for task in [*self._tasks, *self._send_tasks]:
            task.cancel()
        for task in [*self._tasks, *self._send_tasks]:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._http is not None:
            await self._http.close()

    def add_routes(self, app: web.Application, *, admin_token: str | None = None) -> None:
        base = f"/ocpi/{VERSION}"
        r = app.router
        r.add_get("/ocpi/versions", self._guard(self.versions, token_a=True))
        r.add_get(base, self._guard(self.details, token_a=True))
        r.add_post(f"{base}/credentials", self._guard(self.credentials_post, token_a=True))
        r.add_put(f"{base}/credentials", self._guard(self.credentials_put))
        r.add_get(f"{base}/credentials", self._guard(self.credentials_get))
        r.add_delete(f"{base}/credentials", self._guard(self.credentials_delete))
        r.add_get(f"{base}/locations", self._guard(self.locations))
        r.add_get(f"{base}/locations/{{location_id}}", self._guard(self.location))
        r.add_get(f"{base}/sessions", self._guard(self.sessions))
        r.add_put(f"{base}/sessions/{{session_id}}/charging_preferences", self._guard(self.preferences))
        r.add_put(f"{base}/chargingprofiles/{{session_id}}", self._guard(self.profile_put))
        r.add_get(f"{base}/chargingprofiles/{{session_id}}", self._guard(self.profile_get))
        r.add_delete(f"{base}/chargingprofiles/{{session_id}}", self._guard(self.profile_delete))

        async def register(request: web.Request) -> web.Response:
            """Admin: ``POST /api/v1/ocpi/register {"versions_url", "token_a"}``: we register with a party."""
            header = request.headers.get("Authorization", "")
            if not header.startswith("Bearer "):
                return error_response(401, "admin token required (Authorization: Bearer ...)", "Authorization")
            if not token_matches(header[7:], admin_token):
                return error_response(403, "wrong admin token", "Authorization")
            try:
                body = await self._body(request)
                if not isinstance(body, dict):
                    raise OcpiError("body must be an object", None)
                token = body.get("token_a")
                if not isinstance(token, str) or not token or len(token) > 64:
                    raise OcpiError("token_a must be a string of 1 to 64 characters", "token_a")
                result = await self.register_with(parse_url(body.get("versions_url"), "versions_url"), token,
                                                  self._base(request))
            except BadBody as exc:
                return error_response(exc.status, exc.message, exc.field)
            except OcpiError as exc:
                return error_response(400 if exc.status_code < 3000 else 502, exc.message, exc.field,
                                      extra={"ocpi_status_code": exc.status_code})
            return web.json_response(result)

        r.add_post("/api/v1/ocpi/register", register)

    # ----------------------------------------------------------------- edge
    def _guard(self, handler: Callable[[web.Request, str | None], Awaitable[web.Response]], *,
               token_a: bool = False) -> Handler:
        """Authorization (401 unless a registered party's token, or an unused token A where
        ``token_a``), then the handler; ``OcpiError``/``BadBody`` become envelopes naming the field."""

        async def wrapped(request: web.Request) -> web.StreamResponse:
            self.counters["ocpi_requests"] += 1
            party: str | None = None
            given = decode_token(request.headers.get("Authorization"))
            for candidate in given:
                party = self._by_token.get(_hash(candidate))
                if party is not None:
                    break
            if party is None and not (token_a and any(self._token_a(c) or _hash(c) in self._pending
                                                      for c in given)):
                self.counters["ocpi_rejected"] += 1
                return ocpi_response(request, status=401, status_code=2000,
                                     message="missing or unknown token (Authorization: Token <base64>)",
                                     field="Authorization")
            try:
                return await handler(request, party)
            except OcpiError as exc:
                self.counters["ocpi_rejected"] += 1
                return ocpi_response(request, status=exc.http, status_code=exc.status_code, message=exc.message,
                                     field=exc.field)
            except BadBody as exc:
                self.counters["ocpi_rejected"] += 1
                return ocpi_response(request, status=exc.status, status_code=2001, message=exc.message,
                                     field=exc.field)

        return wrapped

    def _token_a(self, token: str) -> str | None:
        """The configured token A ``token`` is, if it is one and has not been used yet."""
        for candidate in self.settings.token_a:
            if token_matches(token, candidate) and _hash(candidate) not in self._used_a:
                return candidate
        return None

    async def _body(self, request: web.Request) -> Any:
        return loads(await read_body(request, self.config.http.max_body_bytes))

    def _base(self, request: web.Request) -> str:
        return self.settings.public_base_url or f"{request.scheme}://{request.host}"

    # ----------------------------------------------------------------- versions, credentials
    async def versions(self, request: web.Request, party: str | None) -> web.Response:
        return ocpi_response(request, [{"version": VERSION, "url": f"{self._base(request)}/ocpi/{VERSION}"}])

    def _endpoints(self, base: str) -> list[dict[str, str]]:
        b = f"{base}/ocpi/{VERSION}"
        return [{"identifier": "credentials", "role": "SENDER", "url": f"{b}/credentials"},
                {"identifier": "credentials", "role": "RECEIVER", "url": f"{b}/credentials"},
                {"identifier": "locations", "role": "SENDER", "url": f"{b}/locations"},
                {"identifier": "sessions", "role": "SENDER", "url": f"{b}/sessions"},
                {"identifier": "chargingprofiles", "role": "RECEIVER", "url": f"{b}/chargingprofiles"}]

    async def details(self, request: web.Request, party: str | None) -> web.Response:
        return ocpi_response(request, {"version": VERSION, "endpoints": self._endpoints(self._base(request))})

    def _our_credentials(self, token: str, base: str) -> dict[str, Any]:
        s = self.settings
        return {"token": token, "url": f"{base}/ocpi/versions",
                "roles": [{"role": "CPO", "party_id": s.party_id, "country_code": s.country_code,
                           "business_details": {"name": s.business_name}}]}

    async def credentials_post(self, request: web.Request, party: str | None) -> web.Response:
        if party is not None:
            raise OcpiError("already registered: use PUT to update or DELETE to unregister", status_code=2000,
                            http=405)
        given = decode_token(request.headers.get("Authorization"))
        token_a = next((t for t in (self._token_a(c) for c in given) if t is not None), None)
        if token_a is None:
            raise OcpiError("credentials need a token A", "Authorization", status_code=2000, http=401)
        creds = parse_credentials(await self._body(request))
        if _hash(token_a) in self._registering:
            raise OcpiError("a registration with this token A is already running", status_code=2000, http=405)
        self._registering.add(_hash(token_a))
        try:
            endpoints, version_url = await self._fetch_endpoints(creds.url, creds.token)
            if _hash(token_a) in self._used_a:
                raise OcpiError("token A already used", status_code=2000, http=401)
            record = self._register(creds, endpoints, version_url, token_out=creds.token)
            self._used_a.add(_hash(token_a))
            self.store.put_json("ocpi:token_a_used", sorted(self._used_a))
        finally:
            self._registering.discard(_hash(token_a))
        log.info("OCPI party %s registered", record["key"])
        return ocpi_response(request, self._our_credentials(record["token_in"], self._base(request)))

    async def credentials_put(self, request: web.Request, party: str | None) -> web.Response:
        assert party is not None
        creds = parse_credentials(await self._body(request))
        endpoints, version_url = await self._fetch_endpoints(creds.url, creds.token)
        old = self.parties.pop(party)
        self._by_token.pop(_hash(old["token_in"]), None)
        self.store.delete_json(f"ocpi:party:{party}", flush=False)
        record = self._register(creds, endpoints, version_url, token_out=creds.token)
        return ocpi_response(request, self._our_credentials(record["token_in"], self._base(request)))

    async def credentials_get(self, request: web.Request, party: str | None) -> web.Response:
        assert party is not None
        return ocpi_response(request, self._our_credentials(self.parties[party]["token_in"], self._base(request)))

    async def credentials_delete(self, request: web.Request, party: str | None) -> web.Response:
        assert party is not None
        old = self.parties.pop(party)
        self._by_token.pop(_hash(old["token_in"]), None)
        self.store.delete_json(f"ocpi:party:{party}")
        log.info("OCPI party %s unregistered", party)
        return ocpi_response(request)

    def _register(self, creds: CredentialsIn, endpoints: list[dict[str, Any]], version_url: str, *,
                  token_out: str, token_in: str | None = None) -> dict[str, Any]:
        key = creds.key
        old = self.parties.get(key)
        if old is not None:
            self._by_token.pop(_hash(old["token_in"]), None)
        record: dict[str, Any] = {"key": key, "token_in": token_in or secrets.token_urlsafe(32), "token_out": token_out,
                  "versions_url": creds.url, "version_url": version_url, "endpoints": endpoints,
                  "roles": list(creds.roles), "registered_at": iso(self.now())}
        self.parties[key] = record
        self._by_token[_hash(record["token_in"])] = key
        self.store.put_json(f"ocpi:party:{key}", record)
        return record

    async def _fetch_endpoints(self, versions_url: str, token: str) -> tuple[list[dict[str, Any]], str]:
        """The party's 2.2.1 endpoints, fetched with its token; 3001/3002/3003 when that fails."""
        versions = await self._get_data(versions_url, token, "versions")
        if not isinstance(versions, list):
            raise OcpiError(f"versions at {versions_url} is not a list", "url", status_code=3001, http=200)
        match = [v for v in versions if isinstance(v, dict) and v.get("version") == VERSION]
        if not match or not isinstance(match[0].get("url"), str):
            raise OcpiError(f"the party offers no version {VERSION} at {versions_url}", "url", status_code=3002,
                            http=200)
        version_url = match[0]["url"]
        details = await self._get_data(version_url, token, "version details")
        endpoints = details.get("endpoints") if isinstance(details, dict) else None
        if not isinstance(endpoints, list) or not endpoints:
            raise OcpiError(f"no endpoints in the version details at {version_url}", "url", status_code=3003,
                            http=200)
        return [e for e in endpoints if isinstance(e, dict) and {"identifier", "role", "url"} <= e.keys()], \
            version_url

    async def _get_data(self, url: str, token: str, what: str) -> Any:
        assert self._http is not None
        try:
            async with self._http.get(url, headers=self._headers(token)) as response:
                body = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise OcpiError(f"cannot read the party's {what} at {url}: {exc!r}", "url", status_code=3001,
                            http=200) from None
        if response.status != 200 or not isinstance(body, dict) or body.get("status_code") != 1000:
            raise OcpiError(f"the party's {what} at {url} answered HTTP {response.status}", "url",
                            status_code=3001, http=200)
        return body.get("data")

    @staticmethod
    def _headers(token: str) -> dict[str, str]:
        return {"Authorization": encode_token(token), "X-Request-ID": str(uuid.uuid4()),
                "X-Correlation-ID": str(uuid.uuid4()), "Content-Type": "application/json"}

    async def register_with(self, versions_url: str, token_a: str, base_url: str) -> dict[str, Any]:
        """Register with a party (we are the one that calls): its token A -> our token B -> its token C."""
        versions_url = parse_url(versions_url, "versions_url")
        endpoints, version_url = await self._fetch_endpoints(versions_url, token_a)
        url = next((e["url"] for e in endpoints if e["identifier"] == "credentials"), None)
        if url is None:
            raise OcpiError("the party has no credentials endpoint", "versions_url", status_code=3003, http=200)
        token_b = secrets.token_urlsafe(32)
        assert self._http is not None
        self._pending.add(_hash(token_b))  # the party reads our versions with it before it answers
        try:
            async with self._http.post(url, json=self._our_credentials(token_b, base_url),
                                       headers=self._headers(token_a)) as response:
                body = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise OcpiError(f"cannot POST our credentials to {url}: {exc!r}", "versions_url", status_code=3001,
                            http=200) from None
        finally:
            self._pending.discard(_hash(token_b))
        if response.status != 200 or not isinstance(body, dict) or body.get("status_code") != 1000:
            raise OcpiError(f"the party refused our credentials: HTTP {response.status}", "versions_url",
                            status_code=3001, http=200)
        try:
            creds = parse_credentials(body.get("data"))
        except OcpiError as exc:
            raise OcpiError(f"the party's credentials are invalid: {exc.message}", "versions_url",
                            status_code=3001, http=200) from None
        record = self._register(creds, endpoints, version_url, token_out=creds.token, token_in=token_b)
        return {"party": record["key"], "endpoints": len(endpoints)}

    # ----------------------------------------------------------------- locations
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

    async def locations(self, request: web.Request, party: str | None) -> web.Response:
        items = [self._location(site.id) for site in self.config.sites]
        page, headers = paginate(request, items, f"{self._base(request)}/ocpi/{VERSION}/locations")
        return ocpi_response(request, page, headers=headers)

    async def location(self, request: web.Request, party: str | None) -> web.Response:
        site_id = request.match_info["location_id"]
        if site_id not in self.controllers:
            raise OcpiError(f"unknown location {site_id!r}", "location_id", status_code=2003, http=404)
        return ocpi_response(request, self._location(site_id))

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
        items = []
        for site_id, controller in self.controllers.items():
            for cid, state in controller.states.items():
                if state.transaction_id is not None:
                    start = iso(state.session_start) if state.session_start else None
                    items.append(self._session_json(site_id, cid, f"{cid}-{state.transaction_id}", start,
                                                    state.session_delivered_wh() / 1000.0, None))
        for done in self.store.get_json("ocpi:sessions_done") or []:
            items.append(self._session_json(done["site_id"], done["charger_id"], done["id"], done["start"],
                                            done["kwh"], done["end"], done.get("uid")))
        page, headers = paginate(request, items, f"{self._base(request)}/ocpi/{VERSION}/sessions")
        return ocpi_response(request, page, headers=headers)

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
            done = self.store.get_json("ocpi:sessions_done") or []
            done.append({"id": session_id, "site_id": site_id, "charger_id": event.charger_id,
                         "start": iso(state.session_start) if state.session_start else None,
                         "end": iso(event.at), "kwh": delivered / 1000.0,
                         "uid": self._id_tags.pop(session_id, None)})
            self.store.put_json("ocpi:sessions_done", done[-RECENT_SESSIONS:], flush=False)
            self.store.delete_json(f"ocpi:profile:{session_id}", flush=False)
            self.store.delete_json(f"ocpi:prefs:{session_id}", flush=False)
            self.store.flush()

    async def preferences(self, request: web.Request, party: str | None) -> web.Response:
        session_id = request.match_info["session_id"]
        prefs = parse_preferences(await self._body(request))
        found = self._session(session_id)
        if found is None:
            raise OcpiError(f"unknown session {session_id!r}", "session_id", status_code=2001, http=404)
        _, cid, state = found
        now = self.now()
        if prefs.profile_type in ("CHEAP", "GREEN"):
            return ocpi_response(request, "PROFILE_TYPE_NOT_SUPPORTED")
        if prefs.departure is None:
            return ocpi_response(request, "DEPARTURE_REQUIRED")
        if prefs.energy_need_kwh is None:
            return ocpi_response(request, "ENERGY_NEED_REQUIRED")
        if prefs.departure <= now or prefs.departure > now + timedelta(days=7):
            return ocpi_response(request, "NOT_POSSIBLE")
        self.store.put_json(f"ocpi:prefs:{session_id}", {
            "session_id": session_id, "party": party, "profile_type": prefs.profile_type,
            "departure_time": iso(prefs.departure), "energy_need": prefs.energy_need_kwh, "set_at": iso(now)})
        self._apply_preferences(cid, state, prefs.energy_need_kwh, prefs.departure)
        return ocpi_response(request, "ACCEPTED")

    # ----------------------------------------------------------------- charging profiles
    def _too_often(self, party: str | None) -> bool:
        """A token bucket per party: ``rate_limit_per_s`` requests a second, as many in a burst."""
        rate = self.settings.rate_limit_per_s
        now = time.monotonic()
        bucket = self._buckets.setdefault(party or "", [rate, now])
        bucket[0] = min(rate, bucket[0] + (now - bucket[1]) * rate)
        bucket[1] = now
        if bucket[0] < 1.0:
            return True
        bucket[0] -= 1.0
        return False

    def _answer(self, request: web.Request, result: str) -> web.Response:
        return ocpi_response(request, {"result": result, "timeout": self.settings.profile_timeout_s})

    def _profile_session(self, request: web.Request, party: str | None,
                         session_id: str) -> tuple[str, str, ChargerState] | web.Response:
        """The session a ChargingProfiles request is about, or the answer refusing it (TOO_OFTEN
        before the lookup, so a party over its rate learns nothing, then UNKNOWN_SESSION)."""
        if self._too_often(party):
            return self._answer(request, "TOO_OFTEN")
        found = self._session(session_id)
        return self._answer(request, "UNKNOWN_SESSION") if found is None else found

    async def profile_put(self, request: web.Request, party: str | None) -> web.Response:
        session_id = request.match_info["session_id"]
        profile = parse_set_profile(await self._body(request))
        found = self._profile_session(request, party, session_id)
        if isinstance(found, web.Response):
            return found
        site_id, cid, state = found
        now = self.now()
        record = self._profile_record(session_id, site_id, cid, state, profile, party, now)
        self.store.put_json(f"ocpi:profile:{session_id}", record, flush=False)
        # The result waits until the charger holds the cap (an accepted profile at or below it),
        # at most HOLD_RESULT_S; nothing to wait for when what it holds is already within the cap.
        cap_now = _cap_at(record, now.timestamp())
        wait = cap_now is not None and state.connected and state.held_a > cap_now + CAP_TOLERANCE_A
        self._enqueue("POST", profile.response_url, {"result": "ACCEPTED"}, party, now,  # flushes both
                      wait_for=(cid, cap_now) if wait and cap_now is not None else None)
        self._emit_cap(record)
        self.counters["ocpi_profiles_set"] += 1
        return self._answer(request, "ACCEPTED")

    def _profile_record(self, session_id: str, site_id: str, cid: str, state: ChargerState, profile: ProfileIn,
                        party: str | None, now: datetime) -> dict[str, Any]:
        """The cap in A per phase at absolute times. W is total power: A = W / (V x phases), with the
        phases the car uses (the charger's when unknown); rounded down to 0.1 A."""
        site = self.config.site(site_id)
        charger = site.charger(cid)
        phases = charger.phases if state.car_phases is None else min(state.car_phases, charger.phases)
        start = profile.start or state.session_start or now
        periods = []
        for offset, limit in profile.periods:
            amps = limit if profile.unit == "A" else limit / (site.voltage_v * phases)
            periods.append([(start + timedelta(seconds=offset)).timestamp(), math.floor(amps * 10 + 1e-9) / 10])
        until = None if profile.duration_s is None else (start + timedelta(seconds=profile.duration_s)).timestamp()
        return {"session_id": session_id, "site_id": site_id, "charger_id": cid,
                "transaction_id": state.transaction_id, "party": party, "periods": periods, "until": until,
                "charging_profile": {"charging_rate_unit": profile.unit,
                                     "charging_profile_period": [{"start_period": o, "limit": v}
                                                                 for o, v in profile.periods],
                                     **({"start_date_time": iso(profile.start)} if profile.start else {}),
                                     **({"duration": profile.duration_s} if profile.duration_s else {})},
                "set_at": now.timestamp(), "reported_a": None, "reported_at": now.timestamp()}

    def _emit_cap(self, record: dict[str, Any]) -> None:
        until = record.get("until")
        self.on_event(ExternalCapSet(
            charger_id=record["charger_id"], at=self.now(),
            periods=tuple((datetime.fromtimestamp(t, UTC), a) for t, a in record["periods"]),
            until=None if until is None else datetime.fromtimestamp(until, UTC),
            transaction_id=record["transaction_id"]))

    def _active_profile(self, site_id: str, cid: str, duration_s: float | None, now: datetime) -> dict[str, Any]:
        """Our schedule for the charger (the cap already inside it), as an ActiveChargingProfile."""
        controller = self.controllers[site_id]
        schedule = controller.last_schedules.get(cid)
        state = controller.states[cid]
        periods: list[dict[str, Any]] = []
        if schedule is not None:
            for at, limit in schedule.periods:
                offset = max(0, int((at - now).total_seconds()))
                if duration_s is not None and offset >= duration_s:
                    break
                entry = {"start_period": offset, "limit": math.floor(limit * 10 + 1e-9) / 10}
                if periods and periods[-1]["start_period"] == offset:
                    periods[-1] = entry
                else:
                    periods.append(entry)
        if not periods:
            periods = [{"start_period": 0, "limit": math.floor(state.limit_a * 10 + 1e-9) / 10}]
        profile: dict[str, Any] = {"charging_rate_unit": "A", "charging_profile_period": periods}
        if duration_s is not None:
            profile["duration"] = int(duration_s)
        return {"start_date_time": iso(now), "charging_profile": profile}

    async def profile_get(self, request: web.Request, party: str | None) -> web.Response:
        session_id = request.match_info["session_id"]
        raw = request.query.get("duration")
        if raw is None or not raw.isdigit() or not 0 < int(raw) <= 7 * 86400:
            raise OcpiError(f"duration must be an integer number of seconds (1 to 604800), got {raw!r}",
                            "duration")
        response_url = parse_url(request.query.get("response_url"), "response_url")
        found = self._profile_session(request, party, session_id)
        if isinstance(found, web.Response):
            return found
        site_id, cid, _ = found
        now = self.now()
        body = {"result": "ACCEPTED", "profile": self._active_profile(site_id, cid, int(raw), now)}
        self._enqueue("POST", response_url, body, party, now)
        return self._answer(request, "ACCEPTED")

    async def profile_delete(self, request: web.Request, party: str | None) -> web.Response:
        session_id = request.match_info["session_id"]
        response_url = parse_url(request.query.get("response_url"), "response_url")
        found = self._profile_session(request, party, session_id)
        if isinstance(found, web.Response):
            return found
        _, cid, state = found
        now = self.now()
        self.store.delete_json(f"ocpi:profile:{session_id}", flush=False)
        self._enqueue("POST", response_url, {"result": "ACCEPTED"}, party, now)
        self.on_event(ExternalCapSet(charger_id=cid, at=now, periods=(), transaction_id=state.transaction_id))
        return self._answer(request, "ACCEPTED")

    # ----------------------------------------------------------------- outbox
    def _enqueue(self, method: str, url: str, body: Any, party: str | None, now: datetime, *,
                 wait_for: tuple[str, float] | None = None) -> None:
        """Persist a callback (with everything pending in the store) and wake the sender.

        ``wait_for`` (charger id, cap [A]): hold it until that charger accepts a profile at or below
        the cap (``_release``), at most ``HOLD_RESULT_S`` (or half the timeout).
        """
        item_id = self._next_id
        self._next_id += 1
        created = time.time()
        timeout = self.settings.profile_timeout_s
        item: dict[str, Any] = {"id": item_id, "method": method, "url": url, "body": body, "party": party,
                                "created": created, "deadline": created + timeout, "attempts": 0, "next_try": 0.0}
        if wait_for is not None:
            item["wait_charger"], item["wait_cap_a"] = wait_for
            item["next_try"] = created + min(HOLD_RESULT_S, timeout / 2)
            self._waiting.add(item_id)
        self._outbox[item_id] = item
        self.store.put_json(f"ocpi:outbox:{item_id:012d}", item)
        self._wake.set()

    def _release(self, event: ProfileResult) -> None:
        """A charger accepted a profile: the results waiting for it to hold a cap go out now."""
        if event.result != "Accepted" or event.idle or event.detail.startswith("failsafe") or not self._waiting:
            return
        for item_id in list(self._waiting):
            item = self._outbox.get(item_id)
            if item is None:
                self._waiting.discard(item_id)
                continue
            if item.get("wait_charger") == event.charger_id and event.limit_a <= item["wait_cap_a"] + CAP_TOLERANCE_A:
                self._waiting.discard(item_id)
                item["next_try"] = 0.0
                del item["wait_charger"], item["wait_cap_a"]
                self.store.put_json(f"ocpi:outbox:{item_id:012d}", item, flush=False)
                self._wake.set()

    def outbox_size(self) -> int:
        return len(self._outbox)

    async def _deliver_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=0.5)
            self._wake.clear()
            now = time.time()
            for item_id, item in list(self._outbox.items()):
                if len(self._in_flight) >= IN_FLIGHT:
                    break
                if item_id in self._in_flight or item["next_try"] > now:
                    continue
                self._in_flight.add(item_id)
                task = asyncio.create_task(self._send(item))
                self._send_tasks.add(task)
                task.add_done_callback(self._send_tasks.discard)

    async def _send(self, item: dict[str, Any]) -> None:
        item_id = int(item["id"])
        try:
            party = self.parties.get(item["party"] or "")
            ok = False
            if party is not None and self._http is not None:
                try:
                    async with self._http.request(item["method"], item["url"], json=item["body"],
                                                  headers=self._headers(party["token_out"])) as response:
                        await response.read()
                        ok = 200 <= response.status < 300
                except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                    log.debug("OCPI callback to %s failed: %r", item["url"], exc)
            key = f"ocpi:outbox:{item_id:012d}"
            if ok:
                self.counters["ocpi_callbacks_sent"] += 1
                self._outbox.pop(item_id, None)
                self.store.delete_json(key)
                return
            now = time.time()
            item["attempts"] += 1
            item["next_try"] = now + min(MAX_BACKOFF_S, 0.5 * 2 ** (item["attempts"] - 1))
            if party is None or item["next_try"] > item["deadline"]:
                self.counters["ocpi_callbacks_dropped"] += 1
                log.warning("OCPI callback %s %s dropped after %d attempts", item["method"], item["url"],
                            item["attempts"])
                self._outbox.pop(item_id, None)
                self.store.delete_json(key)
                return
            self.counters["ocpi_callbacks_retried"] += 1
            self.store.put_json(key, item)
        finally:
            self._in_flight.discard(item_id)
            self._wake.set()

    # ----------------------------------------------------------------- ActiveChargingProfile updates
    def _sender_url(self, party: str | None) -> str | None:
        record = self.parties.get(party or "")
        if record is None:
            return None
        for endpoint in record["endpoints"]:
            if endpoint["identifier"] == "chargingprofiles" and endpoint["role"] == "SENDER":
                return str(endpoint["url"])
        return None

    def check_updates(self) -> None:
        """PUT an ActiveChargingProfile for every capped session whose limit moved past the deadband."""
        now = self.now()
        for key in self.store.keys("ocpi:profile:"):
            record = self.store.get_json(key)
            url = self._sender_url(record["party"])
            controller = self.controllers.get(record["site_id"])
            if url is None or controller is None:
                continue
            limit = controller.states[record["charger_id"]].limit_a
            last = record.get("reported_a")
            if last is not None and abs(limit - last) <= self.settings.deadband_a:
                continue
            if last is not None and now.timestamp() - record["reported_at"] < self.settings.update_interval_s:
                continue
            record["reported_a"], record["reported_at"] = limit, now.timestamp()
            self.store.put_json(key, record, flush=False)
            if last is None:
                continue  # the first limit under the cap: the ChargingProfileResult said so
            body = self._active_profile(record["site_id"], record["charger_id"], 3600, now)
            self._enqueue("PUT", url.rstrip("/") + "/" + record["session_id"], body, record["party"], now)
            self.counters["ocpi_updates_sent"] += 1
        self.store.flush()

    async def _update_loop(self) -> None:
        while True:
            await asyncio.sleep(UPDATE_CHECK_S)
            try:
                self.check_updates()
            except Exception:  # an update is a courtesy: it must never stop the service
                log.exception("OCPI ActiveChargingProfile updates failed")
