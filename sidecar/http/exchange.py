"""One proxied request, from the upstream request to the last byte to the client.

Where a byte goes: :meth:`Exchange.run` sends the request upstream (:mod:`.upstream`); a
``text/event-stream`` answer is re-chunked by :class:`~streamhop.middleware.pump.StreamPump`
(:meth:`Exchange._stream`); any other answer is copied through untouched (:meth:`Exchange._copy`):
status, headers less hop-by-hop ones, and body bytes as received, still compressed if they were.

Every exchange runs inside one deadline scope (route ``timeout_s`` or ``X-Streamhop-Timeout-Ms``).
:meth:`Exchange.stop` fires the same scope early (reason ``shutdown``), so both end the same way:
the upstream response is closed, and the client gets a well-formed end — a 504/503 JSON error
before the response started, a terminal error event in the stream's format after.

Cancelling the task (the client disconnected, or the writer failed) closes the upstream response
in ``finally``: the provider sees its connection close, and the connection is not pooled again.

With ``[resume]`` on, an SSE answer gets a resume log (:attr:`Exchange.log`): the pump numbers
every written event (``id: <stream-id>:<seq>``) and records it. :meth:`Exchange.detach` (route
``on_disconnect = "detach"``, client gone) keeps the generation running into the log only. When
the exchange ends, the log gets its end marker; if the stream was stopped before its own end (a
cancel), a terminal ``stream_cancelled`` error event is logged first, so a resume ends cleanly.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from typing import Any

import aiohttp
from yarl import URL

from streamhop.middleware.controls import Controls
from streamhop.middleware.observe.metrics import StreamMetrics
from streamhop.middleware.pump import ClientStallError, StreamPump
from streamhop.middleware.rechunk.formats import error_event, format_for_path
from streamhop.middleware.sse.events import SSEEvent
from streamhop.sidecar.admission.headers import response_headers
from streamhop.sidecar.config import Config, RouteConfig
from streamhop.sidecar.http.asgi import Scope, Send, json_error
from streamhop.sidecar.observe.record import StreamRecord
from streamhop.sidecar.resume import LogWriter, ResumeStore
from streamhop.sidecar.upstream.pool import (
    UpstreamError,
    UpstreamPool,
    UpstreamTimeoutError,
    UpstreamTiming,
)
from streamhop.sidecar.upstream.relay import ERROR_KINDS, close_upstream, collect, make_pump, relay

logger = logging.getLogger(__name__)

_SSE_DROP = frozenset(
    (b"content-length", b"content-encoding", b"cache-control", b"x-accel-buffering")
)
_END_MESSAGES = {
    "timeout": "streamhop deadline reached before the upstream answer ended",
    "shutdown": "streamhop is shutting down; the stream was stopped",
}


class Exchange:
    """State and steps of one proxied request (one instance per request).

    Args:
        config: the sidecar config.
        pool: the upstream client pool.
        route: the matched route.
        scope, send: the ASGI request scope and send callable.
        url: the upstream URL (:meth:`~.routing.RouteTable.upstream_url`).
        headers: request headers to forward (control and hop-by-hop ones already removed).
        controls: the request's ``X-Streamhop-*`` overrides.
        body: the request body.
        record: the request's record (filled in as it goes).
        observed: the stream's bound metrics.
        deadline: ``time.monotonic()`` seconds when the exchange must end, or ``None``.
        resume: the resume store when ``[resume]`` is on, else ``None``.
        log_key: the caller-bound store key of this stream's log (with ``resume``).
    """

    def __init__(
        self,
        config: Config,
        pool: UpstreamPool,
        route: RouteConfig,
        scope: Scope,
        send: Send,
        url: URL,
        headers: list[tuple[str, str]],
        controls: Controls,
        body: bytes,
        record: StreamRecord,
        observed: StreamMetrics,
        deadline: float | None,
        resume: ResumeStore | None = None,
        log_key: str | None = None,
    ) -> None:
        self.config = config
        self.pool = pool
        self.route = route
        self.scope = scope
        self.send = send
        self.url = url
        self.headers = headers
        self.controls = controls
        self.body = body
        self.record = record
        self.observed = observed
        self.deadline = deadline
        self.fmt_hint = route.format if route.format != "auto" else format_for_path(record.path)
        self.started = False
        self.response: aiohttp.ClientResponse | None = None
        self.pump: StreamPump | None = None
        self._scope: asyncio.Timeout | None = None
        self.resume = resume
        self.log_key = log_key or record.stream_id
        self.log: LogWriter | None = None
        """The stream's resume log (an SSE answer with ``[resume]`` on), else ``None``."""
        self.detached = False
        """True once the client left and the generation goes on into the log only."""
        self._ended = False

    def detach(self) -> None:
        """The client left: stop writing to it, keep generating into the resume log."""
        self.detached = True

    def stop(self, reason: str) -> None:
        """End the exchange now with a well-formed error for the client (e.g. ``shutdown``)."""
        if self.record.cancel_reason is None:
            self.record.cancel_reason = reason
            self.record.cancel_detected_at = time.monotonic()
        if self._scope is not None and not self._scope.expired():
            self._scope.reschedule(asyncio.get_running_loop().time())

    async def run(self) -> None:
        """Proxy the request; returns when the client's response is complete."""
        remaining = None
        if self.deadline is not None:
            remaining = max(self.deadline - time.monotonic(), 0.0)
        try:
            try:
                async with asyncio.timeout(remaining) as deadline_scope:
                    self._scope = deadline_scope
                    if self.record.cancel_reason is not None:  # stopped before it began
                        deadline_scope.reschedule(asyncio.get_running_loop().time())
                    await self._run()
            except TimeoutError:
                if not deadline_scope.expired():
                    raise
                if self.record.cancel_reason is None:
                    self.record.cancel_reason = "timeout"
                    self.record.cancel_detected_at = time.monotonic()
                await self._end_early(self.record.cancel_reason)
        finally:
            # Also when cancelled before any response: aiohttp closed the connection as the
            # request task unwound, which is now.
            close_upstream(self.response, self.record)
            if self.pump is not None:
                self.pump.close()
            if self.log is not None:
                self._close_log()
            collect(self.record, self.pump)

    async def _run(self) -> None:
        record = self.record
        timing = UpstreamTiming()
        # A streaming answer starts with headers at once; a non-streaming one only after the
        # whole generation, so only streaming requests are held to connect_timeout_s for them.
        headers_timeout = self.route.connect_timeout_s if record.streaming_request else None
        try:
            self.response = response = await self.pool.request(
                self.route,
                self.scope["method"],
                self.url,
                self.headers,
                self.body,
                timing,
                headers_timeout,
            )
        except UpstreamError as exc:
            record.error = exc.kind
            status = 504 if isinstance(exc, UpstreamTimeoutError) else 502
            logger.warning("stream %s: %s", record.request_id, exc)
            await json_error(self.send, status, self.fmt_hint, f"upstream_{exc.kind}", str(exc))
            self.started = True
            return
        finally:
            record.upstream_request_at = timing.start
            record.upstream_connected_at = timing.connected
            record.upstream_headers_at = timing.headers
        record.status = response.status
        ctype = response.headers.get("Content-Type", "")
        if ctype.startswith("text/event-stream") and self.scope["method"] != "HEAD":
            await self._stream(response, timing)
        else:
            await self._copy(response)

    async def _copy(self, response: aiohttp.ClientResponse) -> None:
        """Copy a non-SSE answer through untouched."""
        send = self.send
        record = self.record
        headers = response_headers(response.raw_headers)
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        self.started = True
        try:
            async for chunk in response.content.iter_any():
                record.bytes_in += len(chunk)
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                record.bytes_out += len(chunk)
        except aiohttp.ClientError as exc:
            # Headers and part of the body are out: the only honest signal left is to end the
            # connection without completing the body.
            record.error = "disconnected"
            logger.warning("stream %s: upstream failed mid-body: %s", record.request_id, exc)
            return
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _stream(self, response: aiohttp.ClientResponse, timing: UpstreamTiming) -> None:
        """Re-chunk an SSE answer: decode, merge, write with one write in flight."""
        cfg = self.config
        record = self.record
        send = self.send
        record.sse = True
        encoding = response.headers.get("Content-Encoding", "identity").lower()
        decompress = _decompressor(encoding)
        if decompress is None and encoding not in ("identity", ""):
            logger.warning(
                "stream %s: SSE with Content-Encoding %s cannot be re-chunked; copied as is",
                record.request_id,
                encoding,
            )
            await self._copy(response)
            return
        headers = response_headers(response.raw_headers, _SSE_DROP)
        headers += [
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),
            (b"x-streamhop-stream-id", record.stream_id.encode()),
            (b"x-streamhop-request-id", record.request_id.encode()),
            (b"server-timing", _server_timing(timing).encode()),
        ]
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        self.started = True

        async def write(data: bytes) -> None:
            await send({"type": "http.response.body", "body": data, "more_body": True})

        async def write_unless_detached(data: bytes) -> None:
            if not self.detached:
                await send({"type": "http.response.body", "body": data, "more_body": True})

        resumable = self.resume is not None
        self.pump = pump = make_pump(
            cfg,
            self.route,
            self.controls,
            write_unless_detached if resumable else write,
            self.observed,
        )
        if self.resume is not None:
            self.log = self.resume.open_writer(record.stream_id, headers, self.log_key)
            pump.on_events = self.log.stamp
        me = asyncio.current_task()
        assert me is not None

        def writer_done(task: asyncio.Task[None]) -> None:
            # A failed write (client stalled or gone) must stop the reader and close upstream.
            if task.cancelled() or task.exception() is None or me.done():
                return
            if isinstance(task.exception(), ClientStallError) and record.cancel_reason is None:
                record.cancel_reason = "stall"
                record.cancel_detected_at = time.monotonic()
            me.cancel()

        pump.writer.add_done_callback(writer_done)
        fault = await relay(response, pump, self.route.read_timeout_s, decompress, self.fmt_hint)
        if fault is not None and fault[0] == "upstream_incomplete" and response.status >= 300:
            fault = None  # an error status already says the answer is not a completion
        tail = []
        if fault is not None:
            code, message = fault
            record.error = ERROR_KINDS[code]
            close_upstream(self.response, record)
            logger.warning("stream %s: %s", record.request_id, message)
            tail = self._error_events(code, message)
        await pump.finish(tail)
        self._ended = True
        await self._send_end()

    async def _end_early(self, reason: str) -> None:
        """The deadline scope fired (``timeout`` or ``shutdown``): close upstream, end cleanly."""
        close_upstream(self.response, self.record)
        message = _END_MESSAGES.get(reason, reason)
        logger.warning("stream %s: %s", self.record.request_id, message)
        if not self.started:
            status = 503 if reason == "shutdown" else 504
            await json_error(self.send, status, self.fmt_hint, reason, message)
            return
        pump = self.pump
        if pump is None or pump.writer.done():
            return  # a copied body cannot carry an error: the connection ends unfinished
        await pump.finish(self._error_events(reason, message))
        self._ended = True
        await self._send_end()

    async def _send_end(self) -> None:
        if not self.detached:
            await self.send({"type": "http.response.body", "body": b"", "more_body": False})

    def _close_log(self) -> None:
        """End the resume log; a stream stopped before its end gets a terminal event first."""
        log = self.log
        assert log is not None
        if not self._ended:
            reason = self.record.cancel_reason or "cancelled"
            message = (
                f"the stream was stopped ({reason}) before it ended; "
                "a resume replays only what was generated until then"
            )
            try:
                log.stamp(self._error_events("stream_cancelled", message))
            except Exception:  # the log must be closed whatever happens
                logger.exception("stream %s: cannot log the end event", self.record.request_id)
        log.close()

    def _error_events(self, code: str, message: str) -> list[SSEEvent]:
        """The terminal error event in the stream's format; none for a plain ``sse`` stream,
        whose events streamhop never rewrites or adds to (the fault is logged and counted)."""
        fmt = None
        if self.pump is not None:
            fmt = self.pump.coalescer.format_name
        fmt = fmt or self.fmt_hint
        if fmt == "sse":
            return []
        return [error_event(fmt, code, message)]


def _decompressor(encoding: str) -> Any:
    if encoding in ("gzip", "x-gzip"):
        return zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        return zlib.decompressobj()
    return None


def _server_timing(timing: UpstreamTiming) -> str:
    """``Server-Timing`` (W3C Server Timing) with the hops known before the body, in ms."""
    parts = []
    if timing.connected is not None:
        parts.append(f"upstream-connect;dur={(timing.connected - timing.start) * 1000:.3f}")
    if timing.headers is not None:
        parts.append(f"upstream-headers;dur={(timing.headers - timing.start) * 1000:.3f}")
    return ", ".join(parts)
