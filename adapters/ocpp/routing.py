"""Typed faces of ``ocpp.routing.on`` and ``after``.

The ``ocpp`` package ships no type information, so its decorators would erase the signature of
every handler they wrap; these keep it, for mypy --strict over the adapters.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

from ocpp import routing

Handler = TypeVar("Handler", bound=Callable[..., Any])


def on(action: str, *, skip_schema_validation: bool = False) -> Callable[[Handler], Handler]:
    """Route a CALL of ``action`` to the decorated handler (``ocpp.routing.on``)."""
    return cast("Callable[[Handler], Handler]", routing.on(action, skip_schema_validation=skip_schema_validation))


def after(action: str) -> Callable[[Handler], Handler]:
    """Run the decorated coroutine after the answer to ``action`` was sent (``ocpp.routing.after``)."""
    return cast("Callable[[Handler], Handler]", routing.after(action))
