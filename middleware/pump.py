"""The stream pump: upstream bytes → decoder → coalescer → one downstream write at a time.

This is the IO edge shared by the sidecar and the middleware; it owns no socket. The caller
feeds bytes as they arrive (:meth:`StreamPump.feed`) and hands in an async ``write`` that sends one
body chunk to the client. Behaviour (DESIGN.md, "Stream lifecycle"):

* at most one ``write`` is in flight; while it is, deltas keep merging in the coalescer, so a slow
  client gets fewer, larger writes and memory grows with unsent text, not with event count;
* :meth:`StreamPump.wait_for_room` blocks the reader while more than ``max_pending_bytes`` are
  held, which stops reading upstream and lets TCP push back on the provider;
* a ``write`` that does not complete within ``stall_timeout`` seconds fails the pump with
  :class:`ClientStallError`;
* a window flush needs no upstream byte: a timer on the loop wakes the writer at the coalescer's
  deadline (one timer per window, not per event);
* keep-alive (optional, ``keepalive_interval``): after that many seconds without a write, with
  nothing held, the pump writes a ``: keep-alive`` comment line, so idle timeouts of hops in
  between (ingresses, load balancers) do not cut a stream whose model is still thinking. The
  WHATWG spec suggests such a comment "every 15 seconds or so" (§9.2.7). With
  ``forward_comments`` the provider's own comments (``: ping``) are forwarded the same way:
  when nothing else is held or being written (held events would make them redundant).

The clock is ``time.monotonic()`` (seconds; system-wide on Linux, so comparable across
processes). Not ``loop.time()``: uvloop's has millisecond resolution, too coarse for TTFT and
overhead measurements.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from streamhop.middleware.errors import EventTooLargeError, StreamHopError
from streamhop.middleware.rechunk.coalescer import Coalescer
from streamhop.middleware.sse.decoder import SSEDecoder
from streamhop.middleware.sse.encoder import encode_events
from streamhop.middleware.sse.events import SSEEvent

Write = Callable[[bytes], Awaitable[None]]
OnEvents = Callable[[list[SSEEvent]], list[SSEEvent]]
"""A hook given each merged batch right before it is encoded; returns the events to write
(e.g. the same events with ``id`` set, see ``SSEEvent._replace``)."""


class PumpObserver(Protocol):
    """Receives the pump's measurements (``StreamMetrics`` implements it)."""

    def upstream_read(self, events: int, size: int, seconds: float) -> None: ...

    def downstream_write(self, events: int, size: int, start: float, end: float) -> None: ...

    def flush_overhead(self, seconds: float) -> None: ...


class ClientStallError(StreamHopError, TimeoutError):
    """The client accepted no bytes for ``stall_timeout`` seconds."""


class StreamPump:
    """Re-chunks one SSE stream and writes it downstream.

    Args:
        write: sends one body chunk to the client; raising fails the pump.
        coalescer: the stream's coalescer (format, window, sizes).
        decoder: the stream's decoder (event size bound).
        max_pending_bytes: held wire bytes above which :meth:`wait_for_room` blocks.
        stall_timeout: seconds one ``write`` may take before :class:`ClientStallError`.
        observer: optional receiver of per-read and per-write measurements.
        on_events: optional :data:`OnEvents` hook applied to each batch right before encoding
            (the sidecar's resume log numbers and records events with it).
        keepalive_interval: seconds of downstream silence after which a ``: keep-alive``
            comment is written; ``None`` never writes one.
        forward_comments: forward upstream comment lines while the stream is idle.

    Must be created inside a running event loop.
    """

    def __init__(
        self,
        write: Write,
        coalescer: Coalescer,
        decoder: SSEDecoder,
        *,
        max_pending_bytes: int = 1024 * 1024,
        stall_timeout: float = 30.0,
        observer: PumpObserver | None = None,
        on_events: OnEvents | None = None,
        keepalive_interval: float | None = None,
        forward_comments: bool = False,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._write = write
        self.coalescer = coalescer
        self.decoder = decoder
        self._max_pending = max_pending_bytes
        self._stall = stall_timeout
        self._observer = observer
        self.on_events = on_events
        """The :data:`OnEvents` hook (settable until the first event is fed)."""
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._timer: asyncio.TimerHandle | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self._writing_since: float | None = None
        self._stalled = False
        self._closing = False
        self._tail: list[SSEEvent] = []
        self._forward_comments = forward_comments
        self._idle_write: bytes | None = None  # a comment to write once nothing else is due
        self._keepalive_interval = keepalive_interval
        self._keepalive: asyncio.TimerHandle | None = None
        self._last_write = time.monotonic()
        if keepalive_interval is not None:
            self._keepalive = self._loop.call_later(keepalive_interval, self._on_keepalive)
        self.writes = 0
        """Downstream writes done."""
        self.bytes_in = 0
        """Upstream body bytes fed."""
        self.bytes_out = 0
        """Downstream body bytes written."""
        self.first_write_at: float | None = None
        """``time.monotonic()`` when the first write completed."""
        self.first_content_write_at: float | None = None
        """``time.monotonic()`` when the write holding the first content event began."""
        self.first_tool_args_write_at: float | None = None
        """``time.monotonic()`` when the write holding the first tool-argument fragment began."""
        self.writer = self._loop.create_task(self._write_loop(), name="streamhop-writer")
        """The writer task: done when the stream is fully written, or failed."""

    def feed(self, data: bytes) -> None:
        """Take upstream bytes (non-empty) and schedule writes.

        Raises:
            EventTooLargeError: an event exceeded the decoder's bound.
        """
        now = time.monotonic()
        self.bytes_in += len(data)
        try:
            events = self.decoder.feed(data)
        except EventTooLargeError:
            # Events completed earlier in this same read are still owed to the client.
            while type(event := self.decoder.next_event()) is SSEEvent:
                self.coalescer.push(event, now)
            raise
        if events:
            coalescer = self.coalescer
            for event in events:
                coalescer.push(event, now)
            self._schedule(now)
        decoder = self.decoder
        if decoder.comment is not None:
            comment = decoder.comment
            decoder.comment = None
            if self._forward_comments and self._idle():
                self._idle_write = comment + b"\n\n"
                self._wake.set()
        if self._observer is not None:
            self._observer.upstream_read(len(events), len(data), time.monotonic() - now)

    @property
    def over_limit(self) -> bool:
        """True when the reader should call :meth:`wait_for_room` before reading more."""
        return self.coalescer.pending_bytes > self._max_pending

    async def wait_for_room(self) -> None:
        """Block while more than ``max_pending_bytes`` are held (returns at once if the writer
        has stopped, so the reader can see the failure)."""
        while self.coalescer.pending_bytes > self._max_pending and not self.writer.done():
            self._room.clear()
            self._wake.set()
            await self._room.wait()

    async def finish(self, tail: Sequence[SSEEvent] = ()) -> None:
        """Write everything held, then ``tail`` (e.g. a terminal error event), and wait.

        Raises:
            Whatever the writer failed with (client gone, :class:`ClientStallError`).
        """
        self._tail = list(tail)
        self._closing = True
        self._wake.set()
        await self.writer

    def close(self) -> None:
        """Stop at once without writing more (client gone, cancellation)."""
        if self._keepalive is not None:
            self._keepalive.cancel()
            self._keepalive = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if not self.writer.done():
            self.writer.cancel()

    def _schedule(self, now: float) -> None:
        deadline = self.coalescer.deadline
        if deadline is None:
            return
        if deadline <= now:
            self._wake.set()
        elif self._timer is None:
            self._timer = self._loop.call_later(deadline - now, self._on_timer)

    def _check_stall(self) -> None:
        """The stall watchdog: one timer per ``stall_timeout`` while writes happen, instead of
        a timeout object per write (writes are the pump's most frequent await)."""
        self._watchdog = None
        since = self._writing_since
        if since is None:
            return  # no write in flight: re-armed by the next one
        left = since + self._stall - time.monotonic()
        if left > 0:
            self._watchdog = self._loop.call_later(left, self._check_stall)
            return
        self._stalled = True
        self.writer.cancel()

    def _on_timer(self) -> None:
        self._timer = None
        self._wake.set()

    def _idle(self) -> bool:
        """Nothing held, nothing being written."""
        return self.coalescer.deadline is None and self._writing_since is None

    def _on_keepalive(self) -> None:
        """One timer per ``keepalive_interval``: write a comment if the stream went quiet."""
        interval = self._keepalive_interval
        assert interval is not None
        self._keepalive = None
        if self.writer.done() or self._closing:
            return
        left = self._last_write + interval - time.monotonic()
        if left <= 0:
            if self._idle():
                self._idle_write = b": keep-alive\n\n"
                self._wake.set()
            left = interval
        self._keepalive = self._loop.call_later(left, self._on_keepalive)

    async def _write_loop(self) -> None:
        coalescer = self.coalescer
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while True:
                    closing = self._closing
                    begin = time.monotonic()
                    if closing or coalescer.due(begin):
                        events = coalescer.take()
                        if closing and self._tail:
                            events.extend(self._tail)
                            self._tail = []
                    else:
                        break
                    self._room.set()
                    if not events:
                        break
                    await self._send(events, begin)
                idle = self._idle_write
                if idle is not None:
                    self._idle_write = None
                    if coalescer.deadline is None:
                        await self._send_bytes(idle)
                if closing:
                    return
                self._schedule(time.monotonic())
        finally:
            self._room.set()
            if self._keepalive is not None:
                self._keepalive.cancel()
                self._keepalive = None
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if self._watchdog is not None:
                self._watchdog.cancel()
                self._watchdog = None

    async def _send_bytes(self, data: bytes) -> None:
        """Write a comment (keep-alive): not an event, so no hook, no event accounting."""
        await self._timed_write(data, time.monotonic())
        self.bytes_out += len(data)

    async def _timed_write(self, data: bytes, start: float) -> None:
        """One downstream write under the stall watchdog; sets ``_last_write`` when done.

        Raises:
            ClientStallError: the write did not complete within ``stall_timeout``.
        """
        self._writing_since = start
        if self._watchdog is None:
            self._watchdog = self._loop.call_later(self._stall, self._check_stall)
        try:
            await self._write(data)
        except asyncio.CancelledError:
            if self._stalled:
                raise ClientStallError(
                    f"client accepted no bytes for {self._stall:g} s ({len(data)} bytes pending)"
                ) from None
            raise
        finally:
            self._writing_since = None
        self._last_write = time.monotonic()

    async def _send(self, events: list[SSEEvent], begin: float) -> None:
        """Encode and write ``events``; ``begin`` is when their merge (``take``) started."""
        if self.on_events is not None:
            events = self.on_events(events)
        data = encode_events(events)
        start = time.monotonic()
        observer = self._observer
        if observer is not None:
            observer.flush_overhead(start - begin)
        if self.first_content_write_at is None and self.coalescer.content_seen:
            self.first_content_write_at = start
        if self.first_tool_args_write_at is None and self.coalescer.first_tool_args_at is not None:
            self.first_tool_args_write_at = start
        await self._timed_write(data, start)
        end = self._last_write
        if self.first_write_at is None:
            self.first_write_at = end
        self.writes += 1
        self.bytes_out += len(data)
        if observer is not None:
            observer.downstream_write(len(events), len(data), start, end)
