"""Any other SSE stream (``format = "sse"``): batch, never rewrite, never add to.

Events of an unknown format are held and written together on the flush window, each exactly as
it came; the first event goes out at once like a first token. The catch-all of detection, so it
is registered last. It has no terminal event (the server closing ends the stream), reports no
usage, and gets no error event: streamhop does not know what its client would make of one, so a
fault is logged and counted and the stream simply ends. A JSON error response (before any byte)
is OpenAI's error object, the shape most clients of LLM APIs parse.
"""

from __future__ import annotations

from typing import Any

import orjson

from streamhop.middleware.rechunk.formats.base import (
    Content,
    Kind,
    Match,
    MergeGroup,
    ResponseFacts,
    TerminalCompletion,
    Usage,
    openai_error_object,
)
from streamhop.middleware.sse.events import SSEEvent


class PlainSSEFormat:
    """Holds every event unchanged (stateless, shareable)."""

    name = "sse"
    has_terminal = False
    terminal_hint = None
    provider_name = None

    def detect(self, event: SSEEvent, obj: dict[str, Any] | None) -> Match:
        """Any event with data: the catch-all, beaten by every provider format's match."""
        return Match.ANY

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

    def completion(self) -> TerminalCompletion:
        """Never finished by an event (:attr:`has_terminal` is false: a close ends it)."""
        return TerminalCompletion(self)

    def usage(self, event: SSEEvent) -> Usage | None:
        """Plain SSE reports no usage streamhop could read."""
        return None

    def response_facts(self, event: SSEEvent) -> ResponseFacts | None:
        """Plain SSE names no response streamhop could read."""
        return None

    def error_event(self, code: str, message: str) -> None:
        """None: streamhop never adds an event to a stream it does not understand."""
        return None

    def error_body(self, code: str, message: str, status: int | None = None) -> bytes:
        """OpenAI's error object, its ``type`` by ``status``."""
        return orjson.dumps(openai_error_object(code, message, status))

    def claims_path(self, path: str) -> bool:
        """No path says a stream is plain SSE."""
        return False

    def operation_name(self, path: str) -> str | None:
        """Not a GenAI API."""
        return None
