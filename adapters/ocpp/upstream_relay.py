"""Local controller mode (``upstream``): what a relay does with each frame, both ways.

CSMS -> charger (station maximum profiles combined with the balancer's, narrowed clears), the
CSMS's answers, and the frame guard's hooks: ``inbound`` for every charger frame, ``outbound`` for
every frame the ``ocpp`` package writes to the charger.
"""


from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from adapters.ocpp.trusted_call import call_trusted
from adapters.ocpp.upstream_connection import LOCAL_ONLY, REASSERT, CsmsConnection, Forwarded
from adapters.ocpp.upstream_frames import (
    clamp_station_max,
    clear_reaches_ours,
    clears_station_max,
    is_station_max,
    map_tx,
    station_max_cap_a,
)

__all__ = ["Relay"]

log = logging.getLogger("adapters.ocpp.upstream")


class Relay(CsmsConnection):
    """One charger's link to the CSMS (see ``upstream``'s docstring)."""

    # ----------------------------------------------------------------- CSMS -> charger
    async def _from_csms(self, raw: str) -> None:
        try:
            frame = json.loads(raw)
        except ValueError:
            log.warning("charger %s: CSMS sent invalid JSON: %r", self.charger_id, raw[:200])
            return
        if not isinstance(frame, list) or len(frame) < 3 or not isinstance(frame[1], str):
            log.warning("charger %s: CSMS sent no OCPP frame: %r", self.charger_id, raw[:200])
            return
        if frame[0] == 2 and len(frame) == 4 and isinstance(frame[3], dict):
            await self._csms_call(frame[1], str(frame[2]), frame[3], raw)
        elif frame[0] in (3, 4):
            await self._csms_answer(frame, raw)

    async def _csms_call(self, uid: str, action: str, payload: dict[str, Any], raw: str) -> None:
        if action == "SetChargingProfile" and is_station_max(self.dialect, payload):
            if station_max_cap_a(self.dialect, payload, self.voltage_v) is None:
                log.warning("charger %s: CSMS station maximum without a usable period refused: %r", self.charger_id,
                            raw[:500])
                await self._to_csms(json.dumps([3, uid, {"status": "Rejected"}]))
                return
            profile = self.dialect.profile_of(payload) or {}
            key = profile.get("chargingProfileId", profile.get("id"))
            self.csms_max[key if isinstance(key, (int, str)) else repr(key)] = payload
            await self._to_csms(json.dumps([3, uid, {"status": "Accepted"}]))
            self._spawn(self._reassert())
            return
        if action == "ClearChargingProfile" and clears_station_max(self.dialect, payload):
            status = "Accepted" if self.csms_max else "Unknown"
            self.csms_max.clear()
            await self._to_csms(json.dumps([3, uid, {"status": status}]))
            self._spawn(self._reassert())
            return
        if uid in self.own:
            await self._to_csms(json.dumps([4, uid, "GenericError", "message id in use, send again", {}]))
            return
        if action == "ClearChargingProfile" and clear_reaches_ours(self.dialect, payload):
            self._spawn(self._narrowed_clear(uid, payload))
            return
        self.from_csms.add(uid)
        await self._to_charger(map_tx(self.dialect, raw, self.tx_in))

    async def _narrowed_clear(self, uid: str, payload: dict[str, Any]) -> None:
        """A CSMS ClearChargingProfile naming no id or purpose would take the balancer's station
        maximum profiles (its failsafe among them) too: the charger gets it once per purpose the
        CSMS may hold there (TxDefaultProfile, TxProfile), the CSMS's own station maximums are
        dropped here, and the CSMS gets one answer: Accepted when anything was cleared."""
        cleared = bool(self.csms_max)
        self.csms_max.clear()
        cp = self.link.cp
        for purpose in ("TxDefaultProfile", "TxProfile"):
            narrowed = self.dialect.narrow_clear(payload, purpose)
            if cp is None:
                break
            with contextlib.suppress(Exception):
                answer = await call_trusted(cp, "ClearChargingProfile", narrowed)
                cleared = cleared or answer.get("status") == "Accepted"
        await self._to_csms(json.dumps([3, uid, {"status": "Accepted" if cleared else "Unknown"}]))
        self._spawn(self._reassert())  # the CSMS's station maximums are gone: ours uncapped again

    async def _csms_answer(self, frame: list[Any], raw: str) -> None:
        uid = frame[1]
        entry = self.forwarded.get(uid)
        if entry is None:
            future = self.replay_waiters.pop(uid, None)
            if future is not None and not future.done():
                future.set_result(frame)
            return
        if entry.timer is not None:
            entry.timer.cancel()
        start16 = self.dialect.csms_names_transactions and entry.action == "StartTransaction"
        remote_tx = frame[2].get("transactionId") if frame[0] == 3 and isinstance(frame[2], dict) else None
        if entry.answered:
            # Answered by the balancer already (a slow CSMS): consumed; its transaction id mapped.
            if start16 and entry.local_tx is not None and remote_tx is not None:
                self._map_tx(entry.local_tx, str(remote_tx))
            self.forwarded.pop(uid, None)
            if start16 and not self.online:
                self._spawn(self._replay())  # what waited for this id goes out now, mapped
            return
        entry.answered = True
        self.hub.counters["upstream_forwarded"] += 1
        await self._to_charger(raw)
        # Observed only now (see ``inbound``): with the CSMS's transaction id; a boot once accepted.
        if not entry.routed and frame[0] == 3 and isinstance(frame[2], dict) \
                and (start16 or frame[2].get("status") == "Accepted"):
            entry.routed = True
            self.link.upstream_answer = frame[2] if start16 else None
            try:
                await self._route(entry.frame)  # the handlers' answer is held back (``outbound``)
            finally:
                self.link.upstream_answer = None
        self.forwarded.pop(uid, None)

    async def _reassert(self) -> None:
        """Send the balancer's station maximum profiles again, combined with the CSMS's as it is now."""
        cp = self.link.cp
        if cp is None:
            return
        for level, payload in sorted(self.our_max.items()):
            with contextlib.suppress(Exception):
                # Marked: ``outbound`` sends the newest of ours at this level when the frame leaves,
                # not this one, which a push of the balancer may have overtaken meanwhile.
                await call_trusted(cp, "SetChargingProfile", {**payload, REASSERT: level})

    # ----------------------------------------------------------------- the guard's hooks
    async def inbound(self, raw: str) -> bool:
        """A frame from the charger (checked by the guard); True when the balancer's handlers see it."""
        frame = json.loads(raw)
        kind, uid = frame[0], frame[1]
        if kind != 2:
            if uid in self.from_csms:
                self.from_csms.discard(uid)
                await self._to_csms(raw)
                return False
            self.own.discard(uid)
            return True
        action = frame[2]
        if not self.first_try.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.first_try.wait(), self.settings.answer_timeout_s)
        entry = Forwarded(action, raw)
        self.forwarded[uid] = entry
        if self.online and await self._to_csms(map_tx(self.dialect, raw, self.tx_out)):
            entry.expect_csms = True
            entry.timer = asyncio.get_running_loop().call_later(self.settings.answer_timeout_s, self._timed_out, uid)
            if action == "BootNotification" or (self.dialect.csms_names_transactions and action == "StartTransaction"):
                # Observed once the CSMS answers (``_csms_answer``): the balancer's calls wait for
                # the charger to be accepted, and a 1.6 session is known by the CSMS's id.
                return False
            entry.routed = True
            return True
        entry.local = entry.routed = entry.answered = True
        self.hub.counters["upstream_local_answers"] += 1
        if action not in LOCAL_ONLY:
            entry.queue_seq = self.hub.queue.push(self.charger_id, raw)
            self.hub.counters["upstream_queued"] += 1
        return True

    def _timed_out(self, uid: str) -> None:
        entry = self.forwarded.get(uid)
        if entry is not None and not entry.answered:
            log.info("charger %s: no answer from the CSMS to %s in time; answered here", self.charger_id,
                     entry.action)
            self._spawn(self._answer_locally(entry))

    async def _answer_locally(self, entry: Forwarded) -> None:
        entry.answered = entry.local = True
        if entry.expect_csms and self.dialect.csms_names_transactions and entry.action == "StartTransaction":
            # The charger now uses the balancer's transaction id, which the CSMS cannot know before
            # it answers: later calls wait in the queue until then, and go out mapped.
            self.online = False
        self.hub.counters["upstream_local_answers"] += 1
        if not entry.routed:
            entry.routed = True
            await self._route(entry.frame)  # the handlers' answer passes ``outbound`` to the charger
        elif entry.local_answer is not None:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await self.guard.send(entry.local_answer)  # ``outbound`` lets it pass now: entry.local

    def outbound(self, message: str) -> str | None:
        """A frame the balancer writes to the charger: the frame to send, or None to hold it back."""
        if message.startswith("[2"):
            frame = json.loads(message)
            self.own.add(frame[1])
            if frame[2] == "SetChargingProfile" and is_station_max(self.dialect, frame[3]):
                level = frame[3].pop(REASSERT, None)
                if level is not None:
                    frame[3] = self.our_max.get(level, frame[3])
                else:
                    profile = frame[3][self.dialect.profile_key]
                    self.our_max[int(profile["stackLevel"])] = frame[3]
                caps = [c for c in (station_max_cap_a(self.dialect, p, self.voltage_v)
                                    for p in self.csms_max.values()) if c is not None]
                cap = min(caps) if caps else None
                frame[3] = clamp_station_max(self.dialect, frame[3], cap, self.voltage_v)
                return json.dumps(frame, separators=(",", ":"))
            return message
        try:
            uid = json.loads(message)[1]
        except (ValueError, IndexError, TypeError):
            return message
        entry = self.forwarded.get(uid)
        if entry is None:
            return message
        if entry.local:
            if entry.action == "StartTransaction" and message.startswith("[3"):
                tx = json.loads(message)[2].get("transactionId")
                if tx is not None:
                    entry.local_tx = str(tx)
                    if entry.queue_seq is not None:
                        self.hub.queue.set_local_tx(entry.queue_seq, entry.local_tx)
            if not entry.expect_csms:
                self.forwarded.pop(uid, None)
            return message
        entry.local_answer = message
        return None

    # ----------------------------------------------------------------- lifecycle
    def detach(self) -> None:
        """Replaced by a newer connection of the same charger."""
        self._closed = True
        for task in list(self._tasks):
            task.cancel()

    async def close(self) -> None:
        """The charger is gone: so is its connection to the CSMS (which sees it go)."""
        self._closed = True
        if self.hub.relays.get(self.charger_id) is self:
            del self.hub.relays[self.charger_id]
        ws = self.ws
        if ws is not None:
            with contextlib.suppress(Exception):
                await ws.close()
        for entry in self.forwarded.values():
            if entry.timer is not None:
                entry.timer.cancel()
        for task in list(self._tasks):
            task.cancel()
