"""OCPP 2.1 (DESIGN 3.9): the 2.0.1 dialect on the 2.1 schemas, plus V2X discharge setpoints.

The messages the balancer sends for smart charging keep their 2.0.1 shape in 2.1 (validated
against the 2.1 schemas by the ``ocpp`` package's 2.1 ChargePoint); what 2.1 adds here is the
discharge period (``profiles._setpoint``) and reading ``v2xChargingParameters`` (``handlers21``).
"""

from __future__ import annotations

from ocpp.v21.enums import Action

from adapters.ocpp.dialects.v201 import Dialect201
from adapters.ocpp.handlers21 import ChargePoint21

__all__ = ["V21", "Dialect21"]


class Dialect21(Dialect201):
    """2.1: everything 2.0.1 does, with V2X."""

    subprotocol = "ocpp2.1"
    schema_version = "2.1"
    known_actions = frozenset(a.value for a in Action)
    charge_point_class = ChargePoint21
    discharge_setpoints = True


V21 = Dialect21()
