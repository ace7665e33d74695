"""Rules for any other SSE stream (``format = "sse"``): batch, never rewrite.

Events of an unknown format are held and written together on the flush window, each exactly as
it came; the first event goes out at once like a first token.
"""

from __future__ import annotations

from streamhop.middleware.rechunk.formats.base import Content, Kind, MergeGroup
from streamhop.middleware.sse.events import SSEEvent


class PlainSSEFormat:
    """Holds every event unchanged (stateless, shareable)."""

    name = "sse"
    has_terminal = False

    def classify(self, event: SSEEvent) -> tuple[Kind, Content | bool, object]:
        """Every event with data is ``HOLD`` and counts as content; blocks without data flush."""
        if event.data is None:
            return Kind.FLUSH, False, None
        return Kind.HOLD, True, None

    def open_group(self, event: SSEEvent, parsed: object) -> MergeGroup:
        """Never called: plain SSE has no deltas."""
        raise TypeError("plain SSE events are never merged")

    def is_terminal(self, event: SSEEvent) -> bool:
        """Plain SSE has no terminal event: the server closing ends the stream."""
        return False
