"""The stream pump: upstream bytes → decoder → coalescer → one downstream write at a time.

This is the IO edge shared by the sidecar and the middleware; it owns no socket. Shaped like
h11's ``receive_data``/``next_event`` and uvicorn's ``FlowControl``: the caller builds it from
:class:`PumpOptions` and one :class:`Sink` (an async ``write`` of SSE bytes, or ``write_events``
that sends events its own way: the WebSocket bridge makes frames from them), awaits
:meth:`StreamPump.feed` with bytes as they arrive (it waits for room itself), calls
:meth:`StreamPump.feed_eof` at the end (it returns the :class:`Fault`, if any), then
:meth:`StreamPump.finish`. No caller touches the decoder, coalescer or writer task behind it:
:meth:`StreamPump.is_done` and :meth:`StreamPump.on_failure` tell how the writes went,
:attr:`StreamPump.stats` what happened. Behaviour (DESIGN.md, "Stream lifecycle"):

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
from collections.abc import Callable, Sequence

from streamhop.middleware.errors import EventTooLargeError
from streamhop.middleware.pump_end import eof_fault, error_events
from streamhop.middleware.pump_types import (
    DEFAULT_OPTIONS,
    ClientStallError,
    Fault,
    OnEvents,
    PumpObserver,
    PumpOptions,
    PumpStats,
    Sink,
    StreamFault,
    Write,
    WriteEvents,
)
from streamhop.middleware.rechunk.coalescer import Coalescer
from streamhop.middleware.sse.decoder import SSEDecoder
from streamhop.middleware.sse.encoder import encode_events
from streamhop.middleware.sse.events import SSEEvent
from streamhop.middleware.write_watch import WriteWatch

__all__ = [
    "ClientStallError",
    "Fault",
    "PumpOptions",
    "PumpStats",
    "Sink",
    "StreamFault",
    "StreamPump",
]


class StreamPump:
    """Re-chunks one SSE stream and writes it downstream.

    Args:
        sink: where the stream goes (:class:`Sink`: SSE bytes or event batches, and an optional
            hook over each batch); a write that raises fails the pump.
        options: format, window, sizes and bounds (:class:`PumpOptions`).
        observer: optional receiver of per-read and per-write measurements.

    Must be created inside a running event loop.
    """

    def __init__(
        self,
        sink: Sink,
        options: PumpOptions = DEFAULT_OPTIONS,
        *,
        observer: PumpObserver | None = None,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        # Unpacked once: the write path reads plain attributes, not the sink's.
        self._write: Write | None = sink.write
        self._write_events: WriteEvents | None = sink.write_events
        self._on_events: OnEvents | None = sink.on_events
        self._coalescer = Coalescer(
            format=options.format,
            flush_interval=options.flush_interval_s,
            max_flush_bytes=options.max_flush_bytes,
            passthrough=options.passthrough,
            flush_boundary=options.flush_boundary,
            max_boundary_wait=options.max_boundary_wait_s,
        )
        self._decoder = SSEDecoder(options.max_event_bytes)
        self._max_pending = options.max_pending_bytes
        self._observer = observer
        self._woken = False
        self._waiter: asyncio.Future[None] | None = None
        self._room = asyncio.Event()
        self._room.set()
        self._timer: asyncio.TimerHandle | None = None
        # A stalled write closes the pump: its writer then fails with ClientStallError.
        self._watch = WriteWatch(self._loop, options.stall_timeout_s, self.close)
        self._closing = False
        self._tail: list[SSEEvent] = []
        # Comments and keep-alives are SSE bytes: an event sink gets neither.
        bytes_sink = sink.write is not None
        self._forward_comments = options.forward_comments and bytes_sink
        self._idle_write: bytes | None = None  # a comment to write once nothing else is due
        keepalive = options.keepalive_interval_s if bytes_sink else None
        self._keepalive_interval = keepalive
        self._keepalive: asyncio.TimerHandle | None = None
        if keepalive is not None:
            self._keepalive = self._loop.call_later(keepalive, self._on_keepalive)
        # Counters and times (``time.monotonic()``) of the writes; read through ``stats``.
        self._writes = 0
        self._bytes_in = 0
        self._bytes_out = 0
        self._first_content_sent_at: float | None = None
        self._first_tool_args_sent_at: float | None = None
        self._first_answer_sent_at: float | None = None
        self._writer = self._loop.create_task(self._write_loop(), name="streamhop-writer")

    def __repr__(self) -> str:
        c = self._coalescer
        writer = self._writer
        state = (
            "failed"
            if writer.done() and not writer.cancelled() and writer.exception()
            else "closing"
            if self._closing
            else "writing"
            if self._watch.writing_since is not None
            else "idle"
        )
        return (
            f"<StreamPump {state} format={c.format_name} in={c.events_in}ev/{self._bytes_in}B "
            f"out={c.events_out}ev/{self._bytes_out}B writes={self._writes} "
            f"held={c.pending_bytes}B>"
        )

    @property
    def stats(self) -> PumpStats:
        """A snapshot of the stream's counters and times."""
        c = self._coalescer
        return PumpStats(
            format=c.format_name,
            events_in=c.events_in,
            events_out=c.events_out,
            malformed_events=c.malformed,
            writes=self._writes,
            bytes_in=self._bytes_in,
            bytes_out=self._bytes_out,
            upstream_first_content_at=c.first_content_at,
            first_content_sent_at=self._first_content_sent_at,
            first_tool_args_sent_at=self._first_tool_args_sent_at,
            first_answer_sent_at=self._first_answer_sent_at,
            usage_input_tokens=c.usage_input_tokens,
            usage_output_tokens=c.usage_output_tokens,
            upstream_first_event_at=c.first_event_at,
            response_id=c.response_id,
            response_model=c.response_model,
            finish_reasons=tuple(c.finish_reasons),
        )

    def is_done(self) -> bool:
        """True once the writes are over: all written (:meth:`finish`), failed, or closed."""
        return self._writer.done()

    def on_failure(self, callback: Callable[[BaseException], None]) -> None:
        """Call ``callback`` once with the error if a write fails (the client is gone: the
        write's exception; :class:`ClientStallError`); never after a clean end or :meth:`close`.
        """

        def writer_done(writer: asyncio.Task[None]) -> None:
            if not writer.cancelled() and (error := writer.exception()) is not None:
                callback(error)

        self._writer.add_done_callback(writer_done)

    def read_pause(self, now: float, lead: float) -> float:
        """How long the reader may leave the next bytes in the kernel (read coalescing): until
        ``lead`` seconds before the held events' write is due, once the stream's first content
        was written and while it is in the steady flow of its answer
        (:attr:`~streamhop.middleware.rechunk.coalescer.Coalescer.answering`); ``0.0`` or less
        when it should read at once (nothing held, a write due now, the first content not out
        yet, reasoning, after a boundary, closing).

        Args:
            now: ``time.monotonic()`` seconds.
            lead: seconds before the write that reading resumes, so what arrived meanwhile is in
                that write.
        """
        coalescer = self._coalescer
        if self._first_content_sent_at is None or self._closing or not coalescer.answering:
            return 0.0
        deadline = coalescer.deadline
        if deadline is None:
            return 0.0
        return deadline - now - lead

    def error_events(self, fault: Fault, format_hint: str | None = None) -> list[SSEEvent]:
        """The terminal error event for ``fault`` in the stream's format (``format_hint`` while
        none is known); none for a plain ``sse`` stream (:func:`.pump_end.error_events`)."""
        return error_events(self._coalescer.format_name or format_hint, fault)

    async def feed(self, data: bytes) -> None:
        """Take upstream bytes (non-empty), schedule writes, and wait while more than
        ``max_pending_bytes`` are held (returns at once if the writes are over: see
        :meth:`is_done`, :meth:`on_failure`).

        Raises:
            StreamFault: an event exceeded ``max_event_bytes`` (code ``event_too_large``).
        """
        if self.feed_nowait(data):
            await self.wait_for_room()

    def feed_nowait(self, data: bytes) -> bool:
        """:meth:`feed` without the wait: take ``data`` (non-empty) and schedule writes.

        Returns:
            True when more than ``max_pending_bytes`` are held: the caller must then ``await``
            :meth:`wait_for_room` before feeding more (a read loop saves a coroutine per read).

        Raises:
            StreamFault: an event exceeded ``max_event_bytes`` (code ``event_too_large``).
        """
        try:
            self._feed(data)
        except EventTooLargeError as exc:
            raise StreamFault(Fault("event_too_large", str(exc))) from exc
        return self._coalescer.pending_bytes > self._max_pending

    def feed_eof(
        self, *, expect_terminal: bool = False, format_hint: str | None = None
    ) -> Fault | None:
        """The upstream body ended cleanly; return why the stream is not complete, if it is not.

        Args:
            expect_terminal: check the format's terminal event (the sidecar, which relays a
                provider; not the middleware, whose app may end its own stream as it likes).
            format_hint: the format expected when no event came (auto-detection saw nothing).

        Returns:
            ``upstream_truncated``, ``upstream_incomplete`` or ``None``
            (:func:`.pump_end.eof_fault`).
        """
        decoder = self._decoder
        decoder.receive_data(b"")
        return eof_fault(decoder.truncated, self._coalescer, expect_terminal, format_hint)

    def _feed(self, data: bytes) -> None:
        """Decode ``data`` and push its events (the synchronous part of :meth:`feed`)."""
        now = time.monotonic()
        self._bytes_in += len(data)
        try:
            events = self._decoder.feed(data)
        except EventTooLargeError:
            # Events completed earlier in this same read are still owed to the client.
            while type(event := self._decoder.next_event()) is SSEEvent:
                self._coalescer.push(event, now)
            raise
        if events:
            coalescer = self._coalescer
            for event in events:
                coalescer.push(event, now)
            self._schedule(now)
        decoder = self._decoder
        if decoder.comment is not None:
            comment = decoder.comment
            decoder.comment = None
            if self._forward_comments and self._idle():
                self._idle_write = comment + b"\n\n"
                self._wake()
        if self._observer is not None:
            self._observer.upstream_read(len(events), len(data), time.monotonic() - now, now)

    async def wait_for_room(self) -> None:
        """Wait until at most ``max_pending_bytes`` are held, or the writer stopped."""
        while self._coalescer.pending_bytes > self._max_pending and not self._writer.done():
            self._room.clear()
            self._wake()
            await self._room.wait()

    async def finish(self, tail: Sequence[SSEEvent] = ()) -> None:
        """Write everything held, then ``tail`` (e.g. a terminal error event), and wait.

        Raises:
            Whatever the writer failed with (client gone, :class:`ClientStallError`).
        """
        self._tail = list(tail)
        self._closing = True
        self._wake()
        await self._writer

    def close(self) -> None:
        """Stop at once without writing more (client gone, cancellation)."""
        self._cancel_timers()
        if not self._writer.done():
            self._writer.cancel()

    def _cancel_timers(self) -> None:
        self._watch.cancel()
        for name in ("_keepalive", "_timer"):
            handle: asyncio.TimerHandle | None = getattr(self, name)
            if handle is not None:
                handle.cancel()
                setattr(self, name, None)

    def _schedule(self, now: float) -> None:
        deadline = self._coalescer.deadline
        if deadline is None:
            return
        if deadline <= now:
            self._wake()
        elif self._timer is None:
            self._timer = self._loop.call_later(deadline - now, self._on_timer)

    def _wake(self) -> None:
        """Wake the writer task (a plain future rather than an ``asyncio.Event``: the writer
        waits once per write, and ``Event.wait`` looks the running loop up each time)."""
        self._woken = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _on_timer(self) -> None:
        self._timer = None
        self._wake()

    def _idle(self) -> bool:
        """Nothing held, nothing being written."""
        return self._coalescer.deadline is None and self._watch.writing_since is None

    def _on_keepalive(self) -> None:
        """One timer per ``keepalive_interval``: write a comment if the stream went quiet."""
        interval = self._keepalive_interval
        assert interval is not None
        self._keepalive = None
        if self._writer.done() or self._closing:
            return
        left = self._watch.last_write + interval - time.monotonic()
        if left <= 0:
            if self._idle():
                self._idle_write = b": keep-alive\n\n"
                self._wake()
            left = interval
        self._keepalive = self._loop.call_later(left, self._on_keepalive)

    async def _write_loop(self) -> None:
        coalescer = self._coalescer
        try:
            while True:
                while not self._woken:
                    self._waiter = waiter = self._loop.create_future()
                    try:
                        await waiter
                    finally:
                        self._waiter = None
                self._woken = False
                while True:
                    closing = self._closing
                    begin = time.monotonic()
                    if closing or coalescer.due(begin):
                        events = coalescer.take(None if closing else begin)
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
            self._cancel_timers()

    async def _send_bytes(self, data: bytes) -> None:
        """Write a comment (keep-alive, a forwarded provider comment): not an event, so no hook
        and no event counted, but its bytes count like every byte the client gets."""
        write = self._write
        assert write is not None  # comments are written to a bytes sink only
        start = time.monotonic()
        watch = self._watch
        await watch.timed(write(data), start, f"{len(data)} bytes")
        self._bytes_out += len(data)
        if self._observer is not None:
            self._observer.downstream_write(0, len(data), start, watch.last_write)

    async def _send(self, events: list[SSEEvent], begin: float) -> None:
        """Write ``events`` (encoded for the sink's ``write``, or handed to its
        ``write_events``); ``begin`` is when their merge (``take``) started."""
        if self._on_events is not None:
            events = self._on_events(events)
        start = time.monotonic()
        observer = self._observer
        if observer is not None:
            observer.flush_overhead(start - begin)
        coalescer = self._coalescer
        if self._first_content_sent_at is None and coalescer.content_seen:
            self._first_content_sent_at = start
        if self._first_tool_args_sent_at is None and coalescer.first_tool_args_at is not None:
            self._first_tool_args_sent_at = start
        if self._first_answer_sent_at is None and coalescer.first_answer_at is not None:
            self._first_answer_sent_at = start
        watch = self._watch
        write = self._write
        if write is not None:
            data = encode_events(events)
            size = len(data)
            await watch.timed(write(data), start, f"{size} bytes")
        else:
            write_events = self._write_events
            assert write_events is not None  # a Sink holds one of the two
            size = await watch.timed(write_events(events), start, f"{len(events)} events")
        self._writes += 1
        self._bytes_out += size
        if observer is not None:
            observer.downstream_write(len(events), size, start, watch.last_write)
