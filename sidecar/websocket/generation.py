"""One generation of the WebSocket bridge: a ``request`` message, its upstream stream, its end.

The flow (upstream request, deadline, pump, faults) is the
:class:`~streamhop.sidecar.upstream.driver.StreamDriver`'s, as for HTTP; :class:`Generation` is
the WebSocket transport: each re-chunked event becomes one ``event`` message, built from the
event itself (the pump hands events, not SSE bytes, to :meth:`Generation.open`'s sink). It ends
itself with ``done`` ``complete``, or ``error`` + ``done`` ``error``.

It never sends ``done`` ``cancelled``/``interrupted``: the session cancels the task, waits for it,
and only then sends that ``done``, so no event of a generation can follow its ``done``.

Divergences from HTTP, and why:

* Upstream error statuses and non-SSE answers are not passed through: a WebSocket client gets an
  ``error`` message carrying the status and the provider's body (at most ``ERROR_BODY_LIMIT``).
* On a deadline or shutdown, held events are written first, then ``error`` (like HTTP's terminal
  error event). On cancel or cut-over, held events are dropped: the client asked to stop.
* Keep-alive is the server's ping frame (``keepalive_interval_s``), not an SSE comment.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final

import orjson

from streamhop.middleware.pump import Fault, Sink, StreamPump
from streamhop.middleware.sse.events import SSEEvent
from streamhop.sidecar.observe.record import StreamRecord
from streamhop.sidecar.resume import LogWriter, ResumeStore
from streamhop.sidecar.resume.store import close_log
from streamhop.sidecar.upstream.driver import StreamDriver, StreamRequest
from streamhop.sidecar.upstream.pool import UpstreamBodyError, UpstreamResponse, UpstreamTiming
from streamhop.sidecar.websocket.messages import done_frame, error_frame, event_frame

logger = logging.getLogger(__name__)

SendFrames = Callable[[Sequence[str]], Awaitable[None]]
Terminal = tuple[str, dict[str, Any] | None]
"""``(done reason, error object or None)``."""

_LOG_HEADERS: Final = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
"""Headers an HTTP resume of a WebSocket generation's log answers with."""
ERROR_BODY_LIMIT: Final = 64 * 1024
"""Bytes of an upstream error body included in the ``error`` message."""


class Phase(enum.Enum):
    """Where one WebSocket generation is, toward its socket. It only moves forward::

        WAITING ─► STREAMING ─┬──────────────► ENDING
           │                  └─► HANDED_OFF ─┘  ▲
           └─────────────────────────────────────┘

    Whether the generation reached its own end (the driver's ``close`` ran) is a separate
    fact: a handed-off generation goes on to its end into the resume log.
    """

    WAITING = "waiting"
    """No answer yet: the upstream request is on its way (a refusal ends it from here)."""
    STREAMING = "streaming"
    """The pump writes ``event`` messages to the socket."""
    HANDED_OFF = "handed off"
    """The client was told to reconnect elsewhere: events go to the log only."""
    ENDING = "ending"
    """The generation sends its own ``done``: too late to cancel or interrupt."""


class Generation:
    """One generation: a :class:`StreamDriver` with this WebSocket transport.

    Args:
        request: what to send upstream and how it is bounded.
        send_frames: sends text frames to the client in order, one send in flight per socket.
    """

    def __init__(
        self,
        request: StreamRequest,
        send_frames: SendFrames,
        log: tuple[ResumeStore, str] | None = None,
    ) -> None:
        self.record: StreamRecord = request.record
        self.send_frames = send_frames
        self._log_at = log
        self.log: LogWriter | None = None
        """The generation's resume log (``[resume]`` on), else ``None``."""
        self.phase = Phase.WAITING
        self._format_hint = request.format_hint
        self._closed = False  # the generation reached its own end (close() ran)
        self._terminal: Terminal | None = None
        self.driver = StreamDriver(request, self)

    def __repr__(self) -> str:
        return f"<Generation {self.record.stream_id} {self.phase.value}>"

    @property
    def started(self) -> bool:
        """The answer began streaming to the socket (the Transport protocol's ``started``)."""
        return self.phase is not Phase.WAITING

    @property
    def detached(self) -> bool:
        """The client was told to reconnect elsewhere: events go to the log only."""
        return self.phase is Phase.HANDED_OFF

    @property
    def ending(self) -> bool:
        """The generation sends its own ``done``: too late to cancel or interrupt."""
        return self.phase is Phase.ENDING

    def hand_off(self) -> None:
        """The client is told to reconnect elsewhere (draining): from now on events go to the
        log only."""
        if self.phase is Phase.STREAMING:
            self.phase = Phase.HANDED_OFF

    def mark_cancel(self, reason: str) -> None:
        """Note why streamhop is ending the generation early (first reason wins)."""
        self.record.mark_cancel(reason)

    def stop(self, reason: str) -> None:
        """End the generation now with ``error`` + ``done`` ``error`` (e.g. ``shutdown``)."""
        self.driver.stop(reason)

    async def run(self) -> None:
        """Run the generation to its end; sends ``done`` unless cancelled or the client is gone."""
        try:
            await self.driver.run()
        except Exception as exc:
            if not self.driver.writer_failed:
                logger.exception("stream %s: generation failed", self.record.request_id)
                self.record.error = self.record.error or "internal"
                self._terminal = ("error", _error("internal_error", f"streamhop failed: {exc!r}"))
        terminal = self._terminal
        if terminal is None or self.driver.writer_failed:
            return
        self.phase = Phase.ENDING
        reason, error = terminal
        frames = [] if error is None else [error_frame(**error)]
        frames.append(done_frame(reason))
        # OSError: the client left; the session sees the disconnect.
        with contextlib.suppress(OSError):
            await self.send_frames(frames)

    # --- the Transport protocol ---------------------------------------------------------------

    def accepts(self, response: UpstreamResponse) -> bool:
        ctype = response.headers.get("content-type", "")
        encoding = response.headers.get("content-encoding", "identity").lower()
        return (
            200 <= response.status < 300
            and ctype.startswith("text/event-stream")
            and encoding in ("identity", "")
        )

    async def refuse(self, status: int, code: str, message: str) -> None:
        self._terminal = ("error", _error(code, message))

    async def pass_through(
        self, response: UpstreamResponse, read_timeout_s: float, stall_timeout_s: float
    ) -> None:
        status = response.status
        ctype = response.headers.get("content-type", "")
        encoding = response.headers.get("content-encoding", "identity").lower()
        body = await _read_limited(response, ERROR_BODY_LIMIT, read_timeout_s)
        if not 200 <= status < 300:
            code, message = "upstream_status", f"the upstream answered HTTP {status}"
        else:
            code = "upstream_not_streaming"
            message = (
                f"the upstream answered {status} with Content-Type {ctype!r} and "
                f"Content-Encoding {encoding!r}, not an uncompressed event stream"
            )
        logger.warning("stream %s: %s", self.record.request_id, message)
        self._terminal = ("error", _error(code, message, status=status, body=body))

    async def open(self, response: UpstreamResponse, timing: UpstreamTiming) -> Sink:
        self.phase = Phase.STREAMING
        send_frames = self.send_frames

        async def write_events(events: list[SSEEvent]) -> int:
            if self.phase is not Phase.STREAMING:
                return 0
            frames = [event_frame(e) for e in events if e.data is not None]
            if frames:
                await send_frames(frames)
            return sum(len(f) for f in frames)

        if self._log_at is None:
            return Sink(write_events=write_events)
        store, key = self._log_at
        self.log = store.open_writer(self.record.stream_id, _LOG_HEADERS, key)
        return Sink(write_events=write_events, on_events=self.log.stamp)

    async def close(self, pump: StreamPump, fault: Fault | None) -> None:
        await pump.finish()
        if fault is not None and self.log is not None:
            # A follower resuming from the log learns how the generation ended (this client
            # gets the ``error`` message instead).
            self.log.stamp(pump.error_events(fault, self._format_hint))
        self._closed = True
        if fault is None:
            self._terminal = ("complete", None)
        else:
            self._terminal = ("error", _error(fault.code, fault.message))

    def after(self, pump: StreamPump | None) -> None:
        if self.log is not None:
            hint = self._format_hint
            close_log(self.log, pump, ended=self._closed, record=self.record, format_hint=hint)


def _error(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"code": code, "message": message, **extra}


async def _read_limited(response: UpstreamResponse, limit: int, read_timeout_s: float) -> Any:
    """The response body (at most ``limit`` bytes), parsed as JSON when it is JSON, else text;
    each read within ``read_timeout_s`` seconds (what arrived by then is shown)."""
    chunks: list[bytes] = []
    size = 0
    try:
        while size < limit:
            async with asyncio.timeout(read_timeout_s):
                chunk = await response.readany()
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except (UpstreamBodyError, TimeoutError):
        pass  # what arrived is still worth showing
    raw = b"".join(chunks)[:limit]
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw.decode("utf-8", "replace")
