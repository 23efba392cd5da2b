"""A small OCPI 2.2.1 party (eMSP/SCSP side) for tests, ``balancer demo`` and integrators.

It registers with a CPO (token A -> B -> C) or lets the CPO register with it, sets charging
preferences, PUTs/GETs/DELETEs charging profiles, and runs the receiving end of the callbacks:
``POST {base}/results/{request id}`` (ChargingProfileResult, ActiveChargingProfileResult,
ClearProfileResult) and ``PUT {base}/ocpi/2.2.1/chargingprofiles/{session_id}``
(ActiveChargingProfile updates, the Sender interface). ``callbacks_down`` makes the callback
endpoints answer 503, to see the CPO retry from its outbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import uuid
from datetime import UTC, datetime
from typing import Any

import aiohttp
from aiohttp import web

from adapters.ocpi.messages import VERSION, decode_token, encode_token, envelope, iso

__all__ = ["OcpiParty"]


class OcpiParty:
    """An eMSP/SCSP on ``http://127.0.0.1:{port}`` (see the module docstring)."""

    def __init__(self, *, country_code: str = "DE", party_id: str = "SCS", role: str = "SCSP",
                 host: str = "127.0.0.1", port: int = 0) -> None:
        self.country_code = country_code
        self.party_id = party_id
        self.role = role
        self.host = host
        self.port = port
        self.token_b = secrets.token_urlsafe(24)
        """What the CPO must call us with (we hand it over in our credentials)."""
        self.token_a = secrets.token_urlsafe(24)
        """For a CPO that registers with us (``POST /api/v1/ocpi/register``)."""
        self.token_c: str | None = None
        """What we call the CPO with, once registered."""
        self.cpo_endpoints: dict[str, str] = {}
        self.results: dict[str, dict[str, Any]] = {}
        self.result_posts: dict[str, int] = {}
        """How many times each result came (a CPO sends each once)."""
        self.updates: list[tuple[str, dict[str, Any]]] = []
        self.bad_auth = 0
        self.callbacks_down = False
        self.results_event = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._http: aiohttp.ClientSession | None = None

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}"

    # ----------------------------------------------------------------- our server
    async def start(self) -> OcpiParty:
        app = web.Application()
        app.router.add_get("/ocpi/versions", self._versions)
        app.router.add_get(f"/ocpi/{VERSION}", self._details)
        app.router.add_post(f"/ocpi/{VERSION}/credentials", self._credentials)
        app.router.add_post("/results/{request_id}", self._result)
        app.router.add_put(f"/ocpi/{VERSION}/chargingprofiles/{{session_id}}", self._update)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        sockets = getattr(site._server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1]
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        return self

    async def stop(self) -> None:
        if self._http is not None:
            await self._http.close()
        if self._runner is not None:
            await self._runner.cleanup()

    def _authorized(self, request: web.Request, *tokens: str | None) -> bool:
        given = decode_token(request.headers.get("Authorization"))
        ok = any(t is not None and t in given for t in tokens)
        if not ok:
            self.bad_auth += 1
        return ok

    def _credentials_body(self, token: str) -> dict[str, Any]:
        return {"token": token, "url": f"{self.base}/ocpi/versions",
                "roles": [{"role": self.role, "party_id": self.party_id, "country_code": self.country_code,
                           "business_details": {"name": f"Simulated {self.role}"}}]}

    async def _versions(self, request: web.Request) -> web.Response:
        if not self._authorized(request, self.token_b, self.token_a):
            return web.json_response(envelope(None, 2000, "unauthorized"), status=401)
        return web.json_response(envelope([{"version": VERSION, "url": f"{self.base}/ocpi/{VERSION}"}]))

    async def _details(self, request: web.Request) -> web.Response:
        if not self._authorized(request, self.token_b, self.token_a):
            return web.json_response(envelope(None, 2000, "unauthorized"), status=401)
        b = f"{self.base}/ocpi/{VERSION}"
        return web.json_response(envelope({"version": VERSION, "endpoints": [
            {"identifier": "credentials", "role": "RECEIVER", "url": f"{b}/credentials"},
            {"identifier": "chargingprofiles", "role": "SENDER", "url": f"{b}/chargingprofiles/"}]}))

    async def _credentials(self, request: web.Request) -> web.Response:
        """A CPO registers with us: it brings our token A and its token B; we answer our token C."""
        if not self._authorized(request, self.token_a):
            return web.json_response(envelope(None, 2000, "unauthorized"), status=401)
        body = await request.json()
        self.token_c = body["token"]  # what we call the CPO with
        await self._read_cpo_endpoints(body["url"])
        self.token_b = secrets.token_urlsafe(24)
        return web.json_response(envelope(self._credentials_body(self.token_b)))

    async def _result(self, request: web.Request) -> web.Response:
        if self.callbacks_down:
            return web.json_response(envelope(None, 3000, "down"), status=503)
        if not self._authorized(request, self.token_b):
            return web.json_response(envelope(None, 2000, "unauthorized"), status=401)
        request_id = request.match_info["request_id"]
        self.results[request_id] = await request.json()
        self.result_posts[request_id] = self.result_posts.get(request_id, 0) + 1
        self.results_event.set()
        return web.json_response(envelope())

    async def _update(self, request: web.Request) -> web.Response:
        if self.callbacks_down:
            return web.json_response(envelope(None, 3000, "down"), status=503)
        if not self._authorized(request, self.token_b):
            return web.json_response(envelope(None, 2000, "unauthorized"), status=401)
        self.updates.append((request.match_info["session_id"], await request.json()))
        return web.json_response(envelope())

    # ----------------------------------------------------------------- calling the CPO
    def _headers(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": encode_token(token or self.token_c or ""), "X-Request-ID": str(uuid.uuid4()),
                "X-Correlation-ID": str(uuid.uuid4())}

    async def call(self, method: str, url: str, body: Any = None, *, token: str | None = None) -> tuple[int, Any]:
        """One request to the CPO; (HTTP status, parsed body)."""
        assert self._http is not None
        async with self._http.request(method, url, json=body, headers=self._headers(token)) as response:
            text = await response.text()
            try:
                return response.status, await response.json(content_type=None)
            except ValueError:
                return response.status, text

    async def _read_cpo_endpoints(self, versions_url: str, token: str | None = None) -> tuple[int, Any]:
        """Read the CPO's versions and details; (HTTP status, body) of the first call that failed, or (200, None)."""
        status, versions = await self.call("GET", versions_url, token=token)
        if status != 200:
            return status, versions
        url = next(v["url"] for v in versions["data"] if v["version"] == VERSION)
        status, details = await self.call("GET", url, token=token)
        if status != 200:
            return status, details
        self.cpo_endpoints = {f"{e['identifier']}:{e['role']}": e["url"] for e in details["data"]["endpoints"]}
        return 200, None

    async def register(self, versions_url: str, token_a: str) -> tuple[int, Any]:
        """Register with the CPO: read its endpoints with token A, POST our credentials (token B),
        keep its token C."""
        status, failed = await self._read_cpo_endpoints(versions_url, token_a)
        if status != 200:
            return status, failed
        status, body = await self.call("POST", self.cpo_endpoints["credentials:RECEIVER"],
                                       self._credentials_body(self.token_b), token=token_a)
        if status == 200 and body.get("status_code") == 1000:
            self.token_c = body["data"]["token"]
        return status, body

    def _profiles_url(self, session_id: str) -> str:
        return f"{self.cpo_endpoints['chargingprofiles:RECEIVER'].rstrip('/')}/{session_id}"

    def new_response_url(self) -> tuple[str, str]:
        request_id = uuid.uuid4().hex
        return request_id, f"{self.base}/results/{request_id}"

    async def put_profile(self, session_id: str, limit: float, *, unit: str = "A",
                          periods: list[dict[str, Any]] | None = None, start: datetime | None = None,
                          duration_s: int | None = None) -> tuple[int, Any, str]:
        """PUT a cap; (HTTP status, body, the request id of its response_url)."""
        request_id, url = self.new_response_url()
        profile: dict[str, Any] = {"charging_rate_unit": unit,
                                   "charging_profile_period": periods or [{"start_period": 0, "limit": limit}]}
        if start is not None:
            profile["start_date_time"] = iso(start)
        if duration_s is not None:
            profile["duration"] = duration_s
        status, body = await self.call("PUT", self._profiles_url(session_id),
                                       {"charging_profile": profile, "response_url": url})
        return status, body, request_id

    async def get_profile(self, session_id: str, duration_s: int = 3600) -> tuple[int, Any, str]:
        request_id, url = self.new_response_url()
        status, body = await self.call("GET", f"{self._profiles_url(session_id)}?duration={duration_s}"
                                              f"&response_url={url}")
        return status, body, request_id

    async def delete_profile(self, session_id: str) -> tuple[int, Any, str]:
        request_id, url = self.new_response_url()
        status, body = await self.call("DELETE", f"{self._profiles_url(session_id)}?response_url={url}")
        return status, body, request_id

    async def put_preferences(self, session_id: str, *, departure: datetime | None, energy_kwh: float | None,
                              profile_type: str = "REGULAR") -> tuple[int, Any]:
        body: dict[str, Any] = {"profile_type": profile_type}
        if departure is not None:
            body["departure_time"] = iso(departure)
        if energy_kwh is not None:
            body["energy_need"] = energy_kwh
        url = f"{self.cpo_endpoints['sessions:SENDER'].rstrip('/')}/{session_id}/charging_preferences"
        return await self.call("PUT", url, body)

    async def sessions(self) -> list[dict[str, Any]]:
        _, body = await self.call("GET", self.cpo_endpoints["sessions:SENDER"])
        return list(body["data"])

    async def locations(self) -> tuple[int, Any]:
        return await self.call("GET", self.cpo_endpoints["locations:SENDER"])

    async def wait_result(self, request_id: str, timeout: float = 10.0) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while request_id not in self.results:
            if loop.time() > end:
                raise TimeoutError(f"no callback for {request_id} in {timeout} s")
            self.results_event.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.results_event.wait(), timeout=max(0.01, end - loop.time()))
        return self.results[request_id]


def now_utc() -> datetime:
    return datetime.now(UTC)
