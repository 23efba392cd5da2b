"""Sampled values (1.6 MeterValues, 2.0.1 meterValue) -> the fields of a ``MeterSample``.

Units: A, W, kW, Wh, kWh, Percent; phases L1..L3, also written L1-N (line to neutral). A value
without a measurand is the energy register (the spec's default). Unknown or broken entries are
skipped, never fatal.
"""

from __future__ import annotations

from typing import Any

__all__ = ["parse_sampled_values"]

_PHASE = {"L1": 0, "L2": 1, "L3": 2, "L1-N": 0, "L2-N": 1, "L3-N": 2}


def _value(raw: Any) -> float | None:
    try:
        value = float(raw)
    except (TypeError, ValueError):
        return None
    return value if value == value and abs(value) < 1e12 else None


def parse_sampled_values(values: list[dict[str, Any]]) -> dict[str, Any]:
    """Keyword arguments for ``MeterSample`` (current per charger phase, power, energy, SoC)."""
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
