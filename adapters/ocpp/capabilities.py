"""What a charger told us at boot about its smart charging (or the safe defaults)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["Capabilities", "config_int"]


@dataclass
class Capabilities:
    """What a charger told us at boot (or the safe defaults when it did not)."""

    max_periods: int = 24
    rate_units: tuple[str, ...] = ("A",)
    max_stack_level: int = 8
    meter_interval_s: int = 60
    source: str = "default"
    trigger_meter_values: bool = True
    """False once it answered a TriggerMessage for MeterValues Rejected or NotImplemented (or a
    CALLERROR): not asked again on this connection (``meter_trigger``)."""

    def as_dict(self) -> dict[str, Any]:
        return {"max_periods": self.max_periods, "rate_units": list(self.rate_units),
                "max_stack_level": self.max_stack_level, "meter_interval_s": self.meter_interval_s,
                "source": self.source, "trigger_meter_values": self.trigger_meter_values}


def config_int(value: Any, default: int) -> int:
    """A configuration value read as an integer; ``default`` when it is none."""
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return default
