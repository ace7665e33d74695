"""One upstream stream, from the request to the client's last byte, for any transport.

The HTTP proxy and the WebSocket bridge run every generation through one
:class:`StreamDriver`; only the :class:`Transport` differs (how a refusal, a non-streamed
answer, the stream's start and its end reach the client). What the driver owns once:

* the deadline scope (route ``timeout_s`` shortened by ``X-Streamhop-Timeout-Ms``), fired early
  by :meth:`StreamDriver.stop` (``shutdown``), with the record's one cancel-reason rule (the
  first reason wins, :meth:`~streamhop.sidecar.observe.record.StreamRecord.mark_cancel`);
* the upstream request (:mod:`.pool`), and which answers are re-chunked;
* the pump (:class:`~streamhop.middleware.pump.StreamPump`), the read loop (:func:`.relay.relay`)
  and the end-of-stream fault (:meth:`~streamhop.middleware.pump.StreamPump.feed_eof`);
* a failed client write stopping the reader (``stall`` or ``client_disconnect``);
* closing the upstream (not pooled unless read to the end) and the accounting.

The bookkeeping around a driver that both transports share (record, metrics, trace, upstream
headers, the registry shutdown stops) is :mod:`.opening`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import zlib
from dataclasses import dataclass
from typing import Any, Final, Protocol

from yarl import URL

from streamhop.middleware.controls import Controls
from streamhop.middleware.observe.metrics import StreamMetrics
from streamhop.middleware.pump import ClientStallError, Fault, PumpOptions, Sink, StreamPump
from streamhop.sidecar.config import Config, RouteConfig
from streamhop.sidecar.observe.record import StreamRecord
from streamhop.sidecar.recording import StreamRecorder
from streamhop.sidecar.upstream.pool import (
    UpstreamError,
    UpstreamPool,
    UpstreamResponse,
    UpstreamTimeoutError,
    UpstreamTiming,
)
from streamhop.sidecar.upstream.relay import ERROR_KIND_OF_FAULT, close_upstream, relay

logger = logging.getLogger(__name__)

END_MESSAGES: Final = {
    "timeout": "streamhop deadline reached before the upstream answer ended",
    "shutdown": "streamhop is shutting down; the stream was stopped",
    "stop": "the stream was stopped by a DELETE of its stream id",
}
_END_CODES: Final = {"stop": "stream_cancelled"}
"""Error code of an early end whose cancel reason differs from it."""
_END_STATUS: Final = {"shutdown": 503, "timeout": 504, "stop": 409}
"""HTTP status of an early end before the response started."""


class Transport(Protocol):
    """How one stream's outcomes reach the client (HTTP response or WebSocket messages)."""

    @property
    def started(self) -> bool:
        """True once anything was sent to the client for this stream."""

    def accepts(self, response: UpstreamResponse) -> bool:
        """True when the answer is to be re-chunked (else :meth:`pass_through`)."""

    async def refuse(self, status: int, code: str, message: str) -> None:
        """Nothing was sent yet and none will be streamed: say why (``status`` is the HTTP
        status an HTTP client gets: 502 connect, 504 timeout, 503 shutdown)."""

    async def pass_through(
        self, response: UpstreamResponse, read_timeout_s: float, stall_timeout_s: float
    ) -> None:
        """An answer that is not re-chunked (not SSE, or compressed in an unknown way).

        Every upstream read is bounded by ``read_timeout_s`` and every client write by
        ``stall_timeout_s`` (seconds), as on the SSE path."""

    async def open(self, response: UpstreamResponse, timing: UpstreamTiming) -> Sink:
        """The SSE answer starts: send what precedes its events, return where they go (SSE
        bytes for HTTP, event batches for WebSocket frames; a hook for the resume log)."""

    async def close(self, pump: StreamPump, fault: Fault | None) -> None:
        """Write what the pump holds (and the fault, in the transport's way) and end."""

    def after(self, pump: StreamPump | None) -> None:
        """Called once the stream is over, whatever happened (close logs, free state)."""


@dataclass(slots=True)
class StreamRequest:
    """What one stream sends upstream and how it is bounded."""

    config: Config
    pool: UpstreamPool
    route: RouteConfig
    method: str
    url: URL
    headers: list[tuple[str, str]]
    body: bytes
    controls: Controls
    record: StreamRecord
    observed: StreamMetrics
    deadline: float | None
    format_hint: str | None = None
    recorder: StreamRecorder | None = None
    """Set when the stream is recorded (``[record]``): the relay feeds it the upstream body."""


def pump_options(config: Config, route: RouteConfig, controls: Controls) -> PumpOptions:
    """The route's format and the config's window, sizes and bounds, where a request's
    ``X-Streamhop-*`` controls override the config (:meth:`Controls.apply`)."""
    rechunk = config.rechunk
    return controls.apply(
        PumpOptions(
            format=route.format,
            flush_interval_s=rechunk.flush_interval_ms / 1000.0,
            max_flush_bytes=rechunk.max_flush_bytes,
            passthrough=rechunk.mode == "passthrough",
            max_event_bytes=rechunk.max_event_bytes,
            max_pending_bytes=config.backpressure.max_pending_bytes,
            stall_timeout_s=config.backpressure.stall_timeout_s,
            keepalive_interval_s=route.keepalive_interval_s,
            forward_comments=True,
            flush_boundary=rechunk.flush_boundary,
            max_boundary_wait_s=rechunk.max_boundary_wait_ms / 1000.0,
        )
    )


class StreamDriver:
    """Runs one :class:`StreamRequest` through a :class:`Transport` (see the module docstring).

    Cancelling the task that runs :meth:`run` (the client left) closes the upstream response in
    ``finally``: the provider sees its connection close, and it is not pooled again.
    """

    def __init__(self, request: StreamRequest, transport: Transport) -> None:
        self.request = request
        self.transport = transport
        self.response: UpstreamResponse | None = None
        self.pump: StreamPump | None = None
        self.writer_failed = False
        """True when a write to the client failed (client gone or stalled)."""
        self._scope: asyncio.Timeout | None = None

    def stop(self, reason: str) -> None:
        """End the stream now with a well-formed end for the client (e.g. ``shutdown``)."""
        self.request.record.mark_cancel(reason)
        scope = self._scope
        if scope is not None and not scope.expired():
            # A stop may land after run() left its timeout scope (the stream had just ended):
            # asyncio refuses to reschedule an exited scope, and there is nothing left to end.
            with contextlib.suppress(RuntimeError):
                scope.reschedule(asyncio.get_running_loop().time())

    async def run(self) -> None:
        """Run the stream to its end (or until cancelled)."""
        record = self.request.record
        remaining = None
        if self.request.deadline is not None:
            remaining = max(self.request.deadline - time.monotonic(), 0.0)
        try:
            try:
                async with asyncio.timeout(remaining) as scope:
                    self._scope = scope
                    if record.cancel_reason is not None:  # stopped before it began
                        scope.reschedule(asyncio.get_running_loop().time())
                    await self._run()
            except TimeoutError:
                if not scope.expired():
                    raise
                record.mark_cancel("timeout")
                await self._end_early(record.cancel_reason or "timeout")
        finally:
            # Also when cancelled before any response: the pool aborted the connection as the
            # request unwound, which is now.
            close_upstream(self.response, record)
            pump = self.pump
            if pump is not None:
                pump.close()
            self.transport.after(pump)
            if pump is not None:
                record.take_stats(pump.stats)

    async def _run(self) -> None:
        req = self.request
        record = req.record
        timing = UpstreamTiming()
        # A streaming answer starts with headers at once; a non-streaming one only after the
        # whole generation: streaming requests are held to connect_timeout_s for them, the rest
        # to read_timeout_s (as nginx's proxy_read_timeout bounds the wait for a response).
        route = req.route
        headers_timeout = (
            route.connect_timeout_s if record.streaming_request else route.read_timeout_s
        )
        try:
            self.response = response = await req.pool.request(
                req.route, req.method, req.url, req.headers, req.body, timing, headers_timeout
            )
        except UpstreamError as exc:
            record.error = exc.kind
            status = 504 if isinstance(exc, UpstreamTimeoutError) else 502
            logger.warning("stream %s: %s", record.request_id, exc)
            await self.transport.refuse(status, f"upstream_{exc.kind}", str(exc))
            return
        finally:
            record.upstream_request_at = timing.start
            record.upstream_connected_at = timing.connected
            record.upstream_headers_at = timing.headers
        record.status = response.status
        if not self.transport.accepts(response):
            await self.transport.pass_through(
                response, route.read_timeout_s, req.config.backpressure.stall_timeout_s
            )
            return
        encoding = response.headers.get("content-encoding", "identity").lower()
        decompress = _decompressor(encoding)
        if decompress is None and encoding not in ("identity", ""):
            logger.warning(
                "stream %s: SSE with Content-Encoding %s cannot be re-chunked; copied as is",
                record.request_id,
                encoding,
            )
            await self.transport.pass_through(
                response, route.read_timeout_s, req.config.backpressure.stall_timeout_s
            )
            return
        await self._stream(response, timing, decompress)

    async def _stream(
        self, response: UpstreamResponse, timing: UpstreamTiming, decompress: Any
    ) -> None:
        req = self.request
        record = req.record
        record.sse = True
        sink = await self.transport.open(response, timing)
        self.pump = pump = StreamPump(
            sink, pump_options(req.config, req.route, req.controls), observer=req.observed
        )
        me = asyncio.current_task()
        assert me is not None

        def write_failed(error: BaseException) -> None:
            # A failed write (client stalled or gone) must stop the reader and close upstream.
            if me.done():
                return
            self.writer_failed = True
            stalled = isinstance(error, ClientStallError)
            record.mark_cancel("stall" if stalled else "client_disconnect")
            me.cancel()

        pump.on_failure(write_failed)
        fault = await relay(
            response,
            pump,
            req.route.read_timeout_s,
            decompress,
            coalesce_reads=req.config.rechunk.coalesce_reads,
            recorder=req.recorder,
        )
        if fault is None:
            fault = pump.feed_eof(
                # An error status already says the answer is not a completion.
                expect_terminal=response.status < 300,
                format_hint=req.format_hint,
            )
        if fault is not None:
            record.error = ERROR_KIND_OF_FAULT[fault.code]
            close_upstream(self.response, record)
            logger.warning("stream %s: %s", record.request_id, fault.message)
        await self.transport.close(pump, fault)

    async def _end_early(self, reason: str) -> None:
        """The deadline scope fired (``timeout`` or ``shutdown``): close upstream, end cleanly."""
        record = self.request.record
        close_upstream(self.response, record)
        message = END_MESSAGES.get(reason, reason)
        logger.warning("stream %s: %s", record.request_id, message)
        code = _END_CODES.get(reason, reason)
        if not self.transport.started:
            await self.transport.refuse(_END_STATUS.get(reason, 504), code, message)
            return
        pump = self.pump
        if pump is None or pump.is_done():
            return  # a copied body cannot carry an error: the connection ends unfinished
        await self.transport.close(pump, Fault(code, message))


def _decompressor(encoding: str) -> Any:
    if encoding in ("gzip", "x-gzip"):
        return zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        return zlib.decompressobj()
    return None


__all__ = [
    "END_MESSAGES",
    "StreamDriver",
    "StreamRequest",
    "Transport",
    "pump_options",
]
