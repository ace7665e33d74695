"""One generation of the WebSocket bridge: a ``request`` message, its upstream stream, its end.

A :class:`Generation` is the WebSocket counterpart of :class:`~.exchange.Exchange`: it sends the
request body upstream (``"stream": true``), re-chunks the SSE answer with the same
:class:`~streamhop.middleware.pump.StreamPump` and
:class:`~streamhop.middleware.rechunk.coalescer.Coalescer`, and turns each re-chunked event into one
``event`` message. It ends itself with ``done`` ``complete``, or ``error`` + ``done`` ``error``.

It never sends ``done`` ``cancelled``/``interrupted``: the session cancels the task, waits for it,
and only then sends that ``done``, so no event of a generation can follow its ``done``.

Divergences from the HTTP exchange, and why:

* The pump hands its ``write`` SSE-encoded bytes of whole events. They are decoded again here to
  send one WebSocket message per merged event; that keeps the pump's contract untouched at the
  cost of one extra parse per write (writes are tens per second, not thousands).
* Upstream error statuses and non-SSE answers are not passed through: a WebSocket client gets an
  ``error`` message carrying the status and the provider's body (at most ``ERROR_BODY_LIMIT``).
* On a deadline or shutdown, held events are written first, then ``error`` (like HTTP's terminal
  error event). On cancel or cut-over, held events are dropped: the client asked to stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final

import aiohttp
import orjson
from yarl import URL

from streamhop.middleware.controls import Controls
from streamhop.middleware.observe.metrics import StreamMetrics
from streamhop.middleware.pump import ClientStallError, StreamPump
from streamhop.middleware.sse.decoder import SSEDecoder
from streamhop.sidecar.config import Config, RouteConfig
from streamhop.sidecar.observe.record import StreamRecord
from streamhop.sidecar.upstream.pool import UpstreamError, UpstreamPool, UpstreamTiming
from streamhop.sidecar.upstream.relay import ERROR_KINDS, close_upstream, collect, make_pump, relay
from streamhop.sidecar.websocket.messages import done_frame, error_frame, event_frame

logger = logging.getLogger(__name__)

SendFrames = Callable[[Sequence[str]], Awaitable[None]]
Terminal = tuple[str, dict[str, Any] | None]
"""``(done reason, error object or None)``."""

ERROR_BODY_LIMIT: Final = 64 * 1024
"""Bytes of an upstream error body included in the ``error`` message."""
# The pump writes only whole events, so the re-decoder never holds a partial one; its bound is
# the pump's own (held bytes are bounded by max_pending_bytes plus one read).
_REDECODE_LIMIT: Final = 1 << 40
_END_MESSAGES: Final = {
    "timeout": "streamhop deadline reached before the upstream answer ended",
    "shutdown": "streamhop is shutting down; the generation was stopped",
}


class Generation:
    """State and steps of one generation (one instance per ``request`` message).

    Args:
        config: the sidecar config.
        pool: the upstream client pool.
        route: the matched route.
        send_frames: sends text frames to the client in order, one send in flight per socket.
        url: the upstream URL (:meth:`~.routing.RouteTable.upstream_url`).
        headers: request headers to send upstream (already merged and filtered).
        controls: the effective ``X-Streamhop-*`` overrides.
        body: the JSON body to POST (``"stream": true`` already set).
        record: the generation's record.
        observed: the generation's bound metrics.
        deadline: ``time.monotonic()`` seconds when the generation must end, or ``None``.
    """

    def __init__(
        self,
        config: Config,
        pool: UpstreamPool,
        route: RouteConfig,
        send_frames: SendFrames,
        url: URL,
        headers: list[tuple[str, str]],
        controls: Controls,
        body: bytes,
        record: StreamRecord,
        observed: StreamMetrics,
        deadline: float | None,
    ) -> None:
        self.config = config
        self.pool = pool
        self.route = route
        self.send_frames = send_frames
        self.url = url
        self.headers = headers
        self.controls = controls
        self.body = body
        self.record = record
        self.observed = observed
        self.deadline = deadline
        self.ending = False
        """True once the generation sends its own ``done``: too late to cancel or interrupt."""
        self.writer_failed = False
        """True when a write to the client failed (client gone, or stalled)."""
        self.response: aiohttp.ClientResponse | None = None
        self.pump: StreamPump | None = None
        self._scope: asyncio.Timeout | None = None

    def mark_cancel(self, reason: str) -> None:
        """Note why streamhop is ending the generation early (first reason wins)."""
        if self.record.cancel_reason is None:
            self.record.cancel_reason = reason
            self.record.cancel_detected_at = time.monotonic()

    def stop(self, reason: str) -> None:
        """End the generation now with ``error`` + ``done`` ``error`` (e.g. ``shutdown``)."""
        self.mark_cancel(reason)
        if self._scope is not None and not self._scope.expired():
            self._scope.reschedule(asyncio.get_running_loop().time())

    async def run(self) -> None:
        """Run the generation to its end; sends ``done`` unless cancelled or the client is gone."""
        terminal: Terminal | None = None
        try:
            terminal = await self._bounded()
        except Exception as exc:
            if not self.writer_failed:
                logger.exception("stream %s: generation failed", self.record.request_id)
                self.record.error = self.record.error or "internal"
                terminal = ("error", _error("internal_error", f"streamhop failed: {exc!r}"))
        finally:
            close_upstream(self.response, self.record)
            if self.pump is not None:
                self.pump.close()
            collect(self.record, self.pump)
        if terminal is None or self.writer_failed:
            return
        self.ending = True
        reason, error = terminal
        frames = [] if error is None else [error_frame(**error)]
        frames.append(done_frame(reason))
        # OSError: the client left; the session sees the disconnect.
        with contextlib.suppress(OSError):
            await self.send_frames(frames)

    async def _bounded(self) -> Terminal:
        remaining = None
        if self.deadline is not None:
            remaining = max(self.deadline - time.monotonic(), 0.0)
        try:
            async with asyncio.timeout(remaining) as deadline_scope:
                self._scope = deadline_scope
                if self.record.cancel_reason is not None:  # stopped before it began
                    deadline_scope.reschedule(asyncio.get_running_loop().time())
                return await self._run()
        except TimeoutError:
            if not deadline_scope.expired():
                raise
            self.mark_cancel("timeout")
            return await self._end_early(self.record.cancel_reason or "timeout")

    async def _run(self) -> Terminal:
        record = self.record
        timing = UpstreamTiming()
        try:
            self.response = response = await self.pool.request(
                self.route,
                "POST",
                self.url,
                self.headers,
                self.body,
                timing,
                self.route.connect_timeout_s,
            )
        except UpstreamError as exc:
            record.error = exc.kind
            logger.warning("stream %s: %s", record.request_id, exc)
            return ("error", _error(f"upstream_{exc.kind}", str(exc)))
        finally:
            record.upstream_request_at = timing.start
            record.upstream_connected_at = timing.connected
            record.upstream_headers_at = timing.headers
        record.status = status = response.status
        ctype = response.headers.get("Content-Type", "")
        encoding = response.headers.get("Content-Encoding", "identity").lower()
        sse = ctype.startswith("text/event-stream") and encoding in ("identity", "")
        if 200 <= status < 300 and sse:
            return await self._stream(response)
        body = await _read_limited(response, ERROR_BODY_LIMIT)
        if not 200 <= status < 300:
            code, message = "upstream_status", f"the upstream answered HTTP {status}"
        else:
            code = "upstream_not_streaming"
            message = (
                f"the upstream answered {status} with Content-Type {ctype!r} and "
                f"Content-Encoding {encoding!r}, not an uncompressed event stream"
            )
        logger.warning("stream %s: %s", record.request_id, message)
        return ("error", _error(code, message, status=status, body=body))

    async def _stream(self, response: aiohttp.ClientResponse) -> Terminal:
        """Re-chunk the SSE answer; one ``event`` message per merged event."""
        cfg = self.config
        record = self.record
        record.sse = True
        redecoder = SSEDecoder(_REDECODE_LIMIT)
        send_frames = self.send_frames

        async def write(data: bytes) -> None:
            frames = [event_frame(e) for e in redecoder.feed(data) if e.data is not None]
            if frames:
                await send_frames(frames)

        self.pump = pump = make_pump(cfg, self.route, self.controls, write, self.observed)
        me = asyncio.current_task()
        assert me is not None

        def writer_done(task: asyncio.Task[None]) -> None:
            # A failed write (client stalled or gone) must stop the reader and close upstream.
            if task.cancelled() or task.exception() is None or me.done():
                return
            self.writer_failed = True
            stalled = isinstance(task.exception(), ClientStallError)
            self.mark_cancel("stall" if stalled else "client_disconnect")
            me.cancel()

        pump.writer.add_done_callback(writer_done)
        fault = await relay(response, pump, self.route.read_timeout_s, None, self.route.format)
        if fault is not None:
            code, message = fault
            record.error = ERROR_KINDS[code]
            close_upstream(self.response, record)
            logger.warning("stream %s: %s", record.request_id, message)
        await pump.finish()
        if fault is not None:
            return ("error", _error(*fault))
        return ("complete", None)

    async def _end_early(self, reason: str) -> Terminal:
        """The deadline scope fired (``timeout`` or ``shutdown``): close upstream, flush held."""
        close_upstream(self.response, self.record)
        message = _END_MESSAGES.get(reason, reason)
        logger.warning("stream %s: %s", self.record.request_id, message)
        pump = self.pump
        if pump is not None and not pump.writer.done():
            await pump.finish()
        return ("error", _error(reason, message))


def _error(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"code": code, "message": message, **extra}


async def _read_limited(response: aiohttp.ClientResponse, limit: int) -> Any:
    """The response body (at most ``limit`` bytes), parsed as JSON when it is JSON, else text."""
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in response.content.iter_any():
            chunks.append(chunk)
            size += len(chunk)
            if size >= limit:
                break
    except aiohttp.ClientError:
        pass  # what arrived is still worth showing
    raw = b"".join(chunks)[:limit]
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw.decode("utf-8", "replace")
