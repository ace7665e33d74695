"""The proxy endpoint: one ASGI callable that forwards every path by the longest route prefix.

Where a byte goes: the request body is read whole (bounded by ``max_request_bytes``) and sent
upstream by :mod:`.upstream`; a ``text/event-stream`` answer is re-chunked by
:class:`~streamhop.middleware.pump.StreamPump` and written to the client; any other answer is
copied through untouched (status, headers less hop-by-hop ones, body bytes as received, still
compressed if they were).

A client disconnect (ASGI ``http.disconnect``) cancels the request task at once; its ``finally``
closes the upstream response, so the provider sees its connection close and the connection is not
returned to the pool. A deadline (route ``timeout_s`` or ``X-Streamhop-Timeout-Ms``) ends a
stream with a terminal error event in the stream's format.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
import zlib
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import aiohttp
import orjson

from streamhop.middleware.coalescer import Coalescer
from streamhop.middleware.errors import EventTooLargeError
from streamhop.middleware.formats import error_body, error_event, format_for_path
from streamhop.middleware.metrics import Metrics, StreamMetrics
from streamhop.middleware.pump import ClientStallError, StreamPump
from streamhop.middleware.sse_decoder import SSEDecoder

from .config import Config, RouteConfig
from .headers import ControlHeaderError, Controls, response_headers, upstream_request_headers
from .routing import RouteTable
from .stream_record import StreamRecord
from .upstream import UpstreamError, UpstreamPool, UpstreamTimeoutError, UpstreamTiming

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_SSE_DROP = frozenset(
    (b"content-length", b"content-encoding", b"cache-control", b"x-accel-buffering")
)


# Terminal error event codes -> streamhop_upstream_errors_total{kind}.
_ERROR_KINDS = {
    "upstream_truncated": "truncated",
    "event_too_large": "event_too_large",
    "upstream_disconnected": "disconnected",
}


class SidecarState:
    """Process-wide state the endpoints share: open streams, draining flag."""

    def __init__(self) -> None:
        self.active = 0
        self.ready = False
        self.draining = False
        self.tasks: set[asyncio.Task[Any]] = set()


class Proxy:
    """ASGI app proxying HTTP requests (WebSocket scopes are refused with close code 1003)."""

    def __init__(
        self,
        config: Config,
        pool: UpstreamPool,
        state: SidecarState,
        metrics: Metrics,
        on_finish: Callable[[StreamRecord], None] | None = None,
    ) -> None:
        self.config = config
        self.pool = pool
        self.state = state
        self.metrics = metrics
        self.table = RouteTable(config.routes)
        self.on_finish = on_finish

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1003})
            return
        if scope["type"] != "http":
            return
        loop = asyncio.get_running_loop()
        path: str = scope["path"]
        route = self.table.match(path)
        fmt_hint = format_for_path(path)
        if route is None:
            await _json_error(send, 404, fmt_hint, "no_route", f"no route for path {path!r}")
            return
        if route.format != "auto":
            fmt_hint = route.format
        if self.state.draining:
            await _json_error(
                send, 503, fmt_hint, "draining", "streamhop is shutting down", retry_after=True
            )
            return
        if self.state.active >= self.config.server.max_streams:
            await _json_error(
                send,
                503,
                fmt_hint,
                "too_many_streams",
                f"streamhop is at max_streams={self.config.server.max_streams}",
                retry_after=True,
            )
            return
        try:
            forward, controls = upstream_request_headers(scope["headers"])
        except ControlHeaderError as exc:
            await _json_error(send, 400, fmt_hint, "bad_control_header", str(exc))
            return
        body = await _read_body(receive, self.config.server.max_request_bytes)
        if body is None:
            return  # client left while sending the request
        if isinstance(body, int):
            await _json_error(
                send,
                413,
                fmt_hint,
                "request_too_large",
                f"request body is larger than max_request_bytes={body}",
            )
            return
        record = StreamRecord(
            stream_id=secrets.token_hex(8),
            route=route.prefix,
            method=scope["method"],
            path=path,
            received_at=time.monotonic(),
        )
        _inspect_request(record, body)
        observed = self.metrics.stream(route.prefix, record.model)
        timeout_s = (
            controls.timeout_ms / 1000.0 if controls.timeout_ms is not None else route.timeout_s
        )
        deadline = None if timeout_s is None else record.received_at + timeout_s
        self.state.active += 1
        observed.active.inc()
        work = loop.create_task(
            self._exchange(scope, send, route, forward, controls, body, record, deadline, observed)
        )
        watcher = loop.create_task(_wait_disconnect(receive))
        try:
            await asyncio.wait((work, watcher), return_when=asyncio.FIRST_COMPLETED)
            if not work.done():
                # The client went away first: close upstream now and measure how long it took.
                detected = time.monotonic()
                record.cancel_reason = record.cancel_reason or "client_disconnect"
                work.cancel()
                await asyncio.wait((work,))
                record.cancel_latency_s = time.monotonic() - detected
            elif not work.cancelled() and work.exception() is not None:
                raise work.exception()  # type: ignore[misc]
        except asyncio.CancelledError:
            # Server shutdown cancelled us: close upstream, reason shutdown.
            record.cancel_reason = record.cancel_reason or "shutdown"
            work.cancel()
            await asyncio.wait((work,))
            raise
        finally:
            watcher.cancel()
            self.state.active -= 1
            observed.active.dec()
            record.finished_at = time.monotonic()
            _observe_end(observed, record)
            if self.on_finish is not None:
                self.on_finish(record)

    async def _exchange(
        self,
        scope: Scope,
        send: Send,
        route: RouteConfig,
        forward: list[tuple[str, str]],
        controls: Controls,
        body: bytes,
        record: StreamRecord,
        deadline: float | None,
        observed: StreamMetrics,
    ) -> None:
        url = self.table.upstream_url(route, _raw_path(scope), scope.get("query_string", b""))
        headers = _merge_headers(forward, route.headers)
        timing = UpstreamTiming()
        fmt_hint = route.format if route.format != "auto" else format_for_path(record.path)
        headers_timeout = route.connect_timeout_s if record.streaming_request else None
        if deadline is not None:
            remaining = max(deadline - time.monotonic(), 0.0)
            headers_timeout = (
                remaining if headers_timeout is None else min(headers_timeout, remaining)
            )
        try:
            response = await self.pool.request(
                route, scope["method"], url, headers, body, timing, headers_timeout
            )
        except UpstreamError as exc:
            record.error = exc.kind
            timed_out = deadline is not None and time.monotonic() >= deadline - 1e-3
            if isinstance(exc, UpstreamTimeoutError) and timed_out:
                record.cancel_reason = "timeout"
            status = 504 if isinstance(exc, UpstreamTimeoutError) else 502
            logger.warning("stream %s: %s", record.stream_id, exc)
            await _json_error(send, status, fmt_hint, f"upstream_{exc.kind}", str(exc))
            return
        record.upstream_request_at = timing.start
        record.upstream_connected_at = timing.connected
        record.upstream_headers_at = timing.headers
        record.status = response.status
        try:
            ctype = response.headers.get("Content-Type", "")
            if ctype.startswith("text/event-stream") and scope["method"] != "HEAD":
                await self._stream_sse(
                    send, route, controls, response, record, timing, deadline, observed
                )
            else:
                await self._copy(send, response, record, deadline)
        finally:
            # Normal end: the body was read to EOF and the connection is back in the pool.
            # Any other end (cancel, error, deadline): close it so the provider stops generating.
            if not response.closed and not response.content.at_eof():
                response.close()
            response.release()

    async def _copy(
        self,
        send: Send,
        response: aiohttp.ClientResponse,
        record: StreamRecord,
        deadline: float | None,
    ) -> None:
        """Copy a non-SSE answer through untouched."""
        headers = response_headers(response.raw_headers)
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        try:
            async with asyncio.timeout(_remaining(deadline)):
                async for chunk in response.content.iter_any():
                    record.bytes_in += len(chunk)
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except TimeoutError:
            record.cancel_reason = "timeout"
            logger.warning("stream %s: deadline reached mid-body", record.stream_id)
            response.close()
        except aiohttp.ClientError as exc:
            record.error = "disconnected"
            logger.warning("stream %s: upstream failed mid-body: %s", record.stream_id, exc)
            response.close()
        record.bytes_out = record.bytes_in
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _stream_sse(
        self,
        send: Send,
        route: RouteConfig,
        controls: Controls,
        response: aiohttp.ClientResponse,
        record: StreamRecord,
        timing: UpstreamTiming,
        deadline: float | None,
        observed: StreamMetrics,
    ) -> None:
        """Re-chunk an SSE answer: decode, merge, write with one write in flight."""
        cfg = self.config
        record.sse = True
        encoding = response.headers.get("Content-Encoding", "identity").lower()
        decompress = _decompressor(encoding)
        if decompress is None and encoding not in ("identity", ""):
            logger.warning(
                "stream %s: SSE with Content-Encoding %s cannot be re-chunked; copied as is",
                record.stream_id,
                encoding,
            )
            await self._copy(send, response, record, deadline)
            return
        headers = response_headers(response.raw_headers, _SSE_DROP)
        headers += [
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),
            (b"x-streamhop-stream-id", record.stream_id.encode()),
            (b"server-timing", _server_timing(timing).encode()),
        ]
        await send({"type": "http.response.start", "status": response.status, "headers": headers})

        async def write(data: bytes) -> None:
            await send({"type": "http.response.body", "body": data, "more_body": True})

        mode = controls.mode or cfg.rechunk.mode
        flush_ms = (
            controls.flush_interval_ms
            if controls.flush_interval_ms is not None
            else cfg.rechunk.flush_interval_ms
        )
        coalescer = Coalescer(
            format=route.format,
            flush_interval=flush_ms / 1000.0,
            max_flush_bytes=cfg.rechunk.max_flush_bytes,
            passthrough=mode == "passthrough",
        )
        pump = StreamPump(
            write,
            coalescer,
            SSEDecoder(cfg.rechunk.max_event_bytes),
            max_pending_bytes=cfg.backpressure.max_pending_bytes,
            stall_timeout=cfg.backpressure.stall_timeout_s,
            observer=observed,
        )
        me = asyncio.current_task()
        assert me is not None

        def writer_done(task: asyncio.Task[None]) -> None:
            # A failed write (client gone, stalled) must stop the reader and close upstream.
            if not task.cancelled() and task.exception() is not None and not me.done():
                me.cancel()

        pump.writer.add_done_callback(writer_done)
        tail_code: str | None = None
        tail_message = ""
        try:
            try:
                async with asyncio.timeout(_remaining(deadline)):
                    async for chunk in response.content.iter_any():
                        if decompress is not None:
                            chunk = decompress.decompress(chunk)
                            if not chunk:
                                continue
                        pump.feed(chunk)
                        if pump.over_limit:
                            await pump.wait_for_room()
                if decompress is not None:
                    rest = decompress.flush()
                    if rest:
                        pump.feed(rest)
                pump.decoder.receive_data(b"")
                if pump.decoder.truncated:
                    tail_code = "upstream_truncated"
                    tail_message = "the upstream stream ended in the middle of an event"
            except TimeoutError:
                record.cancel_reason = "timeout"
                tail_code = "timeout"
                tail_message = "streamhop deadline reached before the upstream stream ended"
            except EventTooLargeError as exc:
                tail_code = "event_too_large"
                tail_message = str(exc)
            except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, zlib.error) as exc:
                tail_code = "upstream_disconnected"
                tail_message = f"the upstream connection failed mid-stream: {exc}"
            if tail_code is not None:
                if tail_code != "timeout":
                    record.error = _ERROR_KINDS[tail_code]
                response.close()
                logger.warning("stream %s: %s", record.stream_id, tail_message)
            tail = []
            if tail_code is not None:
                fmt = coalescer.format_name or format_for_path(record.path)
                tail.append(error_event(fmt, tail_code, tail_message))
            await pump.finish(tail)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            writer = pump.writer
            if (
                writer.done()
                and not writer.cancelled()
                and isinstance(writer.exception(), ClientStallError)
            ):
                record.cancel_reason = "stall"
            raise
        finally:
            pump.close()
            record.format = coalescer.format_name
            record.events_in = coalescer.events_in
            record.events_out = coalescer.events_out
            record.malformed_events = coalescer.malformed
            record.writes = pump.writes
            record.bytes_in = pump.bytes_in
            record.bytes_out = pump.bytes_out
            record.first_content_sent_at = pump.first_content_write_at
            if coalescer.first_content_at is not None:
                record.upstream_first_content_at = coalescer.first_content_at


def _remaining(deadline: float | None) -> float | None:
    """Seconds from now to a ``time.monotonic()`` deadline (``None``: no deadline)."""
    return None if deadline is None else max(deadline - time.monotonic(), 0.0)


def _decompressor(encoding: str) -> Any:
    if encoding == "gzip" or encoding == "x-gzip":
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


def _raw_path(scope: Scope) -> str:
    raw = scope.get("raw_path")
    if raw:
        return bytes(raw).decode("latin-1")
    return str(scope["path"])


def _merge_headers(forward: list[tuple[str, str]], route_headers: Any) -> list[tuple[str, str]]:
    """Client headers, with the route's configured headers replacing same-named ones."""
    if not route_headers:
        return forward
    override = {name.lower() for name in route_headers}
    merged = [(n, v) for n, v in forward if n.lower() not in override]
    merged.extend(route_headers.items())
    return merged


def _observe_end(observed: StreamMetrics, record: StreamRecord) -> None:
    """Record a finished request's per-stream metrics."""
    observed.flush()
    if record.upstream_request_at is not None:
        observed.request_overhead(record.upstream_request_at - record.received_at)
    if record.first_content_sent_at is not None:
        observed.ttft(record.first_content_sent_at - record.received_at)
    if record.upstream_first_content_at is not None and record.upstream_request_at is not None:
        observed.upstream_ttft(record.upstream_first_content_at - record.upstream_request_at)
    if record.finished_at is not None:
        observed.duration(record.finished_at - record.received_at)
    if record.cancel_reason is not None:
        observed.cancelled(record.cancel_reason, record.cancel_latency_s)
    if record.error is not None:
        observed.upstream_error(record.error)
    if record.malformed_events:
        observed.upstream_error("malformed_event", record.malformed_events)
    if not record.sse:
        # Non-SSE bodies are copied without a pump: count their bytes here.
        observed.bytes_up.inc(record.bytes_in)
        observed.bytes_down.inc(record.bytes_out)


def _inspect_request(record: StreamRecord, body: bytes) -> None:
    """Note the request's ``model`` and ``stream`` flag when the body is a JSON object."""
    if not body or body[:1] != b"{":
        return
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return
    if isinstance(obj, dict):
        model = obj.get("model")
        if isinstance(model, str):
            record.model = model
        record.streaming_request = obj.get("stream") is True


async def _read_body(receive: Receive, limit: int) -> bytes | int | None:
    """The whole request body; ``None`` if the client disconnected, ``limit`` if over it."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return limit
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _wait_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def _json_error(
    send: Send,
    status: int,
    fmt: str | None,
    code: str,
    message: str,
    *,
    retry_after: bool = False,
) -> None:
    body = error_body(fmt, code, message)
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    if retry_after:
        headers.append((b"retry-after", b"1"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
