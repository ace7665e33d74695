"""The coalescer: holds mergeable deltas and says when to write, with an injected clock.

Sans-IO: the caller passes ``now`` (seconds on any monotonic clock) to :meth:`Coalescer.push`
and asks :meth:`Coalescer.due` / :attr:`Coalescer.deadline` when to call :meth:`Coalescer.take`.

Flush rules (DESIGN.md, "The stream engine"):

* the first *content* event of a stream (text, reasoning or tool-call data) is due at once, so
  re-chunking never adds to time to first token;
* so is the first content of every new phase: a content event whose kind (answer text,
  reasoning, tool-call arguments: :class:`~.formats.base.Content`) differs from the content
  before it, or the first content after a boundary event (a new tool call, a new content block
  or output item). For a reasoning model the first answer token is the TTFT its user sees;
* held events are due ``flush_interval`` seconds after the first of them was held;
* they are due at once when their wire size reaches ``max_flush_bytes``;
* a boundary event (see :mod:`.formats.base`) is due at once together with everything before it;
* at the end of the stream the caller takes whatever is held.

With a ``flush_boundary`` (:mod:`.boundary`), a window write cuts trailing merged text at its last
word, sentence or line boundary and keeps the rest held, at most ``max_boundary_wait`` seconds;
the first content event, boundary events and the end still write everything. With ``none`` (the
default) nothing of this runs: :meth:`Coalescer.push` does no more work per event.

Deltas merge only with the delta directly before them, so order is kept exactly, and a client
that accumulates the output gets the same final message as from the input.
"""

from __future__ import annotations

from typing import Final

from streamhop.middleware import defaults
from streamhop.middleware.rechunk.boundary import (
    DEFAULT_MAX_BOUNDARY_WAIT,
    FlushBoundary,
    TextHold,
    finder,
)
from streamhop.middleware.rechunk.formats import (
    MALFORMED,
    Format,
    Kind,
    MergeGroup,
    detect_format,
    get_format,
)
from streamhop.middleware.rechunk.formats.base import Content
from streamhop.middleware.sse.events import SSEEvent

DEFAULT_FLUSH_INTERVAL: Final = defaults.FLUSH_INTERVAL_S
DEFAULT_MAX_FLUSH_BYTES: Final = defaults.MAX_FLUSH_BYTES


class Coalescer:
    """Re-chunks one stream of SSE events.

    Args:
        format: a format name (``openai-chat``, ``openai-responses``, ``anthropic``, ``sse``) or
            ``auto`` to detect it from the first event with data.
        flush_interval: the window in **seconds** from the first held event to its write.
            ``0`` writes every event as soon as it is pushed (still merging under backpressure).
        max_flush_bytes: held wire bytes (as received) at which a write is due at once.
        passthrough: forward events one by one, never merging (``X-Streamhop-Mode: passthrough``).
        flush_boundary: ``none``, ``word``, ``sentence`` or ``line``: where a window write may
            cut merged text (:mod:`.boundary`).
        max_boundary_wait: the longest text is held past its window for a boundary, **seconds**.

    Raises:
        KeyError: unknown ``format``.
        ValueError: negative ``flush_interval`` or ``max_boundary_wait``, non-positive
            ``max_flush_bytes``, unknown ``flush_boundary``.
    """

    __slots__ = (
        "_after_boundary",
        "_completion",
        "_flush_now",
        "_format",
        "_held_since",
        "_hold_text",
        "_interval",
        "_items",
        "_last_content",
        "_last_group",
        "_max_bytes",
        "_passthrough",
        "_tail_deadline",
        "_whole",
        "content_seen",
        "events_in",
        "events_out",
        "finish_reasons",
        "first_answer_at",
        "first_content_at",
        "first_event_at",
        "first_tool_args_at",
        "malformed",
        "pending_bytes",
        "response_id",
        "response_model",
        "usage_input_tokens",
        "usage_output_tokens",
    )

    def __init__(
        self,
        format: str = "auto",
        flush_interval: float = DEFAULT_FLUSH_INTERVAL,
        max_flush_bytes: int = DEFAULT_MAX_FLUSH_BYTES,
        passthrough: bool = False,
        flush_boundary: FlushBoundary = "none",
        max_boundary_wait: float = DEFAULT_MAX_BOUNDARY_WAIT,
    ) -> None:
        if flush_interval < 0:
            raise ValueError(f"flush_interval must be >= 0 seconds, got {flush_interval}")
        if max_flush_bytes <= 0:
            raise ValueError(f"max_flush_bytes must be > 0, got {max_flush_bytes}")
        if max_boundary_wait < 0:
            raise ValueError(f"max_boundary_wait must be >= 0 seconds, got {max_boundary_wait}")
        find = finder(flush_boundary)
        self._hold_text = (
            None if find is None else TextHold(find, max_boundary_wait, max_flush_bytes)
        )
        self._whole = False  # the next write is the first content: never cut
        self._tail_deadline: float | None = None  # a held tail's due time, nothing else held
        self._format: Format | None = None if format == "auto" else get_format(format)
        self._completion = None if self._format is None else self._format.completion()
        self._last_content: Content | bool = Content.NONE  # kind of the last content event
        self._after_boundary = False  # a boundary came after the last content event
        self._interval = flush_interval
        self._max_bytes = max_flush_bytes
        self._passthrough = passthrough
        self._items: list[SSEEvent | MergeGroup] = []
        self._last_group: MergeGroup | None = None
        self._held_since: float | None = None
        self._flush_now = False
        self.pending_bytes = 0
        """Wire bytes (as received) of the events held now."""
        self.events_in = 0
        """Events pushed so far."""
        self.events_out = 0
        """Events returned by :meth:`take` so far."""
        self.malformed = 0
        """Events whose data should have been JSON and was not (forwarded verbatim)."""
        self.content_seen = False
        """True once a content event (text, reasoning, tool-call data) was pushed."""
        self.first_content_at: float | None = None
        """``now`` of the first content event, in the caller's clock (seconds)."""
        self.first_tool_args_at: float | None = None
        """``now`` of the first non-empty tool-call argument fragment (seconds)."""
        self.first_answer_at: float | None = None
        """``now`` of the first answer text (:attr:`Content.TEXT`: not reasoning, not tool-call
        arguments), seconds; ``None`` while the stream has only reasoned or called tools."""
        self.usage_input_tokens: int | None = None
        """Input (prompt) tokens the stream reported, if it did."""
        self.usage_output_tokens: int | None = None
        """Output (completion) tokens the stream reported, if it did (last report wins)."""
        self.first_event_at: float | None = None
        """``now`` of the first event with data (the first chunk of the response, seconds)."""
        self.response_id: str | None = None
        """The response's id as the stream first reported it (``Format.response_facts``)."""
        self.response_model: str | None = None
        """The model that answered, as the stream first reported it."""
        self.finish_reasons: list[str] = []
        """Every finish reason the stream reported, in order (one per finished choice)."""

    @property
    def finished(self) -> bool:
        """True once the stream said it is over, as its format defines it
        (:meth:`~.formats.base.Format.completion`): ``[DONE]`` or every choice's
        ``finish_reason``, ``message_stop``, ``response.completed``, or its own error event."""
        completion = self._completion
        return completion is not None and completion.finished

    @property
    def incomplete(self) -> bool:
        """True when the stream so far is not finished (:attr:`finished`): at a clean upstream
        close this means the answer was cut short (plain ``sse`` is never incomplete; a stream
        with no event at all is, once its format is known from the route)."""
        fmt = self._format
        return fmt is not None and fmt.has_terminal and not self.finished

    @property
    def format_name(self) -> str | None:
        """The stream's format, or ``None`` while ``auto`` has not seen an event with data."""
        return None if self._format is None else self._format.name

    def push(self, event: SSEEvent, now: float) -> None:
        """Take one upstream event at time ``now`` (seconds)."""
        self.events_in += 1
        fmt = self._format
        if fmt is None:
            fmt = detect_format(event)
            if fmt is None:
                self._hold(event, now, flush=True)
                return
            self._format = fmt
            self._completion = fmt.completion()
        kind, content, parsed = fmt.classify(event)
        if parsed is MALFORMED:
            self.malformed += 1
        flush = kind is Kind.FLUSH or self._passthrough
        if content:
            if not self.content_seen:
                self.content_seen = True
                self.first_content_at = now
                self._whole = True
                flush = True
            elif self._after_boundary or content != self._last_content:
                # A new phase: written at once with what is held, never cut (as the first).
                self._whole = True
                flush = True
            self._last_content = content
            self._after_boundary = False
            if content == Content.TEXT and self.first_answer_at is None:
                self.first_answer_at = now
            if content == Content.TOOL_ARGS and self.first_tool_args_at is None:
                self.first_tool_args_at = now
        if kind is Kind.FLUSH or self.first_event_at is None:
            # Boundaries and the first event only: never a delta in between.
            self._boundary(fmt, event, kind, now)
            if kind is Kind.FLUSH and not content and event.data is not None:
                # The next content opens a phase (a boundary with content of its own, say a
                # role chunk with the first text, was that opening itself).
                self._after_boundary = True
        if kind is Kind.DELTA and not self._passthrough:
            group = self._last_group
            if group is None or not group.add(event, parsed):
                group = fmt.open_group(event, parsed)
                self._items.append(group)
                self._last_group = group
            self.pending_bytes += event.wire_size
            if self._held_since is None:
                self._held_since = now
            if flush or self.pending_bytes >= self._max_bytes:
                self._flush_now = True
            return
        self._hold(event, now, flush)

    def _boundary(self, fmt: Format, event: SSEEvent, kind: Kind, now: float) -> None:
        """What a boundary event (or the stream's first event) says about the whole stream:
        its end, token usage, and the response's id, model and finish reasons."""
        if self.first_event_at is None and event.data is not None:
            self.first_event_at = now
        facts = fmt.response_facts(event)
        if facts is not None:
            if self.response_id is None:
                self.response_id = facts.response_id
            if self.response_model is None:
                self.response_model = facts.response_model
            self.finish_reasons.extend(facts.finish_reasons)
        if kind is not Kind.FLUSH:
            return
        completion = self._completion
        if completion is not None:
            completion.observe(event)
        usage = fmt.usage(event)
        if usage is not None:
            if usage[0] is not None:
                self.usage_input_tokens = usage[0]
            if usage[1] is not None:
                self.usage_output_tokens = usage[1]

    def _hold(self, event: SSEEvent, now: float, flush: bool) -> None:
        self._items.append(event)
        self._last_group = None
        self.pending_bytes += event.wire_size
        if self._held_since is None:
            self._held_since = now
        if flush or self.pending_bytes >= self._max_bytes:
            self._flush_now = True

    @property
    def answering(self) -> bool:
        """True in the steady flow of an answer: the last content was answer text or tool-call
        arguments (not reasoning) and no boundary came after it. Then the next event is most
        likely more of the same; after reasoning or a boundary, a new phase may open, and that
        must be read at once (the sidecar's read coalescing asks this)."""
        last = self._last_content
        return (last == Content.TEXT or last == Content.TOOL_ARGS) and not self._after_boundary

    @property
    def deadline(self) -> float | None:
        """When the held events are due, in the caller's clock (seconds); ``None`` if none held.

        A deadline at or before the time of the last push means "due now".
        """
        since = self._held_since
        if since is None:
            return self._tail_deadline
        if self._flush_now:
            return since
        return since + self._interval

    def due(self, now: float) -> bool:
        """True when held events should be written at ``now`` (seconds)."""
        since = self._held_since
        if since is None:
            tail = self._tail_deadline
            return tail is not None and now >= tail
        # Compare with the deadline itself, as :attr:`deadline` computes it: ``now - since``
        # can round below the interval at ``now == deadline`` (0.06 - 0.01 < 0.05).
        return self._flush_now or now >= since + self._interval

    def take(self, now: float | None = None) -> list[SSEEvent]:
        """Return the held events, merged, in order, and hold nothing more.

        Call it when :meth:`due`, and once at the end of the stream. With a flush boundary, a
        window write (``now`` given) keeps the text after the last boundary held (see
        :class:`~.boundary.TextHold`); the end of the stream takes everything.

        Args:
            now: the time of the write (seconds); ``None`` (the end of the stream) takes all.
        """
        items = self._items
        if not items:
            return []
        hold = self._hold_text
        tail = None
        if hold is not None:
            tail = hold.cut(items, None if self._whole else now)
            self._whole = False
        out = [item if type(item) is SSEEvent else item.render() for item in items]  # type: ignore[union-attr]
        self.events_out += len(out)
        self._flush_now = False
        if tail is None:
            self._items = []
            self._last_group = None
            self._held_since = None
            self._tail_deadline = None
            self.pending_bytes = 0
            return out
        # Held for a boundary: later deltas merge into it. With a window, look again at the
        # next window end (new text may have brought a boundary), at the latest when the wait
        # is over; a deadline that never moves earlier keeps the caller's one timer right.
        assert hold is not None and now is not None
        self._items = [tail]
        self._last_group = tail
        self.pending_bytes = tail.wire_size
        if self._interval > 0:
            self._held_since = min(now, hold.until - self._interval)
        else:
            self._held_since = None
            self._tail_deadline = hold.until
        return out
