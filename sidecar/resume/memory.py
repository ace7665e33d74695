"""The ``memory`` resume store: logs in this process only (a resume must reach the same replica).

Bounds: at most ``max_streams`` logs (at the limit the oldest is dropped, finished ones first);
at most ``max_stream_bytes`` of encoded events per log (past it the log is closed with
:class:`~.store.ResumeLogFullError` and its memory freed; the stream itself goes on); at most
``max_total_bytes`` of encoded events in all logs together (past it the oldest logs are evicted,
finished ones first, until the total fits); a finished log is dropped ``window_s`` seconds after
its end marker.

Without the total, ``max_streams`` times ``max_stream_bytes`` (8 GiB by default) was the only
bound: detached generations with no client kept hundreds of MiB for ``window_s``. An evicted
running log is treated as an expired one: new resumes get :class:`~.store.StreamNotFoundError`,
readers in the middle of a replay get it at their next batch (the error a Redis reader gets when
its key expires); the generation and its live client go on, unlogged.

No log line names a stream id: it is a capability (with matching credentials it resumes or
stops the stream). The exceptions' texts, which the replay logs, do not either.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Final

from streamhop.middleware.sse.encoder import encode_event
from streamhop.middleware.sse.events import SSEEvent
from streamhop.sidecar.resume.store import (
    Headers,
    ResumeLogFullError,
    StreamNotFoundError,
    number_events,
)

logger = logging.getLogger(__name__)

EVICTION_REASONS: Final = ("max_total_bytes", "max_streams")
"""Why a log was dropped before ``window_s`` (the ``reason`` of
``streamhop_resume_evictions_total``)."""


class _Log:
    """One stream's events (encoded, index ``seq - 1``), headers and state."""

    __slots__ = (
        "changed",
        "ended",
        "events",
        "evicted",
        "full",
        "headers",
        "key",
        "size",
        "stream_id",
    )

    def __init__(self, stream_id: str, key: str, headers: Headers) -> None:
        self.stream_id = stream_id
        self.key = key
        self.headers = headers
        self.events: list[bytes] = []
        self.size = 0
        self.ended = False
        self.full = False
        self.evicted = False
        self.changed = asyncio.Event()

    def notify(self) -> None:
        """Wake every reader waiting for more (each waits on the event current when it looked)."""
        self.changed.set()
        self.changed = asyncio.Event()


class _Writer:
    def __init__(self, store: MemoryStore, log: _Log) -> None:
        self._store = store
        self._log = log
        self._prefix = log.stream_id + ":"
        self._seq = 0

    @property
    def last_seq(self) -> int:
        return self._seq

    def stamp(self, events: list[SSEEvent]) -> list[SSEEvent]:
        log = self._log
        stamped, self._seq = number_events(self._prefix, self._seq, events)
        if not (log.full or log.evicted):
            store = self._store
            added = 0
            for event in stamped:
                data = encode_event(event).encode("utf-8", "surrogateescape")
                log.events.append(data)
                added += len(data)
            log.size += added
            store.bytes_held += added
            if log.size > store.max_stream_bytes:
                store.overflow(log)
            elif store.bytes_held > store.max_total_bytes:
                store.shrink()
            log.notify()
        return stamped

    def close(self) -> None:
        log = self._log
        if not log.ended:
            log.ended = True
            log.notify()
            if not log.evicted:
                self._store.expire_later(log)


class _Reader:
    def __init__(self, log: _Log) -> None:
        self._log = log
        self.headers = log.headers

    async def events_after(self, seq: int) -> AsyncIterator[Sequence[bytes]]:
        log = self._log
        pos = seq  # the event with seq s is at index s - 1
        while True:
            if log.full:
                raise ResumeLogFullError("the resume log of this stream was closed")
            if log.evicted:
                raise StreamNotFoundError(
                    "the resume log of this stream was evicted (max_total_bytes)"
                )
            changed = log.changed
            if pos < len(log.events):
                batch = log.events[pos:]
                pos = len(log.events)
                yield batch
                continue
            if log.ended:
                return
            await changed.wait()


class MemoryStore:
    """In-process logs (see the module docstring for the bounds).

    Args:
        window_s: seconds a finished log is kept.
        max_streams: logs kept at most.
        max_stream_bytes: encoded event bytes one log may hold.
        max_total_bytes: encoded event bytes all logs together may hold.
        on_error: called with a kind (``log_full``) each time a log is closed early.
        on_evict: called with a reason (:data:`EVICTION_REASONS`) each time a log is dropped
            before ``window_s``.

    Attributes:
        bytes_held: encoded event bytes the logs hold now (at most ``max_total_bytes``).
    """

    name = "memory"

    def __init__(
        self,
        window_s: float,
        max_streams: int,
        max_stream_bytes: int,
        on_error: Callable[[str], None] | None = None,
        *,
        max_total_bytes: int = 128 * 1024 * 1024,
        on_evict: Callable[[str], None] | None = None,
    ) -> None:
        self.window_s = window_s
        self.max_streams = max_streams
        self.max_stream_bytes = max_stream_bytes
        self.max_total_bytes = max_total_bytes
        self.bytes_held = 0
        self._on_error = on_error
        self._on_evict = on_evict
        self._logs: OrderedDict[str, _Log] = OrderedDict()
        self._timers: dict[str, asyncio.TimerHandle] = {}

    def open_writer(self, stream_id: str, headers: Headers, key: str) -> _Writer:
        while len(self._logs) >= self.max_streams:
            victim = next((log for log in self._logs.values() if log.ended), None)
            if victim is None:
                victim = next(iter(self._logs.values()))
            self._drop(victim)
            if self._on_evict is not None:
                self._on_evict("max_streams")
            if not victim.ended:
                logger.warning(
                    "resume: max_streams=%d reached; dropped the log of a running stream",
                    self.max_streams,
                )
                victim.full = True
                victim.events = []  # its writer keeps the log object: free what it held
                victim.size = 0
                victim.notify()
                if self._on_error is not None:
                    self._on_error("log_full")
        log = _Log(stream_id, key, headers)
        self._logs[key] = log
        return _Writer(self, log)

    async def open_reader(self, key: str, stream_id: str) -> _Reader:
        log = self._logs.get(key)
        if log is None:
            raise StreamNotFoundError(f"no resumable stream {stream_id!r} (unknown or expired)")
        if log.full:
            raise ResumeLogFullError(
                f"the resume log of stream {stream_id} passed max_stream_bytes="
                f"{self.max_stream_bytes} and was closed"
            )
        return _Reader(log)

    def overflow(self, log: _Log) -> None:
        """Close ``log`` at its byte cap: free its events, fail its readers."""
        logger.warning(
            "resume: a stream passed max_stream_bytes=%d; its log is closed",
            self.max_stream_bytes,
        )
        log.full = True
        log.events = []
        self.bytes_held -= log.size
        log.size = 0
        if self._on_error is not None:
            self._on_error("log_full")

    def shrink(self) -> None:
        """Evict logs until :attr:`bytes_held` fits ``max_total_bytes``: the oldest finished log
        that holds bytes first, then the oldest running one (possibly the one just written)."""
        while self.bytes_held > self.max_total_bytes:
            held = [log for log in self._logs.values() if log.size]
            if not held:  # only if the count were wrong: never loop on it
                break
            victim = next((log for log in held if log.ended), held[0])
            self._drop(victim)
            victim.evicted = True
            victim.events = []
            victim.size = 0
            victim.notify()
            if self._on_evict is not None:
                self._on_evict("max_total_bytes")

    def expire_later(self, log: _Log) -> None:
        """Drop ``log`` ``window_s`` seconds from now."""
        loop = asyncio.get_running_loop()
        self._timers[log.key] = loop.call_later(self.window_s, self._drop, log)

    def _drop(self, log: _Log) -> None:
        if self._logs.get(log.key) is log:
            del self._logs[log.key]
            self.bytes_held -= log.size
        timer = self._timers.pop(log.key, None)
        if timer is not None:
            timer.cancel()

    async def log_state(self, key: str) -> str:
        log = self._logs.get(key)
        if log is None:
            return "missing"
        return "ended" if log.ended else "running"

    async def publish_stop(self, key: str) -> None:
        return None  # one process: the caller found no running stream here, so none exists

    def listen_stops(self, on_stop: Callable[[str], None]) -> None:
        return None

    async def publish_resumed(self, key: str) -> None:
        return None  # one process: the resume was seen here already

    def listen_resumes(self, on_resumed: Callable[[str], None]) -> None:
        return None

    async def aclose(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        self._logs.clear()
        self.bytes_held = 0
