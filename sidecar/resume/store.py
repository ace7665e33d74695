"""The resume log interface shared by the memory and Redis stores.

A stream's log is written by the exchange that runs the generation (:class:`LogWriter`) and read
by any number of resume requests (:meth:`ResumeStore.open_reader`). Each written event carries
``id: <stream-id>:<seq>`` (``seq`` = 1, 2, 3... per event written to the client, after merging);
the log keeps the encoded event text by ``seq``, the SSE response headers, and an end marker.

Writers never block the stream: :meth:`LogWriter.stamp` is synchronous and cheap (the Redis
writer queues its commands for a background task). A store failure disables that stream's log,
never the stream itself.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Final, Protocol

from streamhop.middleware.errors import StreamHopError
from streamhop.middleware.pump import Fault, StreamPump
from streamhop.middleware.sse.events import SSEEvent
from streamhop.sidecar.observe.record import StreamRecord

logger = logging.getLogger(__name__)

Headers = list[tuple[bytes, bytes]]

LAST_EVENT_ID: Final = re.compile(r"([0-9A-Za-z_-]{1,64}):([0-9]{1,18})")
"""What a valid ``Last-Event-ID`` looks like: ``<stream-id>:<seq>``."""


class ResumeError(StreamHopError):
    """A resume log could not be read or written (store down, log dropped)."""


class StreamNotFoundError(ResumeError):
    """No log for this stream id: never logged, expired after ``window_s``, or evicted."""


class ResumeLogFullError(ResumeError):
    """The stream's log passed ``max_stream_bytes``: it was closed and cannot be resumed."""


def parse_last_event_id(value: str) -> tuple[str, int] | None:
    """``(stream_id, seq)`` from a ``Last-Event-ID`` header value, ``None`` if malformed."""
    match = LAST_EVENT_ID.fullmatch(value.strip())
    if match is None:
        return None
    return match.group(1), int(match.group(2))


def number_events(prefix: str, seq: int, events: list[SSEEvent]) -> tuple[list[SSEEvent], int]:
    """``events`` with ``id`` set to ``<prefix><seq>`` (``prefix`` is ``<stream-id>:``), numbered
    from ``seq + 1``; returns them and the last ``seq``."""
    stamped = []
    for event in events:
        seq += 1
        stamped.append(event._replace(id=f"{prefix}{seq}"))
    return stamped, seq


def close_log(
    log: LogWriter,
    pump: StreamPump | None,
    *,
    ended: bool,
    record: StreamRecord,
    format_hint: str | None,
) -> None:
    """End a stream's log; a stream stopped before its own end (``ended`` false) gets a
    terminal ``stream_cancelled`` error event first, so a resume ends cleanly."""
    if not ended and pump is not None:
        reason = record.cancel_reason or "cancelled"
        message = (
            f"the stream was stopped ({reason}) before it ended; "
            "a resume replays only what was generated until then"
        )
        try:
            log.stamp(pump.error_events(Fault("stream_cancelled", message), format_hint))
        except Exception:  # the log must be closed whatever happens
            logger.exception("stream %s: cannot log the end event", record.request_id)
    log.close()


class LogWriter(Protocol):
    """The write side of one stream's log (one per streamed exchange)."""

    def stamp(self, events: list[SSEEvent]) -> list[SSEEvent]:
        """Number ``events`` (set ``id``), record them, and return them (a pump hook)."""
        ...

    @property
    def last_seq(self) -> int:
        """The ``seq`` of the last stamped event (0 before any)."""
        ...

    def close(self) -> None:
        """Write the end marker: the generation is over; the log expires ``window_s`` later."""
        ...


class LogReader(Protocol):
    """One resume request's view of a log."""

    headers: Headers
    """The SSE response headers of the original stream."""

    def events_after(self, seq: int) -> AsyncIterator[Sequence[bytes]]:
        """Batches of encoded events with ``seq`` greater than ``seq``, in order, live until the
        end marker; the iterator ends after the last one.

        Raises:
            ResumeLogFullError: the log was closed at its byte cap (or evicted) mid-read.
            ResumeError: the store failed mid-read.
        """
        ...


class ResumeStore(Protocol):
    """Where logs live: :class:`~.memory.MemoryStore` or :class:`~.redis_store.RedisStore`."""

    name: str
    """``memory`` or ``redis`` (the ``store`` label of ``streamhop_resume_errors_total``)."""

    def open_writer(self, stream_id: str, headers: Headers, key: str) -> LogWriter:
        """Start the log of a new stream (its SSE response headers are kept for resumes).

        Args:
            stream_id: the public id events are numbered with (``id: <stream-id>:<seq>``).
            headers: the SSE response headers.
            key: where the log is stored: the caller-bound key of
                :meth:`~.binding.ResumeBinding.log_key`.
        """
        ...

    async def open_reader(self, key: str, stream_id: str) -> LogReader:
        """Open a stream's log for a resume, by the key :meth:`open_writer` was given
        (``stream_id`` only names the stream in errors).

        Raises:
            StreamNotFoundError: unknown or expired stream id.
            ResumeLogFullError: the log passed its byte cap.
            ResumeError: the store cannot be reached.
        """
        ...

    async def log_state(self, key: str) -> str:
        """``missing`` (no such log), ``running`` (no end marker yet) or ``ended``.

        Raises:
            ResumeError: the store cannot be reached.
        """
        ...

    async def publish_stop(self, key: str) -> None:
        """Ask every replica sharing the store to stop the generation logging under ``key``
        (the memory store has no other replica: nothing to do).

        Raises:
            ResumeError: the store cannot be reached.
        """
        ...

    def listen_stops(self, on_stop: Callable[[str], None]) -> None:
        """Call ``on_stop(key)`` for each stop another replica publishes (until :meth:`aclose`)."""
        ...

    async def publish_resumed(self, key: str) -> None:
        """Tell every replica sharing the store that a client resumed the log under ``key``: a
        generation waiting out its disconnect grace there goes on (the memory store has no
        other replica: nothing to do).

        Raises:
            ResumeError: the store cannot be reached.
        """
        ...

    def listen_resumes(self, on_resumed: Callable[[str], None]) -> None:
        """Call ``on_resumed(key)`` for each resume another replica publishes (until
        :meth:`aclose`)."""
        ...

    async def aclose(self) -> None:
        """Release the store (connections, timers) at shutdown."""
        ...
