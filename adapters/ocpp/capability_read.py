"""Reading a charger's capabilities at connect, through its dialect, and whether it answered."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from adapters.ocpp.capabilities import Capabilities

if TYPE_CHECKING:
    from adapters.ocpp.link import ChargerLink

__all__ = ["read_capabilities"]

log = logging.getLogger("adapters.ocpp.pusher")


async def read_capabilities(link: ChargerLink, call: Callable[[Any], Awaitable[Any]]) -> tuple[Capabilities, bool]:
    """The charger's capabilities (safe defaults for what it does not say), and whether it answered
    in time: a timeout is "no answer", any other failure (a CALLERROR, a bad answer) is an answer."""
    try:
        return await link.dialect.read_capabilities(call), True
    except Exception as exc:
        log.info("charger %s: capabilities not read (%r); safe defaults", link.charger_id, exc)
        return Capabilities(), not isinstance(exc, TimeoutError)
