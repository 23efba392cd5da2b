"""OCPI CPO: versions, details and Credentials (POST/PUT/GET/DELETE), and ``register_with``."""

from __future__ import annotations

import logging
import secrets
from typing import Any

import aiohttp
from aiohttp import web

from adapters.ocpi.cpo_base import (
    CpoBase,
    token_hash,
)
from adapters.ocpi.messages import (
    VERSION,
    CredentialsIn,
    OcpiError,
    decode_token,
    iso,
    ocpi_response,
    parse_credentials,
    parse_url,
)

__all__ = ["CpoCredentials"]

log = logging.getLogger("balancer.ocpi")
class CpoCredentials(CpoBase):
    """Versions, version details and the credentials handshake (token A -> B -> C)."""

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
        if token_hash(token_a) in self._registering:
            raise OcpiError("a registration with this token A is already running", status_code=2000, http=405)
        self._registering.add(token_hash(token_a))
        try:
            endpoints, version_url = await self._fetch_endpoints(creds.url, creds.token)
            if token_hash(token_a) in self._used_a:
                raise OcpiError("token A already used", status_code=2000, http=401)
            record = self._register(creds, endpoints, version_url, token_out=creds.token)
            self._used_a.add(token_hash(token_a))
            self.store.put_json("ocpi:token_a_used", sorted(self._used_a))
        finally:
            self._registering.discard(token_hash(token_a))
        log.info("OCPI party %s registered", record["key"])
        return ocpi_response(request, self._our_credentials(record["token_in"], self._base(request)))

    async def credentials_put(self, request: web.Request, party: str | None) -> web.Response:
        assert party is not None
        creds = parse_credentials(await self._body(request))
        endpoints, version_url = await self._fetch_endpoints(creds.url, creds.token)
        old = self.parties.pop(party)
        self._by_token.pop(token_hash(old["token_in"]), None)
        self.store.delete_json(f"ocpi:party:{party}", flush=False)
        record = self._register(creds, endpoints, version_url, token_out=creds.token)
        return ocpi_response(request, self._our_credentials(record["token_in"], self._base(request)))

    async def credentials_get(self, request: web.Request, party: str | None) -> web.Response:
        assert party is not None
        return ocpi_response(request, self._our_credentials(self.parties[party]["token_in"], self._base(request)))

    async def credentials_delete(self, request: web.Request, party: str | None) -> web.Response:
        assert party is not None
        old = self.parties.pop(party)
        self._by_token.pop(token_hash(old["token_in"]), None)
        self.store.delete_json(f"ocpi:party:{party}")
        log.info("OCPI party %s unregistered", party)
        return ocpi_response(request)

    def _register(self, creds: CredentialsIn, endpoints: list[dict[str, Any]], version_url: str, *,
                  token_out: str, token_in: str | None = None) -> dict[str, Any]:
        key = creds.key
        old = self.parties.get(key)
        if old is not None:
            self._by_token.pop(token_hash(old["token_in"]), None)
        record: dict[str, Any] = {"key": key, "token_in": token_in or secrets.token_urlsafe(32), "token_out": token_out,
                  "versions_url": creds.url, "version_url": version_url, "endpoints": endpoints,
                  "roles": list(creds.roles), "registered_at": iso(self.now())}
        self.parties[key] = record
        self._by_token[token_hash(record["token_in"])] = key
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

    async def register_with(self, versions_url: str, token_a: str, base_url: str) -> dict[str, Any]:
        """Register with a party (we are the one that calls): its token A -> our token B -> its token C."""
        versions_url = parse_url(versions_url, "versions_url")
        endpoints, version_url = await self._fetch_endpoints(versions_url, token_a)
        url = next((e["url"] for e in endpoints if e["identifier"] == "credentials"), None)
        if url is None:
            raise OcpiError("the party has no credentials endpoint", "versions_url", status_code=3003, http=200)
        token_b = secrets.token_urlsafe(32)
        assert self._http is not None
        self._pending.add(token_hash(token_b))  # the party reads our versions with it before it answers
        try:
            async with self._http.post(url, json=self._our_credentials(token_b, base_url),
                                       headers=self._headers(token_a)) as response:
                body = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise OcpiError(f"cannot POST our credentials to {url}: {exc!r}", "versions_url", status_code=3001,
                            http=200) from None
        finally:
            self._pending.discard(token_hash(token_b))
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
