"""The pump's values: :class:`PumpOptions` and the :class:`Sink` in; :class:`PumpStats`,
:class:`Fault` and the errors out (see :mod:`streamhop.middleware.pump`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final, NamedTuple, Protocol, final

from streamhop.middleware import defaults
from streamhop.middleware.errors import StreamHopError
from streamhop.middleware.rechunk.boundary import DEFAULT_MAX_BOUNDARY_WAIT, FlushBoundary
from streamhop.middleware.rechunk.formats import TERMINAL_HINTS
from streamhop.middleware.sse.events import SSEEvent


class ClientStallError(StreamHopError, TimeoutError):
    """The client accepted no bytes for ``stall_timeout`` seconds."""


class Fault(NamedTuple):
    """Why a stream ended without its normal end: a short ``code`` (the error event's, see
    docs/lifecycle.md) and a sentence for a person."""

    code: str
    message: str


class StreamFault(StreamHopError):
    """Raised by :meth:`StreamPump.feed` when the stream cannot go on (``event_too_large``)."""

    def __init__(self, fault: Fault) -> None:
        super().__init__(fault.message)
        self.fault = fault


TERMINAL_EVENTS: Final = TERMINAL_HINTS
"""Formats whose complete streams end with a terminal event, and that event (from the
formats' own ``terminal_hint``)."""


@dataclass(frozen=True, slots=True)
class PumpOptions:
    """How one stream is re-chunked and bounded.

    Attributes:
        format: ``auto`` or a format name (``openai-chat``, ``openai-responses``, ``anthropic``,
            ``sse``).
        flush_interval_s: the window from the first held delta to its write, seconds.
        max_flush_bytes: held wire bytes at which a write is due at once.
        passthrough: forward events one by one, never merging.
        max_event_bytes: largest SSE event accepted (``event_too_large`` past it).
        max_pending_bytes: held bytes above which :meth:`StreamPump.feed` waits for the writer.
        stall_timeout_s: seconds one write may take before :class:`ClientStallError`.
        keepalive_interval_s: seconds of silence before a ``: keep-alive`` comment; ``None``:
            never.
        forward_comments: forward upstream comment lines while nothing else is due.
        flush_boundary: where a window write may cut merged text: ``none`` (anywhere),
            ``word``, ``sentence`` or ``line`` (see docs/rechunking.md).
        max_boundary_wait_s: seconds text is held past its window for a boundary, at most.
    """

    format: str = "auto"
    flush_interval_s: float = defaults.FLUSH_INTERVAL_S
    max_flush_bytes: int = defaults.MAX_FLUSH_BYTES
    passthrough: bool = False
    max_event_bytes: int = defaults.MAX_EVENT_BYTES
    max_pending_bytes: int = defaults.MAX_PENDING_BYTES
    stall_timeout_s: float = defaults.STALL_TIMEOUT_S
    keepalive_interval_s: float | None = None
    forward_comments: bool = False
    flush_boundary: FlushBoundary = "none"
    max_boundary_wait_s: float = DEFAULT_MAX_BOUNDARY_WAIT


DEFAULT_OPTIONS: Final = PumpOptions()


@dataclass(frozen=True, slots=True)
class PumpStats:
    """What one stream did (times are ``time.monotonic()`` seconds, ``None`` if not reached).

    The names are those of :class:`~streamhop.middleware.observe.stream_end.StreamEnd`, which
    takes them all (``sent`` is when a write handed the bytes over)."""

    format: str | None
    events_in: int
    events_out: int
    malformed_events: int
    writes: int
    bytes_in: int
    bytes_out: int
    upstream_first_content_at: float | None
    first_content_sent_at: float | None
    first_tool_args_sent_at: float | None
    usage_input_tokens: int | None
    usage_output_tokens: int | None
    upstream_first_event_at: float | None = None
    """When the first upstream event with data was read (the response's first chunk)."""
    response_id: str | None = None
    """The response's id as the stream reported it (``chatcmpl-...``, ``msg_...``)."""
    response_model: str | None = None
    """The model that answered, as the stream reported it."""
    finish_reasons: tuple[str, ...] = ()
    """The finish reasons the stream reported, in order (one per finished choice)."""
    first_answer_sent_at: float | None = None
    """When the first answer text (not reasoning, not tool-call arguments) was handed to the
    client: the TTFT a reasoning model's user sees."""


Write = Callable[[bytes], Awaitable[None]]
"""Sends one SSE body chunk to the client."""
WriteEvents = Callable[[list[SSEEvent]], Awaitable[int]]
"""Sends a batch of events its own way; returns the bytes it wrote (for accounting)."""
OnEvents = Callable[[list[SSEEvent]], list[SSEEvent]]
"""A hook given each merged batch right before it is encoded; returns the events to write
(e.g. the same events with ``id`` set, see ``SSEEvent._replace``)."""


@final
@dataclass(frozen=True, slots=True)
class Sink:
    """Where a pump writes one stream: SSE bytes (``write``), or event batches that the
    transport frames itself (``write_events``: the WebSocket bridge). Exactly one is given.

    Attributes:
        write: sends one encoded body chunk; the pump also writes comments and keep-alives.
        write_events: sends a batch of events; no comments and no keep-alive (that transport
            has its own, e.g. ping frames).
        on_events: a hook over each batch right before it is written (the resume log numbers
            and records events with it).

    Raises:
        TypeError: neither or both of ``write`` and ``write_events`` were given.
    """

    write: Write | None = None
    write_events: WriteEvents | None = None
    on_events: OnEvents | None = None

    def __post_init__(self) -> None:
        if (self.write is None) == (self.write_events is None):
            raise TypeError("a Sink takes exactly one of write (bytes) and write_events")


class PumpObserver(Protocol):
    """Receives the pump's measurements (``StreamMetrics`` implements it)."""

    def upstream_read(self, events: int, size: int, seconds: float, at: float) -> None: ...

    def downstream_write(self, events: int, size: int, start: float, end: float) -> None: ...

    def flush_overhead(self, seconds: float) -> None: ...
