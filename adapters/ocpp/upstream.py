"""Local controller mode (DESIGN 3.11): each charger forwarded to the operator's CSMS, balanced here.

For each connected charger a ``Relay`` holds a websocket to ``{url}/{upstream_id or id}`` with the
charger's subprotocol and passes frames both ways with their message ids unchanged. It sits at the
charger connection's frame boundary (``FrameGuard``): ``inbound`` sees every frame from the charger
before the ``ocpp`` package does, ``outbound`` every frame the package writes to the charger.

- A charger CALL goes to the CSMS and, as in standalone mode, to the balancer's handlers, whose
  answer is held back; the charger gets the CSMS's answer. A 1.6 StartTransaction is observed once
  the CSMS has answered, so the balancer knows the session by the CSMS's transaction id.
- The CSMS's CALLs go to the charger and the charger's answers back, except station maximum
  profiles, which are combined with the balancer's (``upstream_frames``) and answered Accepted.
- The balancer's own CALLs go to the charger with the package's uuid4 ids; answers to ids the CSMS
  did not send are the balancer's, and never leave for the CSMS.
- No answer from the CSMS within ``answer_timeout_s``, or no CSMS at all: the balancer's held
  answer goes to the charger (Authorize and StartTransaction per ``offline_authorize``); the
  charger's calls wait in the persisted queue (``upstream_queue``) and go out in order, one at a
  time, when the CSMS is back. Until the queue is empty new calls join its tail, so the CSMS sees
  everything in the order the charger sent it. Transaction ids the balancer gave are mapped to the
  CSMS's from then on. Reconnects back off exponentially with full jitter.
"""


from __future__ import annotations

import ssl
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

from adapters.ocpp.upstream_connection import UPSTREAM_COUNTERS
from adapters.ocpp.upstream_queue import UpstreamQueue
from adapters.ocpp.upstream_relay import Relay
from adapters.store import private_dir
from balancer.model import UpstreamSettings

if TYPE_CHECKING:
    from adapters.ocpp.guard import FrameGuard
    from adapters.ocpp.link import ChargerLink
    from adapters.ocpp.server import OcppServer

__all__ = ["Relay", "UpstreamHub"]


class UpstreamHub:
    """The relays of all connected chargers, their queue and one HTTP client session."""

    def __init__(self, server: OcppServer) -> None:
        self.server = server
        assert server.config.ocpp.upstream is not None
        self._settings = server.config.ocpp.upstream
        self.queue = UpstreamQueue(private_dir(Path(server.config.state_dir)) / "upstream.sqlite")
        self.relays: dict[str, Relay] = {}
        self._session: aiohttp.ClientSession | None = None
        self._ssl: tuple[str, ssl.SSLContext] | None = None
        self.counters = server.counters
        """The server's: ``balancer_ocpp_upstream_*_total`` in /metrics."""
        for name in UPSTREAM_COUNTERS:
            self.counters.setdefault(name, 0)

    @property
    def settings(self) -> UpstreamSettings:
        """The newest ``ocpp.upstream`` (a reload's keys apply to the next call or connection); a
        reload that drops the section keeps the last one: the mode itself changes at a restart."""
        settings = self.server.config.ocpp.upstream
        if settings is not None:
            self._settings = settings
        return self._settings

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # No pool limit: one long-lived websocket per charger (aiohttp's default of 100 would
            # leave the 101st charger waiting for a free connection forever).
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        return self._session

    def ssl_context(self) -> ssl.SSLContext | bool:
        """TLS for ``wss://``: the system's CAs, and ``ca_file``'s when set (True: aiohttp's default)."""
        ca_file = self.settings.ca_file
        if not ca_file:
            return True
        if self._ssl is None or self._ssl[0] != ca_file:
            context = ssl.create_default_context()
            context.load_verify_locations(cafile=ca_file)
            self._ssl = (ca_file, context)
        return self._ssl[1]

    def attach(self, link: ChargerLink, guard: FrameGuard, authorization: str | None) -> Relay:
        """A charger connected: its relay, connecting to the CSMS in the background."""
        old = self.relays.get(link.charger_id)
        if old is not None:
            old.detach()
        relay = Relay(self, link, guard, authorization)
        self.relays[link.charger_id] = relay
        return relay

    def status(self, charger_id: str) -> dict[str, Any]:
        relay = self.relays.get(charger_id)
        return {"upstream_connected": relay is not None and relay.ws is not None,
                "upstream_queued": self.queue.size(charger_id)}

    async def close(self) -> None:
        for relay in list(self.relays.values()):
            await relay.close()
        if self._session is not None:
            await self._session.close()
        self.queue.close()
