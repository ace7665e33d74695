"""The SSE event value that flows through the stream engine.

Field names follow the WHATWG HTML Standard, "Server-sent events" §9.2.6 (`event`, `data`, `id`,
`retry`). One deliberate divergence: a block that sets only `id` or `retry` (no `data`) is not
dispatched by a browser, but a proxy must forward it, so it surfaces here with ``data=None``.
"""

from __future__ import annotations

from typing import NamedTuple


class SSEEvent(NamedTuple):
    """One SSE event as framed on the wire (immutable).

    A ``NamedTuple`` rather than a frozen dataclass: one is made per upstream event, and a frozen
    dataclass's ``__init__`` (``object.__setattr__`` per field) costs several times more.

    Attributes:
        data: the event's data buffer with the trailing LF removed (lines joined by ``"\\n"``);
            ``None`` when the block had no ``data`` field (it only carries ``id``/``retry``).
        event: the ``event`` field, or ``None`` when absent (a browser then uses ``"message"``).
        id: the ``id`` field when this block set one, else ``None``.
        retry: the ``retry`` field in milliseconds when this block set a valid one, else ``None``.
        wire_size: bytes this event occupied in the upstream stream, terminator included; ``0``
            for events made by streamhop. Used for byte accounting, never re-parsed.
    """

    data: str | None
    event: str | None = None
    id: str | None = None
    retry: int | None = None
    wire_size: int = 0
