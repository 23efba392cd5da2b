"""Log lines per charger and kind, rate-limited: a flooding charger cannot flood the log.

The first ``burst`` lines of one (charger, kind) per ``window_s`` are written; the rest are
counted, and the next line written for that key says how many were suppressed. The counters of
what happened (bad frames, implausible readings) count every event; only the log is thinned.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

__all__ = ["LimitedLogger", "LogLimiter"]


class LogLimiter:
    """Decides, per (charger, kind), whether a log line is written now."""

    def __init__(self, burst: int = 5, window_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.burst = burst
        self.window_s = window_s
        self.clock = clock
        self._windows: dict[tuple[str, str], tuple[float, int, int]] = {}
        """(charger, kind) -> (window start [s], lines written in it, lines suppressed since the last written)."""

    def log(self, logger: logging.Logger, level: int, charger_id: str, kind: str, msg: str, *args: Any,
            exc_info: Any = None) -> bool:
        """Write ``msg % args`` unless this key is over its burst; True when written."""
        key = (charger_id, kind)
        now = self.clock()
        start, written, suppressed = self._windows.get(key, (now, 0, 0))
        if now - start >= self.window_s:
            start, written = now, 0
        if written >= self.burst:
            self._windows[key] = (start, written, suppressed + 1)
            return False
        if suppressed:
            msg += " (%d similar lines from this charger suppressed)"
            args = (*args, suppressed)
        logger.log(level, msg, *args, exc_info=exc_info)
        self._windows[key] = (start, written + 1, 0)
        return True

    def flush(self, logger: logging.Logger, charger_id: str) -> None:
        """Write the suppressed counts of ``charger_id`` still pending (e.g. when it disconnects).

        The windows stay: a charger that reconnects to flood again gets no fresh burst."""
        for key, (start, written, suppressed) in list(self._windows.items()):
            if key[0] == charger_id and suppressed:
                logger.warning("charger %s: %d more %s lines suppressed", charger_id, suppressed, key[1])
                self._windows[key] = (start, written, 0)


class LimitedLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """The logger handed to the ``ocpp`` package's ChargePoint for one charger, thinned by a LogLimiter.

    The package logs every CALLERROR it answers with a traceback; keyed by the message template,
    a charger repeating one bad message gets ``burst`` of those per window.
    """

    def __init__(self, logger: logging.Logger, limiter: LogLimiter, charger_id: str) -> None:
        super().__init__(logger, {})
        self.limiter = limiter
        self.charger_id = charger_id

    def log(self, level: int, msg: Any, *args: Any, **kwargs: Any) -> None:
        if not self.isEnabledFor(level):
            return
        if level < logging.WARNING:  # the package's per-frame debugging lines, when asked for
            self.logger.log(level, msg, *args, **kwargs)
            return
        self.limiter.log(self.logger, level, self.charger_id, f"ocpp:{msg}", str(msg), *args,
                         exc_info=kwargs.get("exc_info"))
