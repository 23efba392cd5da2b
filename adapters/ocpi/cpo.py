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
The parts, one job each: ``cpo_base`` (state, outbox), ``cpo_credentials``, ``cpo_sessions``,
``cpo_profiles``; ``OcpiCpo`` adds the lifecycle and the routes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web

from adapters.http_body import BadBody, error_response, token_matches
from adapters.ocpi.cpo_base import (
    Handler,
    token_hash,
)
from adapters.ocpi.cpo_profiles import CpoProfiles
from adapters.ocpi.messages import (
    VERSION,
    OcpiError,
    decode_token,
    ocpi_response,
    parse_datetime,
    parse_url,
)
from balancer.model import Config

__all__ = ["OcpiCpo"]

log = logging.getLogger("balancer.ocpi")
class OcpiCpo(CpoProfiles):
    """The CPO side of OCPI for one service (see the module docstring)."""

    # ----------------------------------------------------------------- lifecycle
    def update_config(self, config: Config) -> None:
        """A reloaded config (same sites): new tokens A, chargers, locations and settings apply."""
        assert config.ocpi is not None
        self.config, self.settings = config, config.ocpi
        self._charger_site = {c.id: s.id for s in config.sites for c in s.chargers}

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

    async def start(self) -> None:
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        self._tasks.append(asyncio.create_task(self._deliver_loop(), name="ocpi-outbox"))
        self._tasks.append(asyncio.create_task(self._update_loop(), name="ocpi-updates"))

    async def stop(self) -> None:
        self._stopping = True  # cluster mode: the callbacks under way are let finish and marked
        self._wake.set()
        if self.shared is not None and self._tasks:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._tasks[0]), 11.0)
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
        r.add_put(f"{base}/sessions/{{session_id}}/charging_preferences", self._guard(self._on_session("preferences")))
        r.add_put(f"{base}/chargingprofiles/{{session_id}}", self._guard(self._on_session("profile_put")))
        r.add_get(f"{base}/chargingprofiles/{{session_id}}", self._guard(self._on_session("profile_get")))
        r.add_delete(f"{base}/chargingprofiles/{{session_id}}", self._guard(self._on_session("profile_delete")))

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

    # ----------------------------------------------------------------- session commands
    def _on_session(self, op: str) -> Callable[[web.Request, str | None], Awaitable[web.Response]]:
        """The HTTP handler of a command on a session: run here, or in a cluster by the owner of the
        session's site (``forward``), which holds the session and sends the callback."""

        async def handler(request: web.Request, party: str | None) -> web.Response:
            session_id = request.match_info["session_id"]
            message = {"op": op, "party": party, "session_id": session_id,
                       "body": await self._body(request) if request.method == "PUT" else None,
                       "query": dict(request.query)}
            site_id = self._site_of_session(session_id)
            if self.forward is not None and site_id is not None and not self.controls(site_id):
                reply = await self.forward(site_id, message)
            else:
                reply = await self.command(message)
            return ocpi_response(request, reply["data"], status=reply["status"], status_code=reply["status_code"],
                                 message=reply["message"], field=reply["field"])

        return handler

    async def command(self, message: dict[str, Any]) -> dict[str, Any]:
        """Run a session command; the reply: the envelope's ``data``, ``status_code``, ``message``,
        ``field`` and the HTTP ``status`` (JSON, so an instance forwarding it can answer with it)."""
        party = message.get("party")
        if party is not None and party not in self.parties and self.refresh("ocpi:party:"):
            self._load_parties()  # a party that registered with another instance just now
        op = {"preferences": self.preferences, "profile_put": self.profile_put, "profile_get": self.profile_get,
              "profile_delete": self.profile_delete}[message["op"]]
        try:
            data = await op(party, str(message["session_id"]), message.get("body"), dict(message.get("query") or {}))
        except OcpiError as exc:
            self.counters["ocpi_rejected"] += 1
            return {"status": exc.http, "status_code": exc.status_code, "message": exc.message, "field": exc.field,
                    "data": None}
        return {"status": 200, "status_code": 1000, "message": "Success", "field": None, "data": data}

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
                party = self._by_token.get(token_hash(candidate))
                if party is not None:
                    break
            if party is None and not (token_a and any(self._token_a(c) or token_hash(c) in self._pending
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
