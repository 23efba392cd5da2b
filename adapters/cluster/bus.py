"""Gateways and owners on NATS: the instance holding a charger's websocket is its *gateway*, the
instance controlling its site its *owner* (DESIGN 3.12). Core NATS (no JetStream), JSON bodies
(``adapters.cluster.wire``); ``<site>`` and ``<instance>`` are subject tokens (``wire.token``).

``balancer.site.<site>.events`` (publish, gateway -> owner)
    ``{"gw": instance, "event": encoded event}``: every event of a charger (connection, status,
    sessions, meter values, profile results), and the admin API's needs (``"gw": null``: they
    say nothing of where the charger is connected). Only the owner listens.
``balancer.site.<site>.sync`` (publish, new owner -> every gateway)
    ``{}``: each gateway answers on the events subject with the state of the site's chargers it
    holds (online, status, the transaction running or the last one ended), so the new owner knows
    who is connected where without waiting for them.
``balancer.site.<site>.changed`` (publish, any instance -> owner)
    ``{"keys": [...]}``: store keys of the site written in PostgreSQL by another instance (a
    forecast or a heartbeat the grid operator sent there): the owner reads them again.
``balancer.site.<site>.view`` (request/reply, any instance -> owner)
    ``{"kind": "site" | "plan"}`` -> ``{"view": <the site or plan JSON of the admin API>}``: an
    admin read on an instance that does not control the site is answered with the owner's live
    view (timeout ``VIEW_TIMEOUT_S``); without an answer the asking instance serves the owner's
    last snapshot from PostgreSQL (at most ``PERSIST_EVERY_S`` old).
``balancer.site.<site>.meter`` (request/reply, any instance -> owner)
    ``{"current_a": [L1, L2, L3], "at": {"$dt": ...}}`` -> ``{"status": HTTP status, "body": {...}}``:
    a site meter reading pushed over HTTP to an instance that does not control the site, checked
    there and taken by the owner, whose answer is the HTTP client's (timeout ``METER_TIMEOUT_S``).
``balancer.site.<site>.ocpi`` (request/reply, any instance -> owner)
    ``{"op", "party", "session_id", "body", "query"}`` -> ``{"status", "status_code", "message",
    "data", "field"}``: an OCPI command on a session of the site (a cap, its reading or clearing,
    charging preferences) run by the owner, which also sends its callback (timeout ``OCPI_TIMEOUT_S``);
    ``{"op": "site"}`` -> ``{..., "data": {"location", "sessions"}}``: the site's part of the OCPI
    Locations and Sessions lists, from the owner's live view (timeout ``VIEW_TIMEOUT_S``).
``balancer.gw.<instance>.push`` (request/reply, owner -> gateway)
    ``{"site", "epoch", "fid", "phase": 1, "schedules": [...]}`` -> ``{"ok": bool}``: phase 1 of a
    fan-out (``adapters.ocpp.fanout.decreases``) on that gateway's chargers, answered once the
    decreases are held (timeout ``PHASE1_WAIT_S`` + 4 ms per charger + ``SLACK_S``); then
    ``{"site", "epoch", "fid", "phase": 2}`` -> ``{"ok": true}`` sends the increases it kept
    (timeout ``ocpp.response_timeout_s`` + ``SLACK_S``). The owner sends phase 2 to no gateway until
    every gateway acknowledged phase 1, so the sum stays within capacity during the change across
    instances too. A gateway refuses (``ok: false``) a command whose ``epoch`` is below the highest it
    has seen for the site: an owner that lost the site can command no charger.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError

from adapters.cluster.wire import decode, dumps, encode, loads, token
from adapters.ocpp.fanout import PHASE1_WAIT_PER_CHARGER_S, PHASE1_WAIT_S, decreases, increases
from balancer.events import (
    ChargerOnline,
    ChargerSchedule,
    ChargerStatus,
    Event,
    SessionStarted,
    SessionStopped,
)

if TYPE_CHECKING:
    from adapters.ocpp.link import ChargerLink
    from adapters.ocpp.server import OcppServer

__all__ = ["GONE", "METER_TIMEOUT_S", "OCPI_TIMEOUT_S", "SLACK_S", "VIEW_TIMEOUT_S", "Answer", "Bus"]

log = logging.getLogger(__name__)

SLACK_S = 1.0
"""Added to every request's timeout for the trip over NATS and the gateway's own work."""
GONE = "gone"
"""``Bus.command``'s answer when no instance listens on the gateway's subject: it is not running."""
VIEW_TIMEOUT_S = 1.0
"""How long an admin read waits for the owner's live view before it serves the stored snapshot."""
ASK_RETRY_S = 0.05
"""How soon a request to a site's owner that found no responder is sent again, within its timeout."""
METER_TIMEOUT_S = 2.0
"""How long a forwarded meter reading waits for the owner's answer (then 503 to the meter)."""
OCPI_TIMEOUT_S = 3.0
"""How long a forwarded OCPI command waits for the owner's answer (it writes to PostgreSQL first)."""
KEEP_SECOND_S = 60.0
"""A gateway forgets the increases of a fan-out whose phase 2 did not come within this time."""


Answer = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]
"""The owner's side of an ``ask``: (site id, request body) -> reply body."""


class Bus:
    """This instance's NATS side, as gateway (always) and as owner (for the sites it controls).

    ``on_event(site_id, gateway, event)`` gets the events of owned sites; ``on_changed(site_id,
    keys)`` the keys other instances wrote.
    """

    def __init__(self, url: str, instance_id: str, ocpp: OcppServer, *,
                 on_event: Callable[[str, str | None, Event], None],
                 on_changed: Callable[[str, list[str]], None], response_timeout_s: float,
                 on_view: Callable[[str, str], dict[str, Any] | None] = lambda site_id, kind: None,
                 answers: dict[str, Answer] | None = None) -> None:
        self.url = url
        self.instance_id = instance_id
        self.ocpp = ocpp
        self.on_event = on_event
        self.on_changed = on_changed
        self.on_view = on_view
        self.answers = answers or {}
        """Request/reply subjects the owner of a site answers (``meter``, ``ocpi``), see ``ask``."""
        self.response_timeout_s = response_timeout_s
        self.nc: Client | None = None
        self._owned: dict[str, list[Subscription]] = {}
        self._epochs: dict[str, int] = {}
        self._seconds: dict[str, tuple[float, list[tuple[ChargerLink, ChargerSchedule]]]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.counters = {"events_out": 0, "events_in": 0, "commands_in": 0, "commands_refused": 0,
                         "bad_messages": 0, "views_served": 0, "views_forwarded": 0, "views_unanswered": 0,
                         "asks_served": 0, "asks_forwarded": 0, "asks_unanswered": 0}

    async def start(self) -> None:
        self.nc = await nats.connect(self.url, name=f"balancer:{self.instance_id}", max_reconnect_attempts=-1,
                                     reconnect_time_wait=0.5, connect_timeout=3)
        await self.nc.subscribe(f"balancer.gw.{token(self.instance_id)}.push", cb=self._spawned(self._push))
        await self.nc.subscribe("balancer.site.*.sync", cb=self._sync)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self.nc is not None:
            with contextlib.suppress(NatsError, OSError, TimeoutError):
                await asyncio.wait_for(self.nc.drain(), 3)

    def _spawned(self, handler: Callable[[Msg], Any]) -> Callable[[Msg], Any]:
        """Each message in a task of its own: a gateway serves many owners' fan-outs at once."""
        async def cb(msg: Msg) -> None:
            task = asyncio.create_task(handler(msg))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return cb

    def _publish(self, subject: str, body: dict[str, Any]) -> None:
        if self.nc is None:
            return
        task = asyncio.create_task(self.nc.publish(subject, dumps(body)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ----------------------------------------------------------------- gateway side
    def publish_event(self, site_id: str, event: Event, gateway: str | None) -> None:
        self.counters["events_out"] += 1
        self._publish(f"balancer.site.{token(site_id)}.events", {"gw": gateway, "event": encode(event)})

    def site_changed(self, site_id: str, keys: list[str]) -> None:
        self._publish(f"balancer.site.{token(site_id)}.changed", {"keys": keys})

    async def _sync(self, msg: Msg) -> None:
        """A new owner asks what this gateway holds of its site: answer with the chargers' state."""
        site = msg.subject.split(".")[2]
        now = self.ocpp.now()
        for link in list(self.ocpp.links.values()):
            site_id = self.ocpp.site_of.get(link.charger_id, "")
            if token(site_id) != site or not link.connected:
                continue
            cid = link.charger_id
            if link.pusher.ready:
                self.publish_event(site_id, ChargerOnline(cid, now, link.dialect.subprotocol), self.instance_id)
            self.publish_event(site_id, ChargerStatus(cid, now, link.status), self.instance_id)
            if link.transaction_id is not None:
                self.publish_event(site_id, SessionStarted(cid, now, link.transaction_id), self.instance_id)
            elif link.ended_tx is not None:
                self.publish_event(site_id, SessionStopped(cid, now, link.ended_tx), self.instance_id)

    async def _push(self, msg: Msg) -> None:
        try:
            body = loads(msg.data)
            site_id, epoch, fid, phase = str(body["site"]), int(body["epoch"]), str(body["fid"]), int(body["phase"])
            schedules = [decode(s) for s in body.get("schedules", [])]
        except (ValueError, KeyError, TypeError) as exc:
            self.counters["bad_messages"] += 1
            log.warning("bad push command on NATS: %s", exc)
            return
        self.counters["commands_in"] += 1
        if epoch < self._epochs.get(site_id, 0):
            self.counters["commands_refused"] += 1
            log.warning("site %s: refused a command of epoch %d (seen %d): its sender lost the site", site_id,
                        epoch, self._epochs[site_id])
            await msg.respond(dumps({"ok": False, "why": "stale epoch"}))
            return
        self._epochs[site_id] = epoch
        ok = await (self.phase1(fid, schedules) if phase == 1 else self.phase2(fid))
        with contextlib.suppress(NatsError):
            await msg.respond(dumps({"ok": ok}))

    async def phase1(self, fid: str, schedules: list[ChargerSchedule]) -> bool:
        """The decreases on the chargers held here; the increases kept for ``phase2``."""
        now = time.monotonic()
        for key in [k for k, (at, _) in self._seconds.items() if now - at > KEEP_SECOND_S]:
            del self._seconds[key]
        items = []
        for schedule in schedules:
            link = self.ocpp.links.get(schedule.charger_id)
            if link is not None and link.connected and link.pusher.offer(schedule) != "none":
                items.append((link, schedule))
        second = await decreases(items)
        if second is None:
            return False
        self._seconds[fid] = (now, second)
        return True

    async def phase2(self, fid: str) -> bool:
        _, second = self._seconds.pop(fid, (0.0, []))
        await increases(second)
        return True

    # ----------------------------------------------------------------- owner side
    async def own(self, site_id: str) -> None:
        """Listen to the site's events and changes, then ask every gateway for its chargers."""
        if self.nc is None or site_id in self._owned:
            return
        site = token(site_id)
        self._owned[site_id] = [
            await self.nc.subscribe(f"balancer.site.{site}.events", cb=functools.partial(self._event, site_id)),
            await self.nc.subscribe(f"balancer.site.{site}.changed", cb=functools.partial(self._changed, site_id)),
            await self.nc.subscribe(f"balancer.site.{site}.view", cb=functools.partial(self._view, site_id)),
            *[await self.nc.subscribe(f"balancer.site.{site}.{kind}", cb=self._spawned(
                functools.partial(self._answer, site_id, answer))) for kind, answer in self.answers.items()],
        ]
        with contextlib.suppress(NatsError, TimeoutError):
            await self.nc.flush(timeout=2)  # subscribed at the server before anyone is told
        await self.nc.publish(f"balancer.site.{site}.sync", b"{}")

    async def disown(self, site_id: str) -> None:
        """Stop answering for the site; flushed, so a request sent after this returns finds no
        responder here ("no responders" at once) rather than waiting for a reply that never comes."""
        for sub in self._owned.pop(site_id, []):
            with contextlib.suppress(NatsError):
                await sub.unsubscribe()
        if self.nc is not None:
            with contextlib.suppress(NatsError, TimeoutError):
                await self.nc.flush(timeout=2)

    async def _event(self, site_id: str, msg: Msg) -> None:
        try:
            body = loads(msg.data)
            gateway, event = body["gw"], decode(body["event"])
            if gateway is not None and not isinstance(gateway, str):
                raise ValueError("gw must be an instance id or null")
        except (ValueError, KeyError, TypeError) as exc:
            self.counters["bad_messages"] += 1
            log.warning("bad event on NATS for site %s: %s", site_id, exc)
            return
        self.counters["events_in"] += 1
        self.on_event(site_id, gateway, event)

    async def _changed(self, site_id: str, msg: Msg) -> None:
        try:
            keys = [str(k) for k in loads(msg.data)["keys"]]
        except (ValueError, KeyError, TypeError):
            self.counters["bad_messages"] += 1
            return
        self.on_changed(site_id, keys)

    async def _view(self, site_id: str, msg: Msg) -> None:
        try:
            kind = str(loads(msg.data)["kind"])
        except (ValueError, KeyError, TypeError):
            self.counters["bad_messages"] += 1
            return
        view = self.on_view(site_id, kind)
        self.counters["views_served"] += view is not None
        with contextlib.suppress(NatsError):
            await msg.respond(dumps({"view": view}))

    async def view(self, site_id: str, kind: str) -> dict[str, Any] | None:
        """The owner's live site or plan JSON; None when no owner answers in ``VIEW_TIMEOUT_S``."""
        reply = await self._request(site_id, "view", {"kind": kind}, VIEW_TIMEOUT_S)
        view = reply.get("view") if isinstance(reply, dict) else None
        if not isinstance(view, dict):
            log.debug("site %s: no live %s view from its owner: %s", site_id, kind, reply)
            self.counters["views_unanswered"] += 1
            return None
        self.counters["views_forwarded"] += 1
        return view

    async def _answer(self, site_id: str, answer: Answer, msg: Msg) -> None:
        try:
            body = loads(msg.data)
        except ValueError:
            self.counters["bad_messages"] += 1
            return
        reply = await answer(site_id, body)
        self.counters["asks_served"] += 1
        with contextlib.suppress(NatsError):
            await msg.respond(dumps(reply))

    async def ask(self, site_id: str, kind: str, body: dict[str, Any], timeout: float) -> dict[str, Any] | str:
        """The owner's reply to a request on ``balancer.site.<site>.<kind>``, or why there is none."""
        answer = await self._request(site_id, kind, body, timeout)
        self.counters["asks_forwarded" if isinstance(answer, dict) else "asks_unanswered"] += 1
        return answer

    async def _request(self, site_id: str, kind: str, body: dict[str, Any], timeout: float) -> dict[str, Any] | str:
        """The owner's reply (a JSON object) on ``balancer.site.<site>.<kind>``, or why there is none.

        A request that finds no responder is sent again every ``ASK_RETRY_S`` within ``timeout``:
        an owner's new subscription reaches the server the asker is on a moment later (and a
        take-over takes seconds)."""
        if self.nc is None:
            return "this instance is not connected to NATS"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            try:
                reply = await self.nc.request(f"balancer.site.{token(site_id)}.{kind}", dumps(body),
                                              timeout=max(deadline - loop.time(), 0.01))
                answer = loads(reply.data)
                return answer if isinstance(answer, dict) else "the site's owner answered nonsense"
            except NoRespondersError:
                if loop.time() + ASK_RETRY_S >= deadline:
                    return "no instance answers for the site (a take-over is under way)"
                await asyncio.sleep(ASK_RETRY_S)
            except TimeoutError:
                return f"the site's owner did not answer within {timeout:g} s"
            except (NatsError, ValueError) as exc:
                return f"the site's owner could not be asked: {exc!r}"

    async def command(self, gateway: str, site_id: str, epoch: int, fid: str, phase: int,
                      schedules: list[ChargerSchedule]) -> bool | str:
        """Run a phase of a fan-out on ``gateway`` (this instance itself without NATS); True when
        done, False when not (refused, timed out), ``GONE`` when that instance does not run."""
        if gateway == self.instance_id:
            return await (self.phase1(fid, schedules) if phase == 1 else self.phase2(fid))
        if self.nc is None:
            return False
        timeout = (PHASE1_WAIT_S + PHASE1_WAIT_PER_CHARGER_S * len(schedules) if phase == 1
                   else self.response_timeout_s) + SLACK_S
        body = {"site": site_id, "epoch": epoch, "fid": fid, "phase": phase,
                "schedules": [encode(s) for s in schedules]}
        try:
            reply = await self.nc.request(f"balancer.gw.{token(gateway)}.push", dumps(body), timeout=timeout)
            return bool(loads(reply.data).get("ok"))
        except NoRespondersError:
            return GONE
        except (NatsError, TimeoutError, ValueError) as exc:
            log.warning("site %s: phase %d on gateway %s failed: %r", site_id, phase, gateway, exc)
            return False
