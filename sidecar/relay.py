"""What an HTTP exchange and a WebSocket generation share: relaying an upstream SSE body
through a :class:`~streamhop.middleware.pump.StreamPump`, closing the upstream, and filling the
request's record.

Only the edges differ (ASGI body messages vs WebSocket frames, error events vs ``error``
messages); the reading loop, its fault mapping and the accounting live here once.
"""

from __future__ import annotations

import time
import zlib
from typing import Any, Final

import aiohttp

from streamhop.middleware.coalescer import Coalescer
from streamhop.middleware.errors import EventTooLargeError
from streamhop.middleware.metrics import StreamMetrics
from streamhop.middleware.pump import StreamPump, Write
from streamhop.middleware.sse_decoder import SSEDecoder

from .config import Config, RouteConfig
from .headers import Controls
from .stream_record import StreamRecord

ERROR_KINDS: Final = {
    "upstream_truncated": "truncated",
    "event_too_large": "event_too_large",
    "upstream_disconnected": "disconnected",
}
"""Terminal error codes of a relayed stream -> ``streamhop_upstream_errors_total{kind}``."""


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
    )


async def relay(
    response: aiohttp.ClientResponse, pump: StreamPump, decompress: Any = None
) -> tuple[str, str] | None:
    """Feed the upstream body to ``pump`` until it ends.

    Args:
        response: the upstream SSE response.
        pump: where the bytes go.
        decompress: a ``zlib`` decompressor for a compressed body, else ``None``.

    Returns:
        ``None`` when the body ended cleanly, else ``(code, message)`` of the fault
        (``upstream_truncated``, ``event_too_large``, ``upstream_disconnected``; see
        :data:`ERROR_KINDS`). Never raises for a provider fault.
    """
    try:
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
    except EventTooLargeError as exc:
        return "event_too_large", str(exc)
    except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, zlib.error) as exc:
        return "upstream_disconnected", f"the upstream connection failed mid-stream: {exc}"
    if pump.decoder.truncated:
        return "upstream_truncated", "the upstream stream ended in the middle of an event"
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
    record.upstream_first_content_at = coalescer.first_content_at
    record.usage_input_tokens = coalescer.usage_input_tokens
    record.usage_output_tokens = coalescer.usage_output_tokens
