"""Sampled values (1.6 MeterValues, 2.0.1 meterValue) -> a ``MeterSample``, with what is implausible left out.

Units: A, W, kW, Wh, kWh, Percent; phases L1..L3, also written L1-N (line to neutral). A value
without a measurand is the energy register (the spec's default). Unknown entries and values that
are not numbers are skipped.

Readings no charger can have measured are not believed (a charger reporting 1e11 A would
otherwise be the site's measured current): a current per phase below -1 A or above
``MeterBounds.current_a``, NaN or infinite values, a power outside what that current allows, a
state of charge outside 0-100 %, an energy register below zero, falling by more than 1 kWh, or
rising faster than the charger's power allows (plus 1 kWh). An implausible current drops all
currents of the sample (a partly believed three-phase reading misleads); the other fields are
dropped one by one. Each refusal is counted (``implausible_meter_values``) and logged, rate-limited.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from balancer.events import MeterSample

if TYPE_CHECKING:
    from adapters.ocpp.link import ChargerLink

__all__ = ["MeterBounds", "MeterReader", "parse_sampled_values"]

log = logging.getLogger(__name__)

_PHASE = {"L1": 0, "L2": 1, "L3": 2, "L1-N": 0, "L2-N": 1, "L3-N": 2}
NEGATIVE_SLACK_A = 1.0
"""A current this far below zero is meter noise at no load [A]."""
ENERGY_SLACK_WH = 1000.0
"""How far the energy register may move beyond what the charger's power explains [Wh]."""
GRID_VOLTAGE_FACTOR = 1.1
"""The highest grid voltage as a multiple of the nominal one (EN 50160: +10 %)."""


def _value(raw: Any) -> float | None:
    try:
        return float(raw)
    except (TypeError, ValueError, OverflowError):
        return None


def parse_sampled_values(values: list[dict[str, Any]]) -> dict[str, Any]:
    """Keyword arguments for ``MeterSample`` (current per charger phase, power, energy, SoC), unchecked."""
    current: list[float | None] = [None, None, None]
    total_current: float | None = None
    power_w = energy_wh = soc = None
    for item in values:
        if not isinstance(item, dict):
            continue
        value = _value(item.get("value"))
        if value is None:
            continue
        measurand = item.get("measurand") or "Energy.Active.Import.Register"
        unit_raw = item.get("unit")
        if unit_raw is None and isinstance(item.get("unit_of_measure"), dict):
            unit_raw = item["unit_of_measure"].get("unit")
        unit = str(unit_raw or "").lower()
        phase = item.get("phase")
        if measurand == "Current.Import":
            if phase in _PHASE:
                current[_PHASE[phase]] = value
            elif phase is None:
                total_current = value
        elif measurand == "Power.Active.Import" and phase is None:
            power_w = value * 1000.0 if unit == "kw" else value
        elif measurand == "Energy.Active.Import.Register" and phase is None:
            energy_wh = value * 1000.0 if unit == "kwh" else value
        elif measurand == "SoC":
            soc = value
    if all(c is None for c in current) and total_current is not None:
        current = [total_current, None, None]
    return {"current_a": tuple(current), "power_w": power_w, "energy_wh": energy_wh, "soc_pct": soc}


@dataclass(frozen=True, slots=True)
class MeterBounds:
    """What one charger can draw: ``current_a`` per phase [A] on ``phases`` phases at ``voltage_v`` [V]."""

    current_a: float
    phases: int
    voltage_v: float

    @classmethod
    def for_charger(cls, max_current_a: float, phases: int, voltage_v: float) -> MeterBounds:
        """Twice the configured maximum, and at least 32 A above it: a charger configured below its
        hardware rating that ignores its limits must still be believed (its draw is reserved)."""
        return cls(max_current_a + max(max_current_a, 32.0), phases, voltage_v)

    @property
    def power_w(self) -> float:
        return self.current_a * self.voltage_v * GRID_VOLTAGE_FACTOR * self.phases


def _problems(sample: dict[str, Any], bounds: MeterBounds, at: datetime,
              last_energy: tuple[datetime, float] | None) -> dict[str, str]:
    """Field -> why it is implausible."""
    problems = {}
    for k, current in enumerate(sample["current_a"]):
        if current is not None and not (-NEGATIVE_SLACK_A <= current <= bounds.current_a):
            problems["current_a"] = f"current L{k + 1} {current:g} A outside [-1, {bounds.current_a:g}] A"
            break
    power = sample["power_w"]
    if power is not None and not (-NEGATIVE_SLACK_A * bounds.voltage_v * bounds.phases <= power <= bounds.power_w):
        problems["power_w"] = f"power {power:g} W outside [0, {bounds.power_w:.0f}] W"
    soc = sample["soc_pct"]
    if soc is not None and not (0.0 <= soc <= 100.0):
        problems["soc_pct"] = f"state of charge {soc:g} % outside [0, 100] %"
    energy = sample["energy_wh"]
    if energy is not None:
        if not (math.isfinite(energy) and energy >= 0.0):
            problems["energy_wh"] = f"energy register {energy:g} Wh"
        elif last_energy is not None:
            then, before = last_energy
            hours = max(0.0, (at - then).total_seconds()) / 3600.0
            rise = bounds.power_w * hours + ENERGY_SLACK_WH
            if energy < before - ENERGY_SLACK_WH:
                problems["energy_wh"] = f"energy register fell from {before:g} to {energy:g} Wh"
            elif energy > before + rise:
                problems["energy_wh"] = (f"energy register rose from {before:g} to {energy:g} Wh in "
                                         f"{hours * 3600:.0f} s (at most {rise:.0f} Wh)")
    return problems


def _timestamp(raw: Any, default: datetime) -> datetime:
    if not isinstance(raw, str):
        return default
    try:
        parsed = datetime.fromisoformat(raw.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return default
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


class MeterReader:
    """One charger's meter readings: parsed, checked against what it can draw, counted when not believed.

    Kept per charger across its connections: the energy register is compared with the previous
    reading (believed or not, so a register that was reset is believed from its second reading).
    """

    def __init__(self, link: ChargerLink) -> None:
        self.link = link
        self.last_energy: tuple[datetime, float] | None = None

    def bounds(self) -> MeterBounds:
        charger = self.link.charger
        return MeterBounds.for_charger(charger.max_current_a, charger.phases,
                                       self.link.server.voltage.get(charger.id, 230.0))

    def sample(self, entry: dict[str, Any]) -> MeterSample | None:
        """The ``MeterSample`` of one meterValue entry (snake_case, as the ``ocpp`` package hands it
        over) without its implausible fields; None when nothing believable is left."""
        now = self.link.now()
        values = entry.get("sampled_value")
        fields = parse_sampled_values(values if isinstance(values, list) else [])
        at = _timestamp(entry.get("timestamp"), now)
        problems = _problems(fields, self.bounds(), at, self.last_energy)
        if fields["energy_wh"] is not None and math.isfinite(fields["energy_wh"]):
            self.last_energy = (at, fields["energy_wh"])
        if problems:
            server = self.link.server
            server.counters["implausible_meter_values"] += 1
            server.log_limiter.log(log, logging.WARNING, self.link.charger_id, "meter",
                                   "charger %s: implausible meter values ignored: %s", self.link.charger_id,
                                   "; ".join(problems.values()))
            for name in problems:
                fields[name] = (None, None, None) if name == "current_a" else None
        if all(c is None for c in fields["current_a"]) and all(
                fields[k] is None for k in ("power_w", "energy_wh", "soc_pct")):
            return None
        return MeterSample(self.link.charger_id, now, **fields)
