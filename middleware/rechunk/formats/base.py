"""What a wire format tells the coalescer about each event.

A format classifies each event once (parsing its JSON once) as:

* ``DELTA``: a content delta that may merge with the held delta before it (same stream position,
  same text field, same tool-call index, every other field equal);
* ``HOLD``: an event that is held and batched into the next write but never rewritten (plain
  ``sse`` streams);
* ``FLUSH``: a boundary (role, new tool call, ``finish_reason``, ``usage``, ``[DONE]``,
  ``message_delta``, ``message_stop``, ``error``, any event type the format does not know): never
  merged across; it and everything held before it are written at once.

Formats are stateless and shared; the per-stream state is the :class:`MergeGroup`.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any, Protocol

import orjson

from streamhop.middleware.sse.events import SSEEvent


class Kind(IntEnum):
    """How the coalescer treats one event."""

    DELTA = 0
    HOLD = 1
    FLUSH = 2


class Content(IntEnum):
    """What an event carries for time-to-first-token: the second item of ``classify``'s result
    (any true value is content; plain ``bool`` is accepted too)."""

    NONE = 0
    TEXT = 1
    """Text, reasoning, refusal (or any content whose kind is not told apart)."""
    TOOL_ARGS = 2
    """A non-empty tool-call argument fragment (its first one is timed on its own)."""


class MergeGroup(Protocol):
    """Consecutive deltas merged into one event.

    ``first`` is the event the group was opened with; a group of one renders it unchanged.
    """

    count: int
    wire_size: int

    def add(self, event: SSEEvent, parsed: object) -> bool:
        """Merge ``event`` (parsed as ``parsed``) if compatible; False leaves it untouched."""

    def render(self) -> SSEEvent:
        """Return the merged event: one event whose accumulation equals that of the parts."""


class Format(Protocol):
    """Merge rules of one wire format."""

    name: str

    def classify(self, event: SSEEvent) -> tuple[Kind, Content | bool, object]:
        """Classify one event.

        Returns:
            ``(kind, is_content, parsed)``: ``is_content`` is true when the event carries
            non-empty text, reasoning or tool-call arguments (counts for TTFT; a tool call's
            id and name with empty arguments do not), :attr:`Content.TOOL_ARGS` for arguments;
            ``parsed`` is the decoded JSON
            for a ``DELTA`` (handed back to :meth:`open_group` / :meth:`MergeGroup.add`), else
            ``None``. Malformed JSON is never an exception: such an event is ``FLUSH`` with
            ``parsed`` set to :data:`MALFORMED` so it is forwarded verbatim and counted.
        """

    def open_group(self, event: SSEEvent, parsed: object) -> MergeGroup:
        """Start a merge group with a ``DELTA`` event."""

    has_terminal: bool
    """True when the format ends every complete stream with a terminal event, so a clean
    close without one is a truncated answer (``upstream_incomplete``)."""

    def is_terminal(self, event: SSEEvent) -> bool:
        """True when ``event`` (a ``FLUSH`` event) ends the stream: a normal end or an error."""


class _Malformed:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MALFORMED"


MALFORMED = _Malformed()
"""``parsed`` value of an event whose data should have been JSON and was not."""


def parse_object(event: SSEEvent) -> dict[str, Any] | _Malformed | None:
    """The event's data as a JSON object: the first step of every JSON format's ``classify``.

    Returns:
        The object; ``None`` for a block without data or with ``retry`` (a boundary with nothing
        to parse); :data:`MALFORMED` when the data is not a JSON object. Callers return
        ``(Kind.FLUSH, False, result)`` for anything that is not a ``dict``.
    """
    data = event.data
    if data is None or event.retry is not None:
        return None
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return MALFORMED
    return obj if type(obj) is dict else MALFORMED


def json_type(event: SSEEvent) -> str | None:
    """The ``type`` member of the event's JSON object data, else ``None`` (never raises)."""
    data = event.data
    if data is None or '"type"' not in data:
        return None
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    kind = obj.get("type") if type(obj) is dict else None
    return kind if type(kind) is str else None
