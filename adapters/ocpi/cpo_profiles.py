"""OCPI CPO: ChargingProfiles (Receiver): caps on sessions, their results and updates."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from adapters.ocpi.cpo_base import (
    CAP_TOLERANCE_A,
    UPDATE_CHECK_S,
    cap_at,
)
from adapters.ocpi.cpo_sessions import CpoSessions
from adapters.ocpi.messages import (
    OcpiError,
    ProfileIn,
    iso,
    parse_set_profile,
    parse_url,
)
from balancer.control import ChargerState
from balancer.events import ExternalCapSet

__all__ = ["CpoProfiles"]

log = logging.getLogger("balancer.ocpi")
class CpoProfiles(CpoSessions):
    """ChargingProfiles (Receiver) and the ActiveChargingProfile updates to the party."""

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

    def _answer(self, result: str) -> dict[str, Any]:
        """A ChargingProfileResponse (the data of the envelope)."""
        return {"result": result, "timeout": self.settings.profile_timeout_s}

    def _profile_session(self, party: str | None, session_id: str) -> tuple[str, str, ChargerState] | dict[str, Any]:
        """The session a ChargingProfiles request is about, or the answer refusing it (TOO_OFTEN
        before the lookup, so a party over its rate learns nothing, then UNKNOWN_SESSION)."""
        if self._too_often(party):
            return self._answer("TOO_OFTEN")
        found = self._session(session_id)
        return self._answer("UNKNOWN_SESSION") if found is None else found

    async def profile_put(self, party: str | None, session_id: str, body: Any, query: dict[str, str]) -> Any:
        profile = parse_set_profile(body)
        found = self._profile_session(party, session_id)
        if isinstance(found, dict):
            return found
        site_id, cid, state = found
        now = self.now()
        record = self._profile_record(session_id, site_id, cid, state, profile, party, now)
        self.store.put_json(f"ocpi:profile:{session_id}", record, flush=False)
        # The result waits until the charger holds the cap (an accepted profile at or below it),
        # at most HOLD_RESULT_S; nothing to wait for when what it holds is already within the cap.
        cap_now = cap_at(record, now.timestamp())
        wait = cap_now is not None and state.connected and state.held_a > cap_now + CAP_TOLERANCE_A
        self._enqueue("POST", profile.response_url, {"result": "ACCEPTED"}, party, now, site_id=site_id,  # flushes both
                      wait_for=(cid, cap_now) if wait and cap_now is not None else None)
        self._emit_cap(record)
        self.counters["ocpi_profiles_set"] += 1
        return self._answer("ACCEPTED")

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

    async def profile_get(self, party: str | None, session_id: str, body: Any, query: dict[str, str]) -> Any:
        raw = query.get("duration")
        if raw is None or not raw.isdigit() or not 0 < int(raw) <= 7 * 86400:
            raise OcpiError(f"duration must be an integer number of seconds (1 to 604800), got {raw!r}",
                            "duration")
        response_url = parse_url(query.get("response_url"), "response_url")
        found = self._profile_session(party, session_id)
        if isinstance(found, dict):
            return found
        site_id, cid, _ = found
        now = self.now()
        result = {"result": "ACCEPTED", "profile": self._active_profile(site_id, cid, int(raw), now)}
        self._enqueue("POST", response_url, result, party, now, site_id=site_id)
        return self._answer("ACCEPTED")

    async def profile_delete(self, party: str | None, session_id: str, body: Any, query: dict[str, str]) -> Any:
        response_url = parse_url(query.get("response_url"), "response_url")
        found = self._profile_session(party, session_id)
        if isinstance(found, dict):
            return found
        site_id, cid, state = found
        now = self.now()
        self.store.delete_json(f"ocpi:profile:{session_id}", flush=False)
        self._enqueue("POST", response_url, {"result": "ACCEPTED"}, party, now, site_id=site_id)
        self.on_event(ExternalCapSet(charger_id=cid, at=now, periods=(), transaction_id=state.transaction_id))
        return self._answer("ACCEPTED")

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
        """PUT an ActiveChargingProfile for every capped session whose limit moved past the deadband
        (in a cluster, the owner of the session's site does, whichever instance took the profile)."""
        now = self.now()
        if self.refresh("ocpi:party:"):  # cluster mode: parties and caps other instances stored
            self._load_parties()
        self.refresh("ocpi:profile:")
        for key in self.store.keys("ocpi:profile:"):
            record = self.store.get_json(key)
            if record is None:
                continue
            url = self._sender_url(record["party"])
            controller = self.controllers.get(record["site_id"])
            if url is None or controller is None or not self.controls(record["site_id"]):
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
            self._enqueue("PUT", url.rstrip("/") + "/" + record["session_id"], body, record["party"], now,
                          site_id=record["site_id"])
            self.counters["ocpi_updates_sent"] += 1
        self.store.flush()

    async def _update_loop(self) -> None:
        while True:
            await asyncio.sleep(UPDATE_CHECK_S)
            try:
                self.check_updates()
            except Exception:  # an update is a courtesy: it must never stop the service
                log.exception("OCPI ActiveChargingProfile updates failed")
