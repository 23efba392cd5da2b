"""Fresh readings after a limit change (TriggerMessage MeterValues), over real websockets: asked
for once the car has followed, answered with what it draws then; a charger without the feature
is asked once and never again, and its limits go on as before."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from adapters.ocpp.meter_trigger import TRIGGER_DELAY_S
from adapters.ocpp.simulator import Misbehaviour, SimCar, SimulatedCharger
from balancer.events import MeterSample, ProfileResult, ReadingDue
from tests.adapters.ocpp_env import Env, ocpp_config, running_env, schedule, wait_for

CHARGERS = [{"id": cid, "max_current_a": 32} for cid in ("A16", "B201", "C16")]


def sim(env: Env, cid: str, protocol: str, misbehaviour: Misbehaviour | None = None) -> SimulatedCharger:
    """A charger whose own MeterValues come every 10 minutes: a reading within seconds was asked for."""
    now = datetime.now(UTC)
    charger = SimulatedCharger(cid, env.url, protocol=protocol, meter_interval_s=600.0, tick_s=0.05,
                               misbehaviour=misbehaviour,
                               car=SimCar(arrival=now - timedelta(seconds=1), departure=now + timedelta(hours=5),
                                          energy_wh=30000))
    env.chargers.append(charger)
    charger.start()
    return charger


async def test_a_changed_limit_is_followed_by_a_fresh_reading_once_the_car_follows() -> None:
    async with running_env(ocpp_config(CHARGERS)) as env:
        a16, b201 = sim(env, "A16", "ocpp1.6"), sim(env, "B201", "ocpp2.0.1")
        c16 = sim(env, "C16", "ocpp1.6", Misbehaviour(no_trigger=True))
        await env.online("A16", "B201", "C16")
        await wait_for(lambda: all(s.transaction_id for s in (a16, b201, c16)))
        await wait_for(lambda: all(env.server.links[c].transaction_id for c in ("A16", "B201", "C16")))
        await env.server.apply([schedule(c, 16.0) for c in ("A16", "B201", "C16")])
        due = {e.charger_id: e for e in env.of(ReadingDue)}
        assert set(due) == {"A16", "B201", "C16"}  # not known yet that C16 cannot
        for e in due.values():
            assert abs((e.due_at - e.at).total_seconds() - TRIGGER_DELAY_S) < 0.01
        await wait_for(lambda: "MeterValues" in a16.triggered and "MeterValues" in b201.triggered,
                       timeout=TRIGGER_DELAY_S + 5)
        await wait_for(lambda: {"A16", "B201"} <= {e.charger_id for e in env.of(MeterSample)
                                                   if e.at >= due[e.charger_id].due_at})
        for cid in ("A16", "B201"):
            fresh = [e for e in env.of(MeterSample) if e.charger_id == cid and e.at >= due[cid].due_at]
            assert fresh[0].current_a[0] == 16.0  # what the car draws under its new limit
        await wait_for(lambda: not env.server.links["C16"].pusher.caps.trigger_meter_values)
        assert env.server.charger_status("C16")["capabilities"]["trigger_meter_values"] is False
        assert env.server.links["A16"].pusher.caps.trigger_meter_values

        # The next change: C16 is not asked again, and its limit lands as before.
        before = len(env.of(ReadingDue))
        await env.server.apply([schedule("C16", 10.0)])
        assert env.of(ProfileResult)[-1].result == "Accepted"
        assert c16.limit_now(datetime.now(UTC)) == 10.0
        assert len(env.of(ReadingDue)) == before
        assert env.server.links["C16"].pusher.meter_trigger.sent == 1
