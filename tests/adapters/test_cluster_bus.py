"""The NATS bus on a real nats-server: epoch fencing, bad commands, gone gateways, asking a site's owner."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import nats

from adapters.cluster.bus import GONE, Bus
from adapters.cluster.wire import dumps, encode, loads
from adapters.ocpp.server import OcppServer
from balancer.config import parse_config
from balancer.events import ChargerSchedule, Event
from tests.cluster_servers import NatsServer

CONFIG = parse_config({"sites": [{"id": "depot", "grid_limit_a": 32, "fallback_kw": 7,
                                  "chargers": [{"id": "CP1", "max_current_a": 16}]}]})


def schedule() -> ChargerSchedule:
    now = datetime.now(UTC)
    return ChargerSchedule("CP1", now, 6.0, ((now, 6.0),), 6.0, "tx1")


async def test_a_gateway_refuses_commands_of_an_owner_that_lost_the_site(nats_server: NatsServer) -> None:
    events: list[Event] = []
    gateway = Bus(nats_server.url, "gw-1", OcppServer(CONFIG, on_event=events.append), on_event=lambda *a: None,
                  on_changed=lambda *a: None, response_timeout_s=2.0)
    owner = Bus(nats_server.url, "owner", OcppServer(CONFIG, on_event=events.append), on_event=lambda *a: None,
                on_changed=lambda *a: None, response_timeout_s=2.0)
    await gateway.start()
    await owner.start()
    try:
        # CP1 is not connected: nothing to send, the phase succeeds.
        assert await owner.command("gw-1", "depot", 3, "f1", 1, [schedule()]) is True
        assert await owner.command("gw-1", "depot", 3, "f1", 2, []) is True
        assert await owner.command("gw-1", "depot", 2, "f2", 1, [schedule()]) is False  # a former owner
        assert gateway.counters["commands_refused"] == 1
        assert await owner.command("gw-1", "depot", 4, "f3", 1, [schedule()]) is True
        assert await owner.command("nobody", "depot", 4, "f4", 1, [schedule()]) == GONE
    finally:
        await owner.stop()
        await gateway.stop()


async def test_bad_commands_are_counted_and_change_nothing(nats_server: NatsServer) -> None:
    gateway = Bus(nats_server.url, "gw-1", OcppServer(CONFIG, on_event=lambda e: None), on_event=lambda *a: None,
                  on_changed=lambda *a: None, response_timeout_s=2.0)
    await gateway.start()
    nc = await nats.connect(nats_server.url)
    try:
        for bad in (b"not json", b"[]", dumps({"site": "depot"}),
                    dumps({"site": "depot", "epoch": 1, "fid": "x", "phase": 1, "schedules": [{"type": "Tick"}]})):
            await nc.publish("balancer.gw.gw-1.push", bad)
        await nc.flush()
        reply = await nc.request("balancer.gw.gw-1.push", dumps(
            {"site": "depot", "epoch": 1, "fid": "y", "phase": 1, "schedules": [encode(schedule())]}), timeout=5)
        assert loads(reply.data) == {"ok": True}
        assert gateway.counters["bad_messages"] == 4 and gateway.counters["commands_in"] == 1
    finally:
        await nc.close()
        await gateway.stop()


async def test_an_ask_gets_the_owners_answer_or_says_why_there_is_none(nats_server: NatsServer) -> None:
    async def echo(site_id: str, body: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(float(body.get("wait_s", 0)))
        return {"site": site_id, "got": body}

    owner = Bus(nats_server.url, "owner", OcppServer(CONFIG, on_event=lambda e: None), on_event=lambda *a: None,
                on_changed=lambda *a: None, response_timeout_s=2.0, answers={"meter": echo})
    asker = Bus(nats_server.url, "asker", OcppServer(CONFIG, on_event=lambda e: None), on_event=lambda *a: None,
                on_changed=lambda *a: None, response_timeout_s=2.0)
    await owner.start()
    await asker.start()
    try:
        assert "no instance answers" in str(await asker.ask("depot", "meter", {"n": 1}, 1.0))  # nobody owns it
        await owner.own("depot")
        assert await asker.ask("depot", "meter", {"n": 2}, 1.0) == {"site": "depot", "got": {"n": 2}}
        assert "did not answer within 0.2 s" in str(await asker.ask("depot", "meter", {"wait_s": 1}, 0.2))
        assert "no instance answers" in str(await asker.ask("depot", "ocpi", {}, 1.0))  # a kind it does not answer
        await owner.disown("depot")
        # The owner's unsubscription is flushed, yet a request sent at once has been seen to find the
        # interest still there and time out (1 in ~8 runs on a loaded machine); within a few tries
        # the server answers "no responders", and never the owner.
        answers = [str(await asker.ask("depot", "meter", {"n": 3}, 0.5)) for _ in range(3)]
        assert "no instance answers" in answers[-1], answers
        assert all(isinstance(a, str) for a in answers)
        assert asker.counters["asks_forwarded"] == 1 and asker.counters["asks_unanswered"] == 6
    finally:
        await asker.stop()
        await owner.stop()
