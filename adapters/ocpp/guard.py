"""The frame guard: what stands between a charger's websocket and the ``ocpp`` package.

Inbound: size, depth, rate and shape limits, known actions, date-time formats; every refusal a
CALLERROR in the connection's dialect, with the frame's own id whenever it can be read. Outbound:
CALLERRORs the package writes, put in the connection's dialect; in local controller mode every
frame both ways is shown to the relay first.
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING

from aiohttp import WSMsgType, web

from adapters.ocpp.frames import MAX_DEPTH, bad_date_times, frame_id, too_deep, translate_error

if TYPE_CHECKING:
    from adapters.ocpp.link import ChargerLink
    from adapters.ocpp.upstream import Relay

__all__ = ["FrameGuard", "is_request"]

log = logging.getLogger("adapters.ocpp.server")


def is_request(raw: str, action: str) -> bool | None:
    """For a CALL frame, whether it is ``action``; None when the frame is no CALL."""
    try:
        frame = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(frame, list) or len(frame) < 3 or frame[0] != 2:
        return None
    return bool(frame[2] == action)


class FrameGuard:
    """The ``recv``/``send`` object the ``ocpp`` package reads from, with the guards in front.

    Inbound: size, depth, rate and shape limits, date-time formats; every refusal is a CALLERROR
    with the frame's own id whenever it can be read. Outbound: CALLERRORs the package writes are
    put in this connection's dialect (``link.dialect``).
    """

    def __init__(self, ws: web.WebSocketResponse, link: ChargerLink, max_bytes: int, rate_per_s: float) -> None:
        self.ws = ws
        self.link = link
        self.max_bytes = max_bytes
        self.rate = rate_per_s
        self.tokens = rate_per_s * 2
        self.stamp = time.monotonic()
        self.relay: Relay | None = None
        """Local controller mode: the charger's link to the CSMS, which sees every frame both ways."""

    async def send(self, message: str) -> None:
        if self.relay is not None:
            held = self.relay.outbound(message)
            if held is None:
                return
            message = held
        if message.startswith("[4"):  # the package refusing a CALL (schema, missing handler)
            self.link.server.counters["bad_frames"] += 1
            message = translate_error(self.link.dialect, message)
        await self.ws.send_str(message)

    def _error_frame(self, unique_id: str, code: str, text: str) -> str:
        return json.dumps([4, unique_id, code, text[:255], {}])

    async def recv(self) -> str:
        while True:
            msg = await self.ws.receive()
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                self.link.server.log_limiter.flush(log, self.link.charger_id)
                raise ConnectionResetError("websocket closed")
            if msg.type == WSMsgType.BINARY:
                data = msg.data.decode("utf-8", errors="replace")
            elif msg.type == WSMsgType.TEXT:
                data = msg.data
            else:
                continue
            problem = self._check(data)
            if problem is None:
                return str(data)
            unique_id, code, text = problem
            self.link.server.counters["bad_frames"] += 1
            self.link.server.log_limiter.log(log, logging.WARNING, self.link.charger_id, f"frame:{code}",
                                             "charger %s: bad frame (%s): %r", self.link.charger_id, text,
                                             data[:500])
            await self.ws.send_str(self._error_frame(unique_id, code, text))

    def _check(self, data: str) -> tuple[str, str, str] | None:
        """None when the frame may go to the ``ocpp`` package; else (id to answer, code, text)."""
        dialect = self.link.dialect
        format_code = dialect.format_violation
        now = time.monotonic()
        self.tokens = min(self.rate * 2, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if len(data) > self.max_bytes or len(data.encode("utf-8")) > self.max_bytes:
            return frame_id(data), format_code, f"frame larger than {self.max_bytes} bytes"
        try:
            frame = json.loads(data)
        except json.JSONDecodeError:
            return "-1", dialect.invalid_json_code, "invalid JSON"
        except RecursionError:
            frame = None
        if frame is None or too_deep(data, frame):
            return frame_id(data), format_code, f"frame nested deeper than {MAX_DEPTH} levels"
        if not isinstance(frame, list) or len(frame) < 3 or not isinstance(frame[1], str):
            unique = frame[1] if isinstance(frame, list) and len(frame) > 1 and isinstance(frame[1], str) else "-1"
            return unique, format_code, "a frame is [type, id, ...]"
        kind = frame[0]
        if kind not in (2, 3, 4):
            return frame[1], dialect.unknown_message_type_code, f"message type {kind!r}"
        if kind == 2:
            if self.tokens < 1.0:
                self.link.server.counters["rate_limited"] += 1
                return frame[1], "GenericError", "rate limit exceeded, slow down"
            self.tokens -= 1.0
            if len(frame) != 4 or not isinstance(frame[2], str) or not isinstance(frame[3], dict):
                return frame[1], format_code, "a CALL is [2, id, action, {payload}]"
            if frame[2] not in dialect.known_actions:
                # The ocpp package says NotSupported here; the spec's word for an unknown action is
                # NotImplemented (NotSupported is for a known action the receiver does not do).
                return frame[1], "NotImplemented", f"unknown action {frame[2][:50]!r}"
            bad = bad_date_times(dialect, frame[2], frame[3])
            if bad:
                return frame[1], format_code, f"not an RFC 3339 date-time: {'; '.join(bad)}"
        return None
