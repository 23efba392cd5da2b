"""Simulated chargers with cars, speaking OCPP 1.6J or 2.0.1 to any CSMS.

Each simulated charger holds the charging profiles it receives, evaluates its composite schedule
at (possibly accelerated) simulated time like a real charger, draws min(limit, car max) with a
taper above 80 % state of charge, and sends MeterValues that match what it draws.

Towards the CSMS it behaves as the specs ask: Heartbeats at the interval of the BootNotification
answer (or of HeartbeatInterval once set); TriggerMessage answered Accepted and the requested
message sent after the answer (BootNotification, Heartbeat, StatusNotification, MeterValues,
FirmwareStatusNotification, 1.6 DiagnosticsStatusNotification, 2.0.1 LogStatusNotification and
TransactionEvent; others NotImplemented); GetCompositeSchedule in the unit asked for (W in total
over the car's phases); DataTransfer UnknownVendorId (no vendor extensions); 2.0.1
GetChargingProfiles Accepted and a ReportChargingProfiles per EVSE, or NoProfiles; Get/SetVariables
and 1.6 Get/ChangeConfiguration against a small device model (unknown component, variable or key,
read-only values refused). A 2.0.1 session: StatusNotification Occupied, then TransactionEvent
Started with seqNo 0, Updated 1, 2, ..., Ended, then StatusNotification Available. Switchable
misbehaviours show how a CSMS copes: rejecting 0 A, ignoring profiles, rejecting TxProfile,
rejecting every profile, never answering the CSMS's calls, dropping the connection, answering
late, no TriggerMessage. Every accepted profile is logged with its arrival time (``hold_log``), so a test can replay
what a fleet held at every instant (``adapters.ocpp.held_ledger``). Used by the tests, the
benchmarks, ``balancer demo`` and ``balancer simulate``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import aiohttp
import ocpp.messages
from ocpp.exceptions import InternalError
from ocpp.v16 import ChargePoint as Cp16
from ocpp.v16 import call as call16
from ocpp.v16 import call_result as result16
from ocpp.v16.enums import Action as Action16
from ocpp.v21 import call as call21
from ocpp.v21 import call_result as result21
from ocpp.v201 import ChargePoint as Cp201
from ocpp.v201 import call as call201
from ocpp.v201 import call_result as result201
from ocpp.v201.enums import Action as Action201

from adapters.clock import utc_now
from adapters.ocpp.routing import after, on

__all__ = ["AcceptedProfile", "Fleet", "Misbehaviour", "SessionRecord", "SimCar", "SimulatedCharger"]

log = logging.getLogger(__name__)
VOLTAGE_V = 230.0
MEASURANDS = "Energy.Active.Import.Register,Current.Import,Power.Active.Import,SoC"
WRITABLE = frozenset({"HeartbeatInterval", "MeterValueSampleInterval", "MeterValuesSampledData", "TxUpdatedInterval",
                      "TxUpdatedMeasurands"})
"""Configuration keys (1.6) and variables (2.0.1) a CSMS may change; the others are read-only."""


def _iso(t: datetime) -> str:
    return t.isoformat(timespec="seconds").replace("+00:00", "Z")


def _parse(raw: str) -> datetime:
    return datetime.fromisoformat(raw.replace("Z", "+00:00"))


@dataclass
class SimCar:
    """A car: when it comes and goes, what it needs [Wh], and what it can take [A per phase]."""

    arrival: datetime
    departure: datetime
    energy_wh: float
    max_current_a: float = 32.0
    min_current_a: float = 6.0
    phases: int = 3
    iso15118: bool = False
    battery_wh: float = 60000.0
    sleeps_after_pause_s: float | None = None
    """A car that falls asleep (as Renault Zoe, Dacia Spring, Fiat 500e are reported to): offered
    less than its minimum for this long [s] (0: at once), it stops for the rest of its session and
    draws nothing whatever the limit, reporting ``SuspendedEV``. None: it always resumes."""
    discharge_a: float = 0.0
    """V2X (OCPP 2.1, ISO 15118-20): how far it may discharge per phase [A]; 0: not a V2X car."""
    min_v2x_energy_wh: float | None = None
    """Its ``evMinV2XEnergyRequest`` (negative: what it can spare above its minimum state of charge)."""


@dataclass
class Misbehaviour:
    rejects_zero_amps: bool = False
    ignores_profiles: bool = False
    rejects_tx_profile: bool = False
    rejects_profiles: bool = False
    """Every SetChargingProfile is answered Rejected (and the car draws what it likes)."""
    silent: bool = False
    """Calls from the CSMS are never answered (the charger still sends its own messages)."""
    drop_every_s: float = 0.0
    answer_delay_s: float = 0.0
    boot_delay_s: float = 0.0
    """Seconds between connecting and sending BootNotification (CSMS calls are answered meanwhile)."""
    tx_profile_errors: int = 0
    """The first this many TxProfiles are answered with a CALLERROR (InternalError): transient trouble."""
    watts_only: bool = False
    """Takes only W-unit schedules (reported as such by GetConfiguration/GetVariables); A is Rejected."""
    no_trigger: bool = False
    """Every TriggerMessage is answered NotImplemented (a charger without the feature)."""


@dataclass(frozen=True)
class AcceptedProfile:
    """A SetChargingProfile the charger accepted: when it arrived, for which EVSE, the profile in full."""

    at: datetime
    evse: int
    profile: dict[str, Any]


@dataclass
class SessionRecord:
    """One transaction as the charger saw it (``stopped_at`` None while it runs)."""

    transaction_id: str
    started_at: datetime
    stopped_at: datetime | None = None
    reason: str | None = None


class _WsConnection:
    """The ``recv``/``send`` object the ``ocpp`` package needs, over an aiohttp client websocket."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, wire: deque[tuple[str, str]]) -> None:
        self.ws = ws
        self.wire = wire

    async def recv(self) -> str:
        msg = await self.ws.receive()
        if msg.type != aiohttp.WSMsgType.TEXT:
            raise ConnectionResetError("websocket closed")
        self.wire.append(("in", str(msg.data)))
        return str(msg.data)

    async def send(self, message: str) -> None:
        self.wire.append(("out", message))
        await self.ws.send_str(message)


@dataclass
class ProfileStore:
    """Installed profiles keyed by (purpose, stack level, connector/evse); snake_case as received."""

    profiles: dict[tuple[str, int, int], dict[str, Any]] = field(default_factory=dict)

    def install(self, evse: int, profile: dict[str, Any]) -> None:
        key = (profile["charging_profile_purpose"], int(profile["stack_level"]), evse)
        # The same id replaces wherever it was.
        pid = profile.get("charging_profile_id", profile.get("id"))
        for k in [k for k, p in self.profiles.items() if p.get("charging_profile_id", p.get("id")) == pid]:
            del self.profiles[k]
        self.profiles[key] = profile

    def clear(self, purpose: str | None = None, profile_id: int | None = None) -> int:
        doomed = [k for k, p in self.profiles.items()
                  if (purpose is None or k[0] == purpose)
                  and (profile_id is None or p.get("charging_profile_id", p.get("id")) == profile_id)]
        for k in doomed:
            del self.profiles[k]
        return len(doomed)

    def drop_tx(self) -> None:
        for k in [k for k in self.profiles if k[0] == "TxProfile"]:
            del self.profiles[k]

    @staticmethod
    def _limit(profile: dict[str, Any], t: datetime, phases: int) -> float | None:
        schedule = profile["charging_schedule"]
        if isinstance(schedule, list):
            schedule = schedule[0]
        start = _parse(schedule["start_schedule"]) if schedule.get("start_schedule") else t
        offset = (t - start).total_seconds()
        if offset < 0:
            return None
        limit = None
        for period in schedule["charging_schedule_period"]:
            if period["start_period"] <= offset:
                # 2.1 CentralSetpoint: the setpoint (negative: discharge) is what the car follows.
                setpoint = period.get("setpoint") if period.get("operation_mode") == "CentralSetpoint" else None
                limit = float(period["limit"] if setpoint is None else setpoint)
                if schedule["charging_rate_unit"] == "W":
                    limit /= VOLTAGE_V * int(period.get("number_phases") or phases)
        duration = schedule.get("duration")
        if duration is not None and offset >= duration:
            return None
        return limit

    def limit_at(self, t: datetime, evse: int, has_tx: bool, phases: int) -> float | None:
        """Composite limit [A per phase]: min of the Max profile and (Tx, else TxDefault)."""
        def best(purposes: tuple[str, ...]) -> float | None:
            found = [(k[1], p) for k, p in self.profiles.items() if k[0] in purposes and k[2] in (0, evse)]
            for _, profile in sorted(found, key=lambda x: -x[0]):
                value = self._limit(profile, t, phases)
                if value is not None:
                    return value
            return None

        tx = best(("TxProfile",)) if has_tx else None
        default = tx if tx is not None else best(("TxDefaultProfile",))
        cap = best(("ChargePointMaxProfile", "ChargingStationMaxProfile"))
        values = [v for v in (default, cap) if v is not None]
        return min(values) if values else None


class SimulatedCharger:
    """One charger with (optionally) a car, connected to ``url``/``charger_id``.

    ``drop_connection()`` closes the websocket now (it reconnects with back-off, keeping its
    profiles and its transaction, as a real charger does). For checks from the charger's side it
    logs every profile it accepted in full with its arrival time (``accepted_log``), every
    ClearChargingProfile it applied (``clear_log``) and its sessions (``session_log``);
    ``held_limit_at(t)`` replays them to tell what it held at any instant (``bench/chaos.py``).
    """

    def __init__(self, charger_id: str, url: str, *, protocol: str = "ocpp1.6", car: SimCar | None = None,
                 clock: Callable[[], datetime] = utc_now, password: str | None = None, max_current_a: float = 32.0,
                 meter_interval_s: float = 60.0, tick_s: float = 0.1, misbehaviour: Misbehaviour | None = None,
                 seed: int = 0, validate: bool = True) -> None:
        self.charger_id = charger_id
        # False: take calls without the ocpp package's schema check (and answer without one). For
        # benchmarks of a server against hundreds of chargers in one process, where the fleet's
        # validation on one core would otherwise be the figure; tests keep it on.
        self.validate = validate
        self.url = url.rstrip("/")
        self.protocol = protocol
        self.car = car
        self.clock = clock
        self.password = password
        self.max_current_a = max_current_a
        self.meter_interval_s = meter_interval_s
        self.tick_s = tick_s
        self.misbehaviour = misbehaviour or Misbehaviour()
        self.store = ProfileStore()
        self.profile_log: list[dict[str, Any]] = []
        self.hold_log: list[tuple[datetime, int, dict[str, Any] | None]] = []
        """What it holds, as it changes: (time, connector/EVSE, the accepted profile), and
        (time, 0, None) when a session's end drops its TxProfiles. Replayed in order by
        ``adapters.ocpp.held_ledger`` to sum what a fleet holds at every instant and slot."""
        self.draw_log: list[tuple[datetime, float]] = []
        self.energy_wh = 0.0
        self.export_wh = 0.0
        """What it gave back (V2X) [Wh]: Energy.Active.Export.Register."""
        self.session_wh = 0.0
        self.draw_a = 0.0
        self.accepted_log: list[AcceptedProfile] = []
        """Every profile accepted, in arrival order, in full (schedules, start, stack level)."""
        self.clear_log: list[tuple[datetime, str | None, int | None]] = []
        """Every ClearChargingProfile applied: (arrival, purpose, profile id)."""
        self.session_log: list[SessionRecord] = []
        self.drops = 0
        """Connections closed by ``drop_connection`` (or ``drop_every_s``)."""
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self.transaction_id: str | None = None
        self._starting = False
        self.done = False
        self.connected = asyncio.Event()
        self.boots = 0
        self.booted_at: datetime | None = None
        """When the last BootNotification was answered."""
        self.rejected_calls = 0
        self._tx_errors_sent = 0
        self._cp: Any = None
        self._tx_numbers = itertools.count(1)
        self._tx_seq = itertools.count(0)
        """seqNo of the 2.0.1 TransactionEvents of the transaction in progress: 0 for its Started event."""
        self.heartbeat_s = 0
        """The interval the CSMS's BootNotification answer asked for [s]; 0: no heartbeats."""
        self.heartbeats = 0
        self.triggered: list[str] = []
        """Messages sent because a TriggerMessage asked for them, in order."""
        self.variables: dict[tuple[str, str], str] = {}
        """Device-model / configuration values the CSMS wrote (component or "" for 1.6, name)."""
        self._last_meter: datetime | None = None
        self.asleep = False
        """The car fell asleep (``SimCar.sleeps_after_pause_s``); reported once as SuspendedEV."""
        self._paused_since: datetime | None = None
        self.pauses = 0
        """Times the car stopped drawing because its limit fell below its minimum (not full, still
        plugged in): what a car that may fall asleep after a pause goes through."""
        self._asleep_told = False
        self._last_tick: datetime | None = None
        self._last_heartbeat = 0.0
        self._rng = random.Random(seed)
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._stop = asyncio.Event()
        self.wire: deque[tuple[str, str]] = deque(maxlen=2000)
        """The last frames on the wire, ("out" or "in", frame as sent or received): what a
        protocol analyser would show, for tests of what reaches the CSMS unchanged."""

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> None:
        # Validate every message in place, as the server does: a fleet of hundreds in one process
        # would otherwise queue each schema check through the thread pool (STACK.md).
        ocpp.messages.ASYNC_VALIDATION = False
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"sim-{self.charger_id}")

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._session is not None:
            await self._session.close()

    async def _run(self) -> None:
        self._session = aiohttp.ClientSession()
        backoff = 0.2
        while not self._stop.is_set():
            try:
                await self._connect_once()
                backoff = 0.2
            except (aiohttp.ClientError, ConnectionError, OSError, TimeoutError) as exc:
                log.debug("%s: connection failed: %r", self.charger_id, exc)
            self.connected.clear()
            if self._stop.is_set():
                return
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    async def _connect_once(self) -> None:
        assert self._session is not None
        auth = aiohttp.BasicAuth(self.charger_id, self.password) if self.password else None
        async with self._session.ws_connect(f"{self.url}/{self.charger_id}", protocols=(self.protocol,),
                                            auth=auth, heartbeat=30.0, max_msg_size=0) as ws:
            if ws.protocol != self.protocol:
                raise ConnectionError(f"server did not accept {self.protocol}")
            connection = _WsConnection(ws, self.wire)
            self._ws = ws
            cls = _Client16 if self.protocol == "ocpp1.6" else _Client21 if self.protocol == "ocpp2.1" else _Client201
            self._cp = cls(self.charger_id, connection, self)
            if not self.validate:
                for handlers in self._cp.route_map.values():
                    handlers["_skip_schema_validation"] = True
            reader = asyncio.get_running_loop().create_task(self._cp.start())
            try:
                await self._boot()
                self.connected.set()
                await self._simulate(ws, reader)
            finally:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await reader

    async def drop_connection(self) -> bool:
        """Close the websocket now (a network blip); the charger reconnects with back-off.

        Installed profiles and the running transaction survive, as on a real charger. False when
        it was not connected.
        """
        ws = self._ws
        if ws is None or ws.closed:
            return False
        self.drops += 1
        await ws.close()
        return True

    def clear_profiles(self, purpose: str | None, profile_id: int | None) -> int:
        """Apply a ClearChargingProfile (logged for ``held_limit_at``); how many were removed."""
        self.clear_log.append((self.clock(), purpose, profile_id))
        return self.store.clear(purpose, profile_id)

    def held_limit_at(self, t: datetime) -> float | None:
        """What the charger held at ``t`` [A per phase], replayed from its logs: the composite of
        the profiles accepted and not cleared by then, with its transaction (if one ran at ``t``).
        None: no profile applied (the charger may draw its maximum)."""
        store = ProfileStore()
        events: list[tuple[datetime, int, Any]] = [(a.at, 0, a) for a in self.accepted_log if a.at <= t]
        events += [(at, 1, (purpose, pid)) for at, purpose, pid in self.clear_log if at <= t]
        events += [(rec.stopped_at, 2, None) for rec in self.session_log
                   if rec.stopped_at is not None and rec.stopped_at <= t]
        for _, kind, item in sorted(events, key=lambda e: (e[0], e[1])):
            if kind == 0:
                store.install(item.evse, item.profile)
            elif kind == 1:
                store.clear(*item)
            else:
                store.drop_tx()
        has_tx = any(rec.started_at <= t and (rec.stopped_at is None or t < rec.stopped_at)
                     for rec in self.session_log)
        phases = self.car.phases if self.car else 3
        return store.limit_at(t, 1, has_tx, phases)

    async def _boot(self, reason: str = "PowerUp") -> None:
        self.boots += 1
        self.booted_at = None
        if self.misbehaviour.boot_delay_s:
            await asyncio.sleep(self.misbehaviour.boot_delay_s)
        if self.protocol == "ocpp1.6":
            response = await self._cp.call(call16.BootNotification(charge_point_vendor="ev-balancer",
                                                                   charge_point_model="sim"))
        else:
            response = await self._cp.call(call201.BootNotification(
                charging_station={"vendor_name": "ev-balancer", "model": "sim"}, reason=reason))
        self.booted_at = self.clock()
        self.heartbeat_s = int(getattr(response, "interval", 0) or 0)
        self._last_heartbeat = asyncio.get_running_loop().time()
        await self._send_status()

    async def _send_status(self) -> None:
        if self.protocol == "ocpp1.6":
            await self._cp.call(call16.StatusNotification(connector_id=1, error_code="NoError",
                                                          status="Charging" if self.transaction_id else "Available"))
        else:
            await self._cp.call(call201.StatusNotification(
                timestamp=_iso(self.clock()), connector_status="Occupied" if self.transaction_id else "Available",
                evse_id=1, connector_id=1))

    async def _heartbeat(self) -> None:
        self._last_heartbeat = asyncio.get_running_loop().time()
        self.heartbeats += 1
        await self._cp.call(call16.Heartbeat() if self.protocol == "ocpp1.6" else call201.Heartbeat())

    def trigger_status(self, requested: str) -> str:
        """The answer to a TriggerMessage for ``requested``; when Accepted, the message follows the answer."""
        if self.misbehaviour.no_trigger:
            return "NotImplemented"
        if requested == "TransactionEvent" and self.protocol != "ocpp1.6":
            return "Accepted" if self.transaction_id is not None else "Rejected"
        common = {"BootNotification", "Heartbeat", "StatusNotification", "MeterValues", "FirmwareStatusNotification"}
        extra = {"DiagnosticsStatusNotification"} if self.protocol == "ocpp1.6" else {"LogStatusNotification"}
        return "Accepted" if requested in common | extra else "NotImplemented"

    async def send_triggered(self, requested: str) -> None:
        """Send the message a TriggerMessage asked for (the answer Accepted has gone out)."""
        self.triggered.append(requested)
        v16 = self.protocol == "ocpp1.6"
        now = self.clock()
        if requested == "BootNotification":
            await self._boot(reason="Triggered")
        elif requested == "Heartbeat":
            await self._heartbeat()
        elif requested == "StatusNotification":
            await self._send_status()
        elif requested == "MeterValues":
            self._advance(now)  # what it draws this instant, not at its last tick
            if v16:
                await self._cp.call(call16.MeterValues(
                    connector_id=1, transaction_id=int(self.transaction_id) if self.transaction_id else None,
                    meter_value=[self._meter_value(now)]))
            else:
                await self._cp.call(call201.MeterValues(evse_id=1, meter_value=[self._meter_value(now)]))
        elif requested == "TransactionEvent":
            await self._send_meter(now, trigger_reason="Trigger")
        elif requested == "FirmwareStatusNotification":
            await self._cp.call(call16.FirmwareStatusNotification(status="Idle") if v16
                                else call201.FirmwareStatusNotification(status="Idle"))
        elif requested == "DiagnosticsStatusNotification":
            await self._cp.call(call16.DiagnosticsStatusNotification(status="Idle"))
        elif requested == "LogStatusNotification":
            await self._cp.call(call201.LogStatusNotification(status="Idle"))

    async def _simulate(self, ws: aiohttp.ClientWebSocketResponse, reader: asyncio.Task[None]) -> None:
        connected_at = asyncio.get_running_loop().time()
        while not self._stop.is_set() and not reader.done() and not ws.closed:
            now = self.clock()
            self._advance(now)
            await self._session_events(now)
            if self.asleep and not self._asleep_told and self.transaction_id is not None:
                self._asleep_told = True
                await self._tell_asleep(now)
            if self._last_meter is None or (now - self._last_meter).total_seconds() >= self.meter_interval_s:
                self._last_meter = now
                if self.transaction_id is not None:
                    await self._send_meter(now)
            if self.heartbeat_s and asyncio.get_running_loop().time() - self._last_heartbeat >= self.heartbeat_s:
                await self._heartbeat()
            drop = self.misbehaviour.drop_every_s
            if drop and asyncio.get_running_loop().time() - connected_at >= drop:
                self.drops += 1
                await ws.close()
                return
            await asyncio.sleep(self.tick_s)

    # ----------------------------------------------------------------- physics
    def limit_now(self, now: datetime) -> float | None:
        phases = self.car.phases if self.car else 3
        return self.store.limit_at(now, 1, self.transaction_id is not None, phases)

    def _target_draw(self, now: datetime) -> float:
        car = self.car
        if car is None or self.transaction_id is None or self.done or self.asleep:
            return 0.0
        limit = self.limit_now(now)
        if self.misbehaviour.ignores_profiles or limit is None:
            limit = self.max_current_a
        if limit < 0:  # a V2X discharge setpoint, as far as the car can
            return max(limit, -car.discharge_a) if self.protocol == "ocpp2.1" else 0.0
        draw = min(limit, car.max_current_a, self.max_current_a)
        if draw < car.min_current_a:
            self._paused_since = self._paused_since or now
            after = car.sleeps_after_pause_s
            self.asleep = after is not None and (now - self._paused_since).total_seconds() >= after
            return 0.0
        self._paused_since = None
        soc = min(1.0, self.session_wh / max(car.energy_wh, 1.0))
        if soc > 0.8:  # the battery tapers the last fifth of the session
            draw = max(car.min_current_a, draw * (1.0 - soc) / 0.2)
        return draw

    def _advance(self, now: datetime) -> None:
        if self._last_tick is not None and self.draw_a != 0 and self.car is not None:
            hours = max(0.0, (now - self._last_tick).total_seconds()) / 3600.0
            wh = self.draw_a * min(self.car.phases, 3) * VOLTAGE_V * hours
            if wh > 0:
                self.energy_wh += wh
            else:
                self.export_wh -= wh
            self.session_wh += wh
        self._last_tick = now
        new = self._target_draw(now)
        self.pauses += self.draw_a > 0 and new == 0 and self._paused_since is not None
        if new != self.draw_a:
            self.draw_log.append((now, new))
        self.draw_a = new

    # ----------------------------------------------------------------- sessions
    async def _session_events(self, now: datetime) -> None:
        car = self.car
        if car is None or self.done:
            return
        if self.transaction_id is None and car.arrival <= now < car.departure:
            await self._start_transaction(now)
        elif self.transaction_id is not None and (now >= car.departure or self.session_wh >= car.energy_wh):
            await self._stop_transaction(now, "EVDisconnected" if now >= car.departure else "Local")

    async def _start_transaction(self, now: datetime) -> None:
        car = self.car
        assert car is not None
        if self.protocol == "ocpp1.6":
            await self._cp.call(call16.StatusNotification(connector_id=1, error_code="NoError", status="Preparing"))
            await self._cp.call(call16.Authorize(id_tag=f"TAG-{self.charger_id}"))
            # A real charger reads the StartTransaction.conf (and its id) before the next frame; here
            # the reader may hand a SetChargingProfile for the new transaction to us before this
            # coroutine resumes, so a start in flight counts as a transaction for TxProfiles.
            self._starting = True
            try:
                response = await self._cp.call(call16.StartTransaction(
                    connector_id=1, id_tag=f"TAG-{self.charger_id}", meter_start=int(self.energy_wh),
                    timestamp=_iso(now)))
            finally:
                self._starting = False
            self.transaction_id = str(response.transaction_id)
            self.session_log.append(SessionRecord(self.transaction_id, self.clock()))
            await self._cp.call(call16.StatusNotification(connector_id=1, error_code="NoError", status="Charging"))
        else:
            # Plugging in occupies the connector before the transaction starts (E02: cable first).
            await self._cp.call(call201.StatusNotification(timestamp=_iso(now), connector_status="Occupied",
                                                           evse_id=1, connector_id=1))
            self.transaction_id = f"{self.charger_id}-{next(self._tx_numbers)}-{int(now.timestamp())}"
            self.session_log.append(SessionRecord(self.transaction_id, self.clock()))
            self._tx_seq = itertools.count(0)
            await self._cp.call(call201.TransactionEvent(
                event_type="Started", timestamp=_iso(now), trigger_reason="CablePluggedIn", seq_no=next(self._tx_seq),
                transaction_info={"transaction_id": self.transaction_id, "charging_state": "EVConnected"},
                id_token={"id_token": f"TAG-{self.charger_id}", "type": "ISO14443"}, evse={"id": 1, "connector_id": 1},
                meter_value=[self._meter_value(now)]))
            if car.iso15118:
                await self._cp.call(call201.NotifyEVChargingNeeds(evse_id=1, charging_needs=self._needs(car)))
        self.session_wh = 0.0

    def _needs(self, car: SimCar) -> dict[str, Any]:
        """The car's ``chargingNeeds``: AC parameters, and on 2.1 a V2X car's ``v2xChargingParameters``."""
        needs: dict[str, Any] = {
            "requested_energy_transfer": "AC_three_phase" if car.phases == 3 else "AC_single_phase",
            "departure_time": _iso(car.departure),
            "ac_charging_parameters": {
                "energy_amount": int(car.energy_wh), "ev_min_current": int(car.min_current_a),
                "ev_max_current": int(car.max_current_a), "ev_max_voltage": 400}}
        if self.protocol == "ocpp2.1" and car.discharge_a > 0:
            needs["requested_energy_transfer"] = "AC_BPT"
            v2x: dict[str, Any] = {"min_charge_current": car.min_current_a, "max_charge_current": car.max_current_a,
                                   "max_discharge_current": car.discharge_a,
                                   "ev_target_energy_request": car.energy_wh}
            if car.min_v2x_energy_wh is not None:
                v2x["ev_min_v2x_energy_request"] = car.min_v2x_energy_wh
            needs["v2x_charging_parameters"] = v2x
        return needs

    async def _stop_transaction(self, now: datetime, reason: str) -> None:
        tx = self.transaction_id
        if self.session_log and self.session_log[-1].stopped_at is None:
            self.session_log[-1].stopped_at = self.clock()
            self.session_log[-1].reason = reason
        self.draw_log.append((self.clock(), 0.0))
        self.transaction_id = None
        self.done = True
        self.draw_a = 0.0
        self.store.drop_tx()
        self.hold_log.append((self.clock(), 0, None))
        if self.protocol == "ocpp1.6":
            await self._cp.call(call16.StopTransaction(meter_stop=int(self.energy_wh), timestamp=_iso(now),
                                                       transaction_id=int(tx or 0), reason=reason))
            await self._cp.call(call16.StatusNotification(connector_id=1, error_code="NoError", status="Available"))
        else:
            await self._cp.call(call201.TransactionEvent(
                event_type="Ended", timestamp=_iso(now), trigger_reason="EVCommunicationLost",
                seq_no=next(self._tx_seq), transaction_info={"transaction_id": tx, "stopped_reason": reason},
                meter_value=[self._meter_value(now)]))
            await self._cp.call(call201.StatusNotification(timestamp=_iso(now), connector_status="Available",
                                                           evse_id=1, connector_id=1))

    def remote_start_status(self) -> str:
        """Accepted when a car is plugged in (or due) and no transaction runs: it starts now."""
        ok = self.car is not None and self.transaction_id is None and not self.done and not self._starting
        return "Accepted" if ok else "Rejected"

    def remote_start(self) -> None:
        if self.remote_start_status() == "Accepted" and self.car is not None:
            now = self.clock()
            if self.car.arrival > now:
                self.car.arrival = now  # the next tick starts the transaction

    def remote_stop_status(self, transaction_id: str) -> str:
        return "Accepted" if self.transaction_id is not None and self.transaction_id == transaction_id else "Rejected"

    async def remote_stop(self, transaction_id: str) -> None:
        if self.transaction_id is not None and self.transaction_id == transaction_id:
            await self._stop_transaction(self.clock(), "Remote")

    async def _tell_asleep(self, now: datetime) -> None:
        """The car stopped of its own accord: SuspendedEV (1.6 status, 2.0.1 charging state)."""
        if self.protocol == "ocpp1.6":
            await self._cp.call(call16.StatusNotification(connector_id=1, error_code="NoError", status="SuspendedEV"))
        else:
            await self._send_meter(now, "ChargingStateChanged")

    def _sampled(self) -> list[dict[str, Any]]:
        car = self.car
        phases = min(car.phases, 3) if car else 3
        values: list[dict[str, Any]] = [
            {"value": f"{self.energy_wh:.1f}", "measurand": "Energy.Active.Import.Register", "unit": "Wh"},
            {"value": f"{max(self.draw_a, 0.0) * phases * VOLTAGE_V:.1f}", "measurand": "Power.Active.Import",
             "unit": "W"},
        ]
        for k, name in enumerate(("L1", "L2", "L3")):
            value = self.draw_a if k < phases else 0.0
            values.append({"value": f"{max(value, 0.0):.2f}", "measurand": "Current.Import", "phase": name,
                           "unit": "A"})
            if value < 0:  # discharging (V2X): the current it exports
                values.append({"value": f"{-value:.2f}", "measurand": "Current.Export", "phase": name, "unit": "A"})
        if self.export_wh > 0:
            values.append({"value": f"{self.export_wh:.1f}", "measurand": "Energy.Active.Export.Register",
                           "unit": "Wh"})
        if car is not None:
            soc = 100.0 * min(1.0, (car.battery_wh - car.energy_wh + self.session_wh) / car.battery_wh)
            values.append({"value": f"{max(soc, 0.0):.1f}", "measurand": "SoC", "unit": "Percent"})
        return values

    def _meter_value(self, now: datetime) -> dict[str, Any]:
        values = self._sampled()
        if self.protocol in ("ocpp2.0.1", "ocpp2.1"):
            for v in values:
                v["value"] = float(v["value"])
                v["unit_of_measure"] = {"unit": v.pop("unit")}
        return {"timestamp": _iso(now), "sampled_value": values}

    async def _send_meter(self, now: datetime, trigger_reason: str = "MeterValuePeriodic") -> None:
        if self.protocol == "ocpp1.6":
            await self._cp.call(call16.MeterValues(connector_id=1, transaction_id=int(self.transaction_id or 0),
                                                   meter_value=[self._meter_value(now)]))
        else:
            await self._cp.call(call201.TransactionEvent(
                event_type="Updated", timestamp=_iso(now), trigger_reason=trigger_reason, seq_no=next(self._tx_seq),
                transaction_info={"transaction_id": self.transaction_id,
                                  "charging_state": "Charging" if self.draw_a > 0 else
                                  "SuspendedEV" if self.asleep else "SuspendedEVSE"},
                meter_value=[self._meter_value(now)]))

    # ----------------------------------------------------------------- profiles in
    async def _delay(self) -> None:
        if self.misbehaviour.answer_delay_s:
            await asyncio.sleep(self.misbehaviour.answer_delay_s)

    def accept_profile(self, evse: int, profile: dict[str, Any]) -> str:
        """Validate and install a profile like a real charger; returns Accepted or Rejected."""
        schedule = profile["charging_schedule"]
        schedule = schedule[0] if isinstance(schedule, list) else schedule
        periods = schedule["charging_schedule_period"]
        starts = [p["start_period"] for p in periods]
        limits = [float(p["limit"]) for p in periods]
        record = {"at": self.clock(), "purpose": profile["charging_profile_purpose"], "evse": evse,
                  "limits": limits, "starts": starts, "unit": schedule["charging_rate_unit"],
                  "booted": self.booted_at is not None}
        purpose = profile["charging_profile_purpose"]
        if purpose == "TxProfile" and self._tx_errors_sent < self.misbehaviour.tx_profile_errors:
            self._tx_errors_sent += 1
            raise InternalError(description="transient trouble (simulated)")
        bad_shape = starts[0] != 0 or starts != sorted(set(starts)) or (
            self.misbehaviour.watts_only and schedule["charging_rate_unit"] != "W")
        refused = self.misbehaviour.rejects_profiles or (
            self.misbehaviour.rejects_tx_profile and purpose == "TxProfile") or (
            purpose == "TxProfile" and self.transaction_id is None and not self._starting) or (
            self.misbehaviour.rejects_zero_amps and limits[0] == 0)
        if bad_shape or refused:
            record["result"] = "Rejected"
        else:
            self.store.install(evse, profile)
            self.hold_log.append((self.clock(), evse, profile))
            record["result"] = "Accepted"
            # A charger enforces an accepted limit at once (its PWM signal), not at the next tick
            # of this simulation: else a decrease accepted before an increase could still be drawn
            # after the increase, which no charger does.
            self._advance(self.clock())
            self.accepted_log.append(AcceptedProfile(record["at"], evse, profile))
        self.profile_log.append(record)
        if record["result"] == "Rejected":
            self.rejected_calls += 1
        return str(record["result"])

    def composite(self, duration: int) -> dict[str, Any] | None:
        """The composite schedule now [A per phase]."""
        now = self.clock()
        limit = self.limit_now(now)
        if limit is None:
            return None
        return {"start_schedule": _iso(now), "duration": duration, "charging_rate_unit": "A",
                "charging_schedule_period": [{"start_period": 0, "limit": round(limit, 1)}]}

    def in_unit(self, schedule: dict[str, Any], unit: str | None) -> dict[str, Any]:
        """``schedule`` (in A per phase) in the unit a GetCompositeSchedule asked for (W: in total)."""
        if unit != "W" or schedule["charging_rate_unit"] == "W":
            return schedule
        phases = min(self.car.phases, 3) if self.car else 3
        periods = [{**p, "limit": round(p["limit"] * VOLTAGE_V * phases, 1)}
                   for p in schedule["charging_schedule_period"]]
        return {**schedule, "charging_rate_unit": "W", "charging_schedule_period": periods}

    def config_values(self) -> dict[str, str]:
        """1.6 configuration keys and their values (``WRITABLE_16`` may be changed)."""
        units = "Power" if self.misbehaviour.watts_only else "Current,Power"
        values = {"ChargeProfileMaxStackLevel": "8", "ChargingScheduleMaxPeriods": "24",
                  "ChargingScheduleAllowedChargingRateUnit": units,
                  "MaxChargingProfilesInstalled": "10",
                  "HeartbeatInterval": str(self.heartbeat_s),
                  "MeterValueSampleInterval": str(int(self.meter_interval_s)), "MeterValuesSampledData": MEASURANDS}
        values.update({name: v for (component, name), v in self.variables.items() if not component})
        return values

    def device_model(self) -> dict[tuple[str, str], str]:
        """2.0.1 (component, variable) -> value (``WRITABLE_201`` may be set)."""
        values = {("SmartChargingCtrlr", "Enabled"): "true", ("SmartChargingCtrlr", "PeriodsPerSchedule"): "24",
                  ("SmartChargingCtrlr", "RateUnit"): "W" if self.misbehaviour.watts_only else "A,W",
                  ("SmartChargingCtrlr", "ProfileStackLevel"): "8",
                  ("SmartChargingCtrlr", "Entries"): "10",
                  ("OCPPCommCtrlr", "HeartbeatInterval"): str(self.heartbeat_s),
                  ("SampledDataCtrlr", "TxUpdatedInterval"): str(int(self.meter_interval_s)),
                  ("SampledDataCtrlr", "TxUpdatedMeasurands"): MEASURANDS}
        values.update({key: v for key, v in self.variables.items() if key[0]})
        return values

    def write(self, component: str, name: str, value: str) -> str:
        """Set a configuration key (component "" on 1.6) or variable; the status of the spec's answer."""
        if component:
            model = self.device_model()
            if (component, name) not in model:
                return "UnknownComponent" if all(c != component for c, _ in model) else "UnknownVariable"
        elif name not in self.config_values():
            return "NotSupported"
        if name not in WRITABLE:
            return "Rejected"
        if name in ("HeartbeatInterval", "TxUpdatedInterval", "MeterValueSampleInterval"):
            try:
                seconds = int(value)
            except ValueError:
                return "Rejected"
            if seconds < 0:
                return "Rejected"
            if name == "HeartbeatInterval":
                self.heartbeat_s = seconds
            else:
                self.meter_interval_s = float(seconds)
            return "Accepted"
        self.variables[(component, name)] = value
        return "Accepted"

    def read(self, component: str, name: str) -> tuple[str, str | None]:
        """(attribute status, value) of a 2.0.1 GetVariables item."""
        known = self.device_model()
        if (component, name) in known:
            return "Accepted", known[(component, name)]
        if all(c != component for c, _ in known):
            return "UnknownComponent", None
        return "UnknownVariable", None

    def profiles_report(self, criterion: dict[str, Any], evse_id: int | None) -> dict[int, list[dict[str, Any]]]:
        """2.0.1 GetChargingProfiles: the installed profiles matching, per EVSE."""
        sources = criterion.get("charging_limit_source")
        if sources and "CSO" not in sources:  # every profile here came from the CSMS
            return {}
        ids = criterion.get("charging_profile_id")
        out: dict[int, list[dict[str, Any]]] = {}
        for (purpose, stack, evse), profile in sorted(self.store.profiles.items()):
            if (evse_id is not None and evse != evse_id) or (
                    criterion.get("charging_profile_purpose") not in (None, purpose)) or (
                    criterion.get("stack_level") not in (None, stack)) or (ids and profile.get("id") not in ids):
                continue
            out.setdefault(evse, []).append(profile)
        return out

    async def send_profiles_report(self, request_id: int, report: dict[int, list[dict[str, Any]]]) -> None:
        evses = sorted(report)
        for k, evse in enumerate(evses):
            await self._cp.call(call201.ReportChargingProfiles(
                request_id=request_id, charging_limit_source="CSO", charging_profile=report[evse], evse_id=evse,
                tbc=k < len(evses) - 1))


def _dropped(sim: SimulatedCharger, raw_msg: str) -> bool:
    """True for a CALL from the CSMS that a ``silent`` charger swallows without an answer."""
    return sim.misbehaviour.silent and raw_msg.lstrip().startswith("[2")


class _Client16(Cp16):  # type: ignore[misc]
    def __init__(self, charger_id: str, connection: Any, sim: SimulatedCharger) -> None:
        super().__init__(charger_id, connection, response_timeout=30)
        self.sim = sim

    async def route_message(self, raw_msg: str) -> None:
        if not _dropped(self.sim, raw_msg):
            await super().route_message(raw_msg)

    @on(Action16.set_charging_profile)
    async def set_profile(self, connector_id: int, cs_charging_profiles: dict[str, Any]) -> Any:
        await self.sim._delay()
        return result16.SetChargingProfile(status=self.sim.accept_profile(connector_id, cs_charging_profiles))

    @on(Action16.clear_charging_profile)
    async def clear_profile(self, **kw: Any) -> Any:
        n = self.sim.clear_profiles(kw.get("charging_profile_purpose"), kw.get("id"))
        return result16.ClearChargingProfile(status="Accepted" if n else "Unknown")

    @on(Action16.get_composite_schedule)
    async def composite(self, connector_id: int, duration: int, **kw: Any) -> Any:
        schedule = self.sim.composite(duration)
        if schedule is None:
            return result16.GetCompositeSchedule(status="Rejected")
        schedule = self.sim.in_unit(schedule, kw.get("charging_rate_unit"))
        start = schedule.pop("start_schedule")
        return result16.GetCompositeSchedule(status="Accepted", connector_id=connector_id, schedule_start=start,
                                             charging_schedule=schedule)

    @on(Action16.get_configuration)
    async def get_configuration(self, key: list[str] | None = None) -> Any:
        values = self.sim.config_values()
        wanted = key or list(values)
        return result16.GetConfiguration(
            configuration_key=[{"key": k, "readonly": k not in WRITABLE, "value": values[k]}
                               for k in wanted if k in values],
            unknown_key=[k for k in wanted if k not in values] or None)

    @on(Action16.change_configuration)
    async def change_configuration(self, key: str, value: str) -> Any:
        return result16.ChangeConfiguration(status=self.sim.write("", key, value))

    @on(Action16.trigger_message)
    async def trigger(self, requested_message: str, **kw: Any) -> Any:
        return result16.TriggerMessage(status=self.sim.trigger_status(requested_message))

    @after(Action16.trigger_message)
    async def triggered(self, requested_message: str, **kw: Any) -> None:
        if self.sim.trigger_status(requested_message) == "Accepted":
            await self.sim.send_triggered(requested_message)

    @on(Action16.data_transfer)
    async def data_transfer(self, vendor_id: str, **kw: Any) -> Any:
        return result16.DataTransfer(status="UnknownVendorId")  # no vendor extensions here

    @on(Action16.remote_start_transaction)
    async def remote_start(self, id_tag: str, **kw: Any) -> Any:
        return result16.RemoteStartTransaction(status=self.sim.remote_start_status())

    @after(Action16.remote_start_transaction)
    async def remote_started(self, id_tag: str, **kw: Any) -> None:
        self.sim.remote_start()

    @on(Action16.remote_stop_transaction)
    async def remote_stop(self, transaction_id: int) -> Any:
        return result16.RemoteStopTransaction(status=self.sim.remote_stop_status(str(transaction_id)))

    @after(Action16.remote_stop_transaction)
    async def remote_stopped(self, transaction_id: int) -> None:
        await self.sim.remote_stop(str(transaction_id))

    @on(Action16.reset)
    async def reset(self, type: str) -> Any:
        return result16.Reset(status="Accepted")


class _Client201(Cp201):  # type: ignore[misc]
    def __init__(self, charger_id: str, connection: Any, sim: SimulatedCharger) -> None:
        super().__init__(charger_id, connection, response_timeout=30)
        self.sim = sim

    async def route_message(self, raw_msg: str) -> None:
        if not _dropped(self.sim, raw_msg):
            await super().route_message(raw_msg)

    @on(Action201.set_charging_profile)
    async def set_profile(self, evse_id: int, charging_profile: dict[str, Any], **kw: Any) -> Any:
        await self.sim._delay()
        return result201.SetChargingProfile(status=self.sim.accept_profile(evse_id, charging_profile))

    @on(Action201.clear_charging_profile)
    async def clear_profile(self, **kw: Any) -> Any:
        criteria = kw.get("charging_profile_criteria") or {}
        n = self.sim.clear_profiles(criteria.get("charging_profile_purpose"), kw.get("charging_profile_id"))
        return result201.ClearChargingProfile(status="Accepted" if n else "Unknown")

    @on(Action201.get_composite_schedule)
    async def composite(self, duration: int, evse_id: int, **kw: Any) -> Any:
        schedule = self.sim.composite(duration)
        if schedule is None:
            return result201.GetCompositeSchedule(status="Rejected")
        schedule = self.sim.in_unit(schedule, kw.get("charging_rate_unit"))
        return result201.GetCompositeSchedule(status="Accepted", schedule={
            "evse_id": evse_id, "duration": duration, "schedule_start": schedule["start_schedule"],
            "charging_rate_unit": schedule["charging_rate_unit"],
            "charging_schedule_period": schedule["charging_schedule_period"]})

    @on(Action201.get_variables)
    async def get_variables(self, get_variable_data: list[dict[str, Any]], **kw: Any) -> Any:
        out = []
        for item in get_variable_data:
            entry = {"component": item["component"], "variable": item["variable"]}
            if item.get("attribute_type", "Actual") != "Actual":
                entry["attribute_status"] = "NotSupportedAttributeType"
            else:
                status, value = self.sim.read(item["component"]["name"], item["variable"]["name"])
                entry["attribute_status"] = status
                if value is not None:
                    entry["attribute_value"] = value
            out.append(entry)
        return result201.GetVariables(get_variable_result=out)

    @on(Action201.set_variables)
    async def set_variables(self, set_variable_data: list[dict[str, Any]], **kw: Any) -> Any:
        out = []
        for item in set_variable_data:
            if item.get("attribute_type", "Actual") != "Actual":
                status = "NotSupportedAttributeType"
            else:
                status = self.sim.write(item["component"]["name"], item["variable"]["name"], item["attribute_value"])
            out.append({"attribute_status": status, "component": item["component"], "variable": item["variable"]})
        return result201.SetVariables(set_variable_result=out)

    @on(Action201.trigger_message)
    async def trigger(self, requested_message: str, **kw: Any) -> Any:
        return result201.TriggerMessage(status=self.sim.trigger_status(requested_message))

    @after(Action201.trigger_message)
    async def triggered(self, requested_message: str, **kw: Any) -> None:
        if self.sim.trigger_status(requested_message) == "Accepted":
            await self.sim.send_triggered(requested_message)

    @on(Action201.data_transfer)
    async def data_transfer(self, vendor_id: str, **kw: Any) -> Any:
        return result201.DataTransfer(status="UnknownVendorId")  # no vendor extensions here

    @on(Action201.get_charging_profiles)
    async def get_charging_profiles(self, request_id: int, charging_profile: dict[str, Any], **kw: Any) -> Any:
        found = self.sim.profiles_report(charging_profile, kw.get("evse_id"))
        return result201.GetChargingProfiles(status="Accepted" if found else "NoProfiles")

    @after(Action201.get_charging_profiles)
    async def report_profiles(self, request_id: int, charging_profile: dict[str, Any], **kw: Any) -> None:
        found = self.sim.profiles_report(charging_profile, kw.get("evse_id"))
        if found:
            await self.sim.send_profiles_report(request_id, found)

    @on(Action201.request_start_transaction)
    async def remote_start(self, id_token: dict[str, Any], remote_start_id: int, **kw: Any) -> Any:
        return result201.RequestStartTransaction(status=self.sim.remote_start_status())

    @after(Action201.request_start_transaction)
    async def remote_started(self, id_token: dict[str, Any], remote_start_id: int, **kw: Any) -> None:
        self.sim.remote_start()

    @on(Action201.request_stop_transaction)
    async def remote_stop(self, transaction_id: str, **kw: Any) -> Any:
        return result201.RequestStopTransaction(status=self.sim.remote_stop_status(transaction_id))

    @after(Action201.request_stop_transaction)
    async def remote_stopped(self, transaction_id: str, **kw: Any) -> None:
        await self.sim.remote_stop(transaction_id)

    @on(Action201.reset)
    async def reset(self, type: str, **kw: Any) -> Any:
        return result201.Reset(status="Accepted")


class _Client21(_Client201):
    """A 2.1 station: the 2.0.1 behaviour, every message checked against the 2.1 schemas."""

    _call = call21
    _call_result = result21
    _ocpp_version = "2.1"


class Fleet:
    """Many simulated chargers run concurrently in one process."""

    def __init__(self, chargers: list[SimulatedCharger]) -> None:
        self.chargers = chargers

    @classmethod
    def evening_depot(cls, url: str, n: int, *, start: datetime, clock: Callable[[], datetime],
                      prefix: str = "CP", seed: int = 1, meter_interval_s: float = 300.0, tick_s: float = 0.1,
                      protocol: str = "mixed", password: str | None = None) -> Fleet:
        """Cars arriving 16-20 h and leaving 5-8 h next morning, mixed 1- and 3-phase, some ISO 15118."""
        rng = random.Random(seed)
        day = start.replace(hour=0, minute=0, second=0, microsecond=0)
        chargers = []
        for i in range(n):
            proto = protocol if protocol != "mixed" else ("ocpp1.6" if i % 2 == 0 else "ocpp2.0.1")
            arrival = day + timedelta(hours=rng.uniform(16, 20))
            departure = day + timedelta(days=1, hours=rng.uniform(5, 8))
            phases = 1 if i % 4 == 3 else 3
            car = SimCar(arrival=arrival, departure=departure, energy_wh=rng.uniform(8000, 40000) / (3 / phases),
                         max_current_a=rng.choice([16.0, 32.0]), phases=phases,
                         iso15118=proto == "ocpp2.0.1" and i % 3 == 0)
            chargers.append(SimulatedCharger(f"{prefix}{i + 1:03d}", url, protocol=proto, car=car, clock=clock,
                                             meter_interval_s=meter_interval_s, tick_s=tick_s, password=password,
                                             seed=seed + i))
        return cls(chargers)

    async def start(self) -> None:
        for charger in self.chargers:
            charger.start()

    async def wait_connected(self, timeout: float = 30.0) -> None:
        await asyncio.wait_for(asyncio.gather(*(c.connected.wait() for c in self.chargers)), timeout)

    async def stop(self) -> None:
        await asyncio.gather(*(c.stop() for c in self.chargers))

    def total_draw_a(self) -> list[float]:
        """Per grid phase (RST wiring, single-phase cars on L1) what the fleet draws now [A]."""
        out = [0.0, 0.0, 0.0]
        for c in self.chargers:
            phases = c.car.phases if c.car else 3
            for k in range(min(phases, 3)):
                out[k] += c.draw_a
        return out

