"""The per-charger log limiter, on an injected clock."""

from __future__ import annotations

import logging

import pytest

from adapters.ocpp.loglimit import LogLimiter


def test_burst_then_suppressed_then_a_summary(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    log = logging.getLogger("test.loglimit")
    now = [0.0]
    limiter = LogLimiter(burst=3, window_s=60.0, clock=lambda: now[0])
    written = [limiter.log(log, logging.WARNING, "CP1", "bad", "bad frame %d", k) for k in range(100)]
    assert written == [True] * 3 + [False] * 97
    assert limiter.log(log, logging.WARNING, "CP2", "bad", "other charger")  # its own budget
    now[0] = 61.0
    assert limiter.log(log, logging.WARNING, "CP1", "bad", "bad frame again")
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 5
    assert messages[-1] == "bad frame again (97 similar lines from this charger suppressed)"
    for _ in range(10):
        limiter.log(log, logging.WARNING, "CP1", "bad", "more")
    limiter.flush(log, "CP1")
    assert caplog.records[-1].getMessage() == "charger CP1: 8 more bad lines suppressed"
    assert not limiter.log(log, logging.WARNING, "CP1", "bad", "still in the same window")
