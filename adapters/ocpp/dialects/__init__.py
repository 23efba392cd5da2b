"""The OCPP-J versions the server speaks, one ``Dialect`` each; the registry picks one at connect.

Adding a version (say 2.1): write ``dialects/v21.py`` with a ``Dialect`` subclass (subclassing
``Dialect201`` and overriding what changed is the short way; its ``charge_point_class`` the
``ocpp`` package's ChargePoint for that version with the handlers it needs), and add its instance
to ``REGISTERED`` below, in order of preference. The server offers every registered subprotocol.
"""

from __future__ import annotations

from adapters.ocpp.dialects.base import Dialect
from adapters.ocpp.dialects.v16 import V16
from adapters.ocpp.dialects.v21 import V21
from adapters.ocpp.dialects.v201 import V201

__all__ = ["DEFAULT", "REGISTERED", "SUBPROTOCOLS", "Dialect", "for_subprotocol", "resolve"]

REGISTERED: tuple[Dialect, ...] = (V21, V201, V16)
"""Every dialect, the preferred first (the websocket handshake picks the first both sides know)."""
SUBPROTOCOLS: tuple[str, ...] = tuple(d.subprotocol for d in REGISTERED)
DEFAULT: Dialect = V16
"""What a link speaks before its charger has connected (the oldest: what it was before issue 12)."""
_BY_NAME = {d.subprotocol: d for d in REGISTERED}


def for_subprotocol(name: str | None) -> Dialect | None:
    """The dialect of a websocket subprotocol; None for one the server does not speak."""
    return _BY_NAME.get(name or "")


def resolve(version: Dialect | str) -> Dialect:
    """``version`` itself, or the dialect of the subprotocol it names (ValueError: none)."""
    if isinstance(version, Dialect):
        return version
    dialect = _BY_NAME.get(version)
    if dialect is None:
        raise ValueError(f"no OCPP dialect {version!r}")
    return dialect
