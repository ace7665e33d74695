"""Merge rules for Anthropic Messages streams.

Wire format: Anthropic docs, "Streaming Messages"
(https://docs.anthropic.com/en/docs/build-with-claude/streaming): ``message_start``,
``content_block_start``, ``content_block_delta``, ``content_block_stop``, ``message_delta``,
``message_stop``, ``ping``, ``error``, each with an ``event:`` line naming the ``type``.

Only ``content_block_delta`` events whose delta is ``text_delta`` (``text``),
``input_json_delta`` (``partial_json``) or ``thinking_delta`` (``thinking``) are deltas; they
merge when index, delta type and every other field are equal. ``signature_delta``,
``citations_delta``, unknown delta types and every other event are boundaries, forwarded as they
came (the API's whitespace padding included).
"""

from __future__ import annotations

from typing import Final, cast

from streamhop.middleware.rechunk.formats.base import Content, Kind, json_type, parse_object
from streamhop.middleware.rechunk.formats.field_group import FieldGroup, FieldParsed
from streamhop.middleware.sse.events import SSEEvent

_DELTA_FIELDS: Final = {
    "text_delta": "text",
    "input_json_delta": "partial_json",
    "thinking_delta": "thinking",
}
_CONTENT: Final = {
    "text": Content.TEXT,
    "partial_json": Content.TOOL_ARGS,
    "thinking": Content.TEXT,
}
_TOP_SKIP: Final = frozenset(("delta",))


class AnthropicFormat:
    """Classifies and merges Anthropic Messages stream events (stateless, shareable)."""

    name = "anthropic"
    has_terminal = True

    def is_terminal(self, event: SSEEvent) -> bool:
        """``message_stop`` or ``error`` (Anthropic docs, "Streaming Messages")."""
        kind = event.event or json_type(event)
        return kind in ("message_stop", "error")

    def classify(self, event: SSEEvent) -> tuple[Kind, Content | bool, object]:
        """See :meth:`streamhop.middleware.rechunk.formats.base.Format.classify`."""
        obj = parse_object(event)
        if type(obj) is not dict:
            return Kind.FLUSH, False, obj
        if obj.get("type") != "content_block_delta":
            return Kind.FLUSH, False, None
        delta = obj.get("delta")
        if type(delta) is not dict:
            return Kind.FLUSH, False, None
        field = _DELTA_FIELDS.get(delta.get("type"))  # type: ignore[arg-type]
        if field is None:
            return Kind.FLUSH, True, None
        text = delta.get(field)
        if type(text) is not str:
            return Kind.FLUSH, False, None
        if not text:
            return Kind.DELTA, Content.NONE, (obj, field, text)
        return Kind.DELTA, _CONTENT[field], (obj, field, text)

    def open_group(self, event: SSEEvent, parsed: object) -> FieldGroup:
        """Start a merge group with a ``DELTA`` event (``parsed`` from :meth:`classify`)."""
        obj, field, text = cast(FieldParsed, parsed)
        return FieldGroup(event, obj, "delta", field, text, _TOP_SKIP)
