"""The ``memory`` resume store: logs in this process only (a resume must reach the same replica).

Bounds: at most ``max_streams`` logs (at the limit the oldest is dropped, finished ones first);
at most ``max_stream_bytes`` of encoded events per log (past it the log is closed with
:class:`~.store.ResumeLogFullError` and its memory freed; the stream itself goes on); a finished
log is dropped ``window_s`` seconds after its end marker.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Sequence

from streamhop.middleware.sse.encoder import encode_event
from streamhop.middleware.sse.events import SSEEvent
from streamhop.sidecar.resume.store import (
    Headers,
    ResumeLogFullError,
    StreamNotFoundError,
    number_events,
)

logger = logging.getLogger(__name__)


class _Log:
    """One stream's events (encoded, index ``seq - 1``), headers and state."""

    __slots__ = ("changed", "ended", "events", "full", "headers", "key", "size", "stream_id")

    def __init__(self, stream_id: str, key: str, headers: Headers) -> None:
        self.stream_id = stream_id
        self.key = key
        self.headers = headers
        self.events: list[bytes] = []
        self.size = 0
        self.ended = False
        self.full = False
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
        if not log.full:
            for event in stamped:
                data = encode_event(event).encode("utf-8", "surrogateescape")
                log.events.append(data)
                log.size += len(data)
            if log.size > self._store.max_stream_bytes:
                self._store.overflow(log)
            log.notify()
        return stamped

    def close(self) -> None:
        log = self._log
        if not log.ended:
            log.ended = True
            log.notify()
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
                raise ResumeLogFullError(f"the resume log of stream {log.stream_id} was closed")
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
        on_error: called with a kind (``log_full``) each time a log is closed early.
    """

    name = "memory"

    def __init__(
        self,
        window_s: float,
        max_streams: int,
        max_stream_bytes: int,
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        self.window_s = window_s
        self.max_streams = max_streams
        self.max_stream_bytes = max_stream_bytes
        self._on_error = on_error
        self._logs: OrderedDict[str, _Log] = OrderedDict()
        self._timers: dict[str, asyncio.TimerHandle] = {}

    def open_writer(self, stream_id: str, headers: Headers, key: str) -> _Writer:
        while len(self._logs) >= self.max_streams:
            victim = next((log for log in self._logs.values() if log.ended), None)
            if victim is None:
                victim = next(iter(self._logs.values()))
            self._drop(victim)
            if not victim.ended:
                logger.warning(
                    "resume: max_streams=%d reached; dropped the log of live stream %s",
                    self.max_streams,
                    victim.stream_id,
                )
                victim.full = True
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
            "resume: stream %s passed max_stream_bytes=%d; its log is closed",
            log.stream_id,
            self.max_stream_bytes,
        )
        log.full = True
        log.events = []
        log.size = 0
        if self._on_error is not None:
            self._on_error("log_full")

    def expire_later(self, log: _Log) -> None:
        """Drop ``log`` ``window_s`` seconds from now."""
        loop = asyncio.get_running_loop()
        self._timers[log.key] = loop.call_later(self.window_s, self._drop, log)

    def _drop(self, log: _Log) -> None:
        if self._logs.get(log.key) is log:
            del self._logs[log.key]
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

    async def aclose(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        self._logs.clear()
