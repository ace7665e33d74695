"""The read side of a relayed stream: the upstream SSE body fed to the pump with a read
timeout, and the upstream closed (with the cancel latency noted in the request's record).

Used by :class:`~.driver.StreamDriver` for every transport.
"""

from __future__ import annotations

import asyncio
import time
import zlib
from typing import Any, Final

from streamhop.middleware.pump import Fault, StreamFault, StreamPump
from streamhop.sidecar.observe.record import StreamRecord
from streamhop.sidecar.recording import StreamRecorder
from streamhop.sidecar.upstream.connection import UpstreamResponse

ERROR_KIND_OF_FAULT: Final = {
    "upstream_truncated": "truncated",
    "upstream_incomplete": "incomplete",
    "upstream_timeout": "read_timeout",
    "event_too_large": "event_too_large",
    "upstream_disconnected": "disconnected",
}
"""The terminal fault code of a relayed stream (:class:`~streamhop.middleware.pump.Fault`) ->
its ``kind`` in ``streamhop_upstream_errors_total`` (one of
:data:`~streamhop.middleware.observe.metrics.UPSTREAM_ERROR_KINDS`)."""


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


READ_LEAD_S: Final = 0.001
"""With ``coalesce_reads``, reading resumes this long before the held events' write is due, so
what the kernel gathered meanwhile goes out in that write."""
MIN_READ_PAUSE_S: Final = 0.002
"""Shorter read pauses are not worth a timer."""


def _corrupt(exc: zlib.error) -> Fault:
    """The fault of a compressed body that does not decompress."""
    return Fault("upstream_disconnected", f"the upstream body is corrupt: {exc}")


class _Feeder:
    """Takes body chunks inside the upstream connection's ``data_received`` (no task woken per
    read) and feeds the pump; wakes :func:`relay` only for backpressure, a fault or the end.

    With ``coalesce_reads``, after a read whose events are held for the window, reading pauses
    until just before their write (:meth:`~streamhop.middleware.pump.StreamPump.read_pause`):
    the kernel gathers the packets that arrive meanwhile, and one read takes them all."""

    __slots__ = (
        "_decompress",
        "_feed",
        "_loop",
        "_pump",
        "_recorder",
        "_response",
        "_timer",
        "_waiter",
        "_watch",
        "coalesce_reads",
        "ended",
        "fault",
        "full",
    )

    def __init__(
        self,
        response: UpstreamResponse,
        pump: StreamPump,
        watch: _ReadWatch,
        decompress: Any,
        coalesce_reads: bool,
        recorder: StreamRecorder | None = None,
    ) -> None:
        self._response = response
        self._recorder = recorder
        self._pump = pump
        self._feed = pump.feed_nowait
        self._watch = watch
        self._decompress = decompress
        self._loop = asyncio.get_running_loop()
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.coalesce_reads = coalesce_reads
        self.ended = False
        self.fault: Fault | None = None
        self.full = False
        """The pump holds more than ``max_pending_bytes``: reading is paused until it has room."""

    def __call__(self, chunk: bytes) -> None:
        if self.fault is not None:
            return
        now = time.monotonic()
        self._watch.last = now
        if self._recorder is not None:  # [record]: the bytes as received, before decompression
            self._recorder.add(chunk, now)
        decompress = self._decompress
        try:
            if decompress is not None:
                chunk = decompress.decompress(chunk)
                if not chunk:
                    return
            if self._feed(chunk):
                self.full = True
                self._watch.last = None  # the pump holds the reader back: not silence
                self._response.pause()
                self.wake()
            elif self.coalesce_reads and self._timer is None:
                pause = self._pump.read_pause(now, READ_LEAD_S)
                if pause >= MIN_READ_PAUSE_S:
                    self._watch.last = None  # our own pause: not the provider's silence
                    self._response.pause()
                    self._timer = self._loop.call_later(pause, self._resume_reads)
        except StreamFault as exc:
            self._stop(exc.fault)
        except zlib.error as exc:
            self._stop(_corrupt(exc))

    def _resume_reads(self) -> None:
        self._timer = None
        if not self.full and self.fault is None:
            self._watch.last = time.monotonic()
            self._response.resume()

    def resume_after_room(self) -> None:
        """The pump has room again: read on, unless a read pause is still running."""
        self.full = False
        self._watch.last = time.monotonic()
        if self._timer is None:
            self._response.resume()

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def on_end(self) -> None:
        self.ended = True
        self.wake()

    def _stop(self, fault: Fault) -> None:
        self.fault = fault
        self._response.pause()
        self.wake()

    def wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self) -> None:
        self._waiter = waiter = asyncio.get_running_loop().create_future()
        try:
            await waiter
        finally:
            self._waiter = None


async def relay(
    response: UpstreamResponse,
    pump: StreamPump,
    read_timeout_s: float,
    decompress: Any = None,
    *,
    coalesce_reads: bool = False,
    recorder: StreamRecorder | None = None,
) -> Fault | None:
    """Feed the upstream body to ``pump`` until it ends (the caller then asks
    :meth:`~streamhop.middleware.pump.StreamPump.feed_eof` how it ended).

    The body is fed from the connection's ``data_received`` (:meth:`.UpstreamResponse.deliver`):
    this task sleeps until the pump needs room, a fault, or the body's end.

    Args:
        response: the upstream SSE response.
        pump: where the bytes go.
        read_timeout_s: longest silence between two upstream reads, in seconds (like nginx's
            ``proxy_read_timeout``); time the pump holds the reader back does not count.
        decompress: a ``zlib`` decompressor for a compressed body, else ``None``.
        coalesce_reads: pause reading while held events wait for their window
            (``[rechunk] coalesce_reads``, see :class:`_Feeder`).
        recorder: where every body chunk also goes, with its arrival time, when the stream is
            recorded (``[record]``, :mod:`streamhop.sidecar.recording`); else ``None``.

    Returns:
        ``None`` when the body ended, else the read fault: ``upstream_timeout``,
        ``event_too_large``, ``upstream_disconnected`` (see :data:`ERROR_KIND_OF_FAULT`). Never
        raises for a provider fault.
    """
    watch = _ReadWatch(read_timeout_s)
    feeder = _Feeder(response, pump, watch, decompress, coalesce_reads, recorder)
    if recorder is not None:
        recorder.begin(response.raw_headers)
    try:
        response.deliver(feeder, feeder.on_end)
        while True:
            if feeder.fault is not None:
                return feeder.fault
            if feeder.full:
                await pump.wait_for_room()
                feeder.resume_after_room()
                continue
            if feeder.ended:
                break
            await feeder.wait()
        error = response.error
        if error is not None:
            return Fault(
                "upstream_disconnected", f"the upstream connection failed mid-stream: {error}"
            )
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
    except zlib.error as exc:
        return _corrupt(exc)
    finally:
        watch.cancel()
        feeder.cancel()
    return None


def close_upstream(response: UpstreamResponse | None, record: StreamRecord) -> None:
    """Close the upstream response (a response read to its end has returned its connection to
    the pool; any other aborts it), and record the cancel latency if a cancellation is pending."""
    if response is not None:
        response.close()
    note_cancel_latency(record)


def note_cancel_latency(record: StreamRecord) -> None:
    """Cancellation detected earlier and the upstream now closed: record how long it took."""
    if record.cancel_detected_at is not None and record.cancel_latency_s is None:
        record.cancel_latency_s = time.monotonic() - record.cancel_detected_at
