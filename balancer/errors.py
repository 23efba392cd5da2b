"""Error tree of the core: every error carries a stable ``code`` and structured details."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

__all__ = ["BalancerError", "InvalidConfig", "InvalidInput", "Problem"]


class BalancerError(Exception):
    """Base of every error the core raises on purpose."""

    code = "internal_error"

    def __init__(self, message: str, *, details: Mapping[str, object] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = dict(details or {})


class Problem:
    """One problem found in an input, located by a path such as ``sites[0].chargers[3].max_current_a``."""

    __slots__ = ("message", "path")

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.message = message

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message

    def __repr__(self) -> str:
        return f"Problem({self.path!r}, {self.message!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Problem) and (self.path, self.message) == (other.path, other.message)

    def __hash__(self) -> int:
        return hash((self.path, self.message))


class InvalidInput(BalancerError):
    """An input (config, forecast, sessions, API body) broke one or more rules; nothing was applied."""

    code = "invalid_input"

    def __init__(self, problems: Sequence[Problem], *, what: str = "input") -> None:
        self.problems = list(problems)
        lines = "; ".join(str(p) for p in self.problems)
        super().__init__(f"invalid {what}: {lines}", details={"problems": [str(p) for p in self.problems]})


class InvalidConfig(InvalidInput):
    """A site config that cannot be used; ``problems`` lists every problem found."""

    code = "invalid_config"

    def __init__(self, problems: Sequence[Problem]) -> None:
        super().__init__(problems, what="config")
