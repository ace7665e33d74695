"""What an HTTP exchange and a WebSocket generation share: relaying an upstream SSE body
through a :class:`~streamhop.middleware.pump.StreamPump`, closing the upstream, and filling the
request's record.

Only the edges differ (ASGI body messages vs WebSocket frames, error events vs ``error``
messages); the reading loop, its fault mapping and the accounting live here once.
"""

from __future__ import annotations

import asyncio
import time
import zlib
from typing import Any, Final

import aiohttp

from streamhop.middleware.controls import Controls
from streamhop.middleware.errors import EventTooLargeError
from streamhop.middleware.observe.metrics import StreamMetrics
from streamhop.middleware.pump import StreamPump, Write
from streamhop.middleware.rechunk.coalescer import Coalescer
from streamhop.middleware.sse.decoder import SSEDecoder
from streamhop.sidecar.config import Config, RouteConfig
from streamhop.sidecar.observe.record import StreamRecord

ERROR_KINDS: Final = {
    "upstream_truncated": "truncated",
    "upstream_incomplete": "incomplete",
    "upstream_timeout": "read_timeout",
    "event_too_large": "event_too_large",
    "upstream_disconnected": "disconnected",
}
"""Terminal error codes of a relayed stream -> ``streamhop_upstream_errors_total{kind}``."""

TERMINATED_FORMATS: Final = {
    "openai-chat": "data: [DONE]",
    "openai-responses": "response.completed",
    "anthropic": "message_stop",
}
"""Formats whose complete streams end with a terminal event, and that event."""


def make_pump(
    config: Config,
    route: RouteConfig,
    controls: Controls,
    write: Write,
    observer: StreamMetrics,
) -> StreamPump:
    """A pump with the route's format and the config's window, sizes and bounds, where a
    request's ``X-Streamhop-*`` controls override the config."""
    rechunk = config.rechunk
    flush_ms = (
        controls.flush_interval_ms
        if controls.flush_interval_ms is not None
        else rechunk.flush_interval_ms
    )
    coalescer = Coalescer(
        format=route.format,
        flush_interval=flush_ms / 1000.0,
        max_flush_bytes=rechunk.max_flush_bytes,
        passthrough=(controls.mode or rechunk.mode) == "passthrough",
    )
    return StreamPump(
        write,
        coalescer,
        SSEDecoder(rechunk.max_event_bytes),
        max_pending_bytes=config.backpressure.max_pending_bytes,
        stall_timeout=config.backpressure.stall_timeout_s,
        observer=observer,
        keepalive_interval=route.keepalive_interval_s,
        forward_comments=True,
    )


class _ReadWatch:
    """``read_timeout_s`` between two upstream reads, as one timer re-armed per interval (like
    the pump's stall watchdog) rather than a timeout object per read. When it fires, the
    relaying task is cancelled and :func:`relay` reports ``upstream_timeout``."""

    __slots__ = ("_handle", "_loop", "_task", "fired", "last", "timeout")

    def __init__(self, timeout: float) -> None:
        self._loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        self.timeout = timeout
        self.last: float | None = time.monotonic()
        """When the last read arrived; ``None`` while the pump holds the reader (backpressure:
        not the provider's silence)."""
        self.fired = False
        self._handle: asyncio.TimerHandle | None = self._loop.call_later(timeout, self._check)

    def _check(self) -> None:
        self._handle = None
        last = self.last
        left = self.timeout if last is None else last + self.timeout - time.monotonic()
        if left > 0:
            self._handle = self._loop.call_later(left, self._check)
            return
        self.fired = True
        self._task.cancel()

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


async def relay(
    response: aiohttp.ClientResponse,
    pump: StreamPump,
    read_timeout_s: float,
    decompress: Any = None,
    format_hint: str | None = None,
) -> tuple[str, str] | None:
    """Feed the upstream body to ``pump`` until it ends.

    Args:
        response: the upstream SSE response.
        pump: where the bytes go.
        read_timeout_s: longest silence between two upstream reads, in seconds (like nginx's
            ``proxy_read_timeout``); time the pump holds the reader back does not count.
        decompress: a ``zlib`` decompressor for a compressed body, else ``None``.
        format_hint: the format expected from the route or path, for a stream that ended
            before its first event (auto-detection had nothing to look at).

    Returns:
        ``None`` when the body ended cleanly and completely, else ``(code, message)`` of the
        fault: ``upstream_timeout``, ``upstream_truncated`` (EOF inside an event),
        ``upstream_incomplete`` (a clean close without the format's terminal event: ``[DONE]``,
        ``response.completed``, ``message_stop``), ``event_too_large``,
        ``upstream_disconnected`` (see :data:`ERROR_KINDS`). Never raises for a provider fault.
    """
    watch = _ReadWatch(read_timeout_s)
    try:
        async for chunk in response.content.iter_any():
            watch.last = time.monotonic()
            if decompress is not None:
                chunk = decompress.decompress(chunk)
                if not chunk:
                    continue
            pump.feed(chunk)
            if pump.over_limit:
                watch.last = None
                await pump.wait_for_room()
                watch.last = time.monotonic()
        if decompress is not None:
            rest = decompress.flush()
            if rest:
                pump.feed(rest)
        pump.decoder.receive_data(b"")
    except asyncio.CancelledError:
        if not watch.fired:
            raise
        task = asyncio.current_task()
        assert task is not None
        task.uncancel()
        return (
            "upstream_timeout",
            f"the upstream sent nothing for read_timeout_s={read_timeout_s:g} s",
        )
    except EventTooLargeError as exc:
        return "event_too_large", str(exc)
    except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, zlib.error) as exc:
        return "upstream_disconnected", f"the upstream connection failed mid-stream: {exc}"
    finally:
        watch.cancel()
    if pump.decoder.truncated:
        return "upstream_truncated", "the upstream stream ended in the middle of an event"
    coalescer = pump.coalescer
    if coalescer.incomplete or (
        coalescer.format_name is None and format_hint in TERMINATED_FORMATS
    ):
        return (
            "upstream_incomplete",
            "the upstream closed the stream without its terminal event "
            f"({TERMINATED_FORMATS.get(coalescer.format_name or format_hint or '', '?')}); "
            "the answer is incomplete",
        )
    return None


def close_upstream(response: aiohttp.ClientResponse | None, record: StreamRecord) -> None:
    """Close the upstream response unless it was read to the end (then it is pooled), and
    record the cancel latency if a cancellation is pending."""
    if response is not None and not response.closed:
        if response.content.at_eof():
            response.release()
        else:
            response.close()
    note_cancel_latency(record)


def note_cancel_latency(record: StreamRecord) -> None:
    """Cancellation detected earlier and the upstream now closed: record how long it took."""
    if record.cancel_detected_at is not None and record.cancel_latency_s is None:
        record.cancel_latency_s = time.monotonic() - record.cancel_detected_at


def collect(record: StreamRecord, pump: StreamPump | None) -> None:
    """Copy the pump's and coalescer's counters into the record."""
    if pump is None:
        return
    coalescer = pump.coalescer
    record.format = coalescer.format_name
    record.events_in = coalescer.events_in
    record.events_out = coalescer.events_out
    record.malformed_events = coalescer.malformed
    record.writes = pump.writes
    record.bytes_in = pump.bytes_in
    record.bytes_out = pump.bytes_out
    record.first_content_sent_at = pump.first_content_write_at
    record.first_tool_args_sent_at = pump.first_tool_args_write_at
    record.upstream_first_content_at = coalescer.first_content_at
    record.usage_input_tokens = coalescer.usage_input_tokens
    record.usage_output_tokens = coalescer.usage_output_tokens
