"""The read side of a relayed stream: the upstream SSE body fed to the pump with a read
timeout, the upstream closed, and the request's record filled from the pump's stats.

Used by :class:`~.driver.StreamDriver` for every transport.
"""

from __future__ import annotations

import asyncio
import time
import zlib
from typing import Any, Final

import aiohttp

from streamhop.middleware.pump import Fault, StreamFault, StreamPump
from streamhop.sidecar.observe.record import StreamRecord

ERROR_KINDS: Final = {
    "upstream_truncated": "truncated",
    "upstream_incomplete": "incomplete",
    "upstream_timeout": "read_timeout",
    "event_too_large": "event_too_large",
    "upstream_disconnected": "disconnected",
}
"""Terminal fault codes of a relayed stream -> ``streamhop_upstream_errors_total{kind}``."""


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
) -> Fault | None:
    """Feed the upstream body to ``pump`` until it ends (the caller then asks
    :meth:`~streamhop.middleware.pump.StreamPump.feed_eof` how it ended).

    Args:
        response: the upstream SSE response.
        pump: where the bytes go.
        read_timeout_s: longest silence between two upstream reads, in seconds (like nginx's
            ``proxy_read_timeout``); time the pump holds the reader back does not count.
        decompress: a ``zlib`` decompressor for a compressed body, else ``None``.

    Returns:
        ``None`` when the body ended, else the read fault: ``upstream_timeout``,
        ``event_too_large``, ``upstream_disconnected`` (see :data:`ERROR_KINDS`). Never raises
        for a provider fault.
    """
    watch = _ReadWatch(read_timeout_s)
    # The hot loop of the sidecar (one pass per upstream read): ``readany`` rather than
    # ``iter_any`` (one frame less) and ``feed_nowait`` (no coroutine unless it must wait).
    content = response.content
    feed = pump.feed_nowait
    try:
        while chunk := await content.readany():
            if decompress is not None:
                chunk = decompress.decompress(chunk)
                if not chunk:
                    watch.last = time.monotonic()
                    continue
            if feed(chunk):
                watch.last = None  # the pump holds the reader back (backpressure): not silence
                await pump.wait_for_room()
            watch.last = time.monotonic()
        if decompress is not None:
            rest = decompress.flush()
            if rest:
                await pump.feed(rest)
    except asyncio.CancelledError:
        if not watch.fired:
            raise
        task = asyncio.current_task()
        assert task is not None
        task.uncancel()
        return Fault(
            "upstream_timeout", f"the upstream sent nothing for read_timeout_s={read_timeout_s:g} s"
        )
    except StreamFault as exc:
        return exc.fault
    except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, zlib.error) as exc:
        return Fault("upstream_disconnected", f"the upstream connection failed mid-stream: {exc}")
    finally:
        watch.cancel()
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
    """Copy the pump's stats into the record."""
    if pump is None:
        return
    stats = pump.stats
    record.format = stats.format
    record.events_in = stats.events_in
    record.events_out = stats.events_out
    record.malformed_events = stats.malformed
    record.writes = stats.writes
    record.bytes_in = stats.bytes_in
    record.bytes_out = stats.bytes_out
    record.first_content_sent_at = stats.first_content_write_at
    record.first_tool_args_sent_at = stats.first_tool_args_write_at
    record.first_answer_sent_at = stats.first_answer_write_at
    record.upstream_first_content_at = stats.upstream_first_content_at
    record.usage_input_tokens = stats.usage_input_tokens
    record.usage_output_tokens = stats.usage_output_tokens
    record.upstream_first_event_at = stats.upstream_first_event_at
    record.response_id = stats.response_id
    record.response_model = stats.response_model
    record.finish_reasons = stats.finish_reasons
