"""Merge rules for OpenAI Responses API streams.

Wire format: OpenAI API reference, "Streaming events" of the Responses API
(https://platform.openai.com/docs/api-reference/responses-streaming): typed events such as
``response.created``, ``response.output_text.delta``, ``response.completed``, each with an
``event:`` line equal to its ``type`` and, since 2025, a ``sequence_number``.

The ``response.*.delta`` events below carry one string ``delta``; consecutive ones merge when
every other field is equal (``item_id``, ``output_index``, ``content_index``, unknown fields),
keeping the last ``sequence_number`` (the merged event stands for everything up to it),
concatenating ``logprobs`` and keeping the first ``obfuscation`` (random padding). Every other
event (``response.created`` and ``response.in_progress`` too) is a boundary, forwarded as it came.
"""

from __future__ import annotations

from typing import Final, cast

from streamhop.middleware.rechunk.formats.base import Content, Kind, json_type, parse_object
from streamhop.middleware.rechunk.formats.field_group import FieldGroup, FieldParsed
from streamhop.middleware.sse.events import SSEEvent

# delta event type -> what its (non-empty) text counts as for TTFT
_DELTA_TYPES: Final = {
    "response.output_text.delta": Content.TEXT,
    "response.refusal.delta": Content.TEXT,
    "response.reasoning_text.delta": Content.TEXT,
    "response.reasoning_summary_text.delta": Content.TEXT,
    "response.function_call_arguments.delta": Content.TOOL_ARGS,
    "response.custom_tool_call_input.delta": Content.TOOL_ARGS,
    "response.mcp_call_arguments.delta": Content.TOOL_ARGS,
    "response.code_interpreter_call_code.delta": Content.TOOL_ARGS,
    "response.audio.transcript.delta": Content.NONE,
}
_SKIP: Final = frozenset(("delta", "sequence_number", "logprobs", "obfuscation"))
_LAST_WINS: Final = ("sequence_number",)
_CONCAT: Final = ("logprobs",)


_TERMINAL = frozenset(("response.completed", "response.failed", "response.incomplete", "error"))


class OpenAIResponsesFormat:
    """Classifies and merges Responses API stream events (stateless, shareable)."""

    name = "openai-responses"
    has_terminal = True

    def is_terminal(self, event: SSEEvent) -> bool:
        """``response.completed``, ``response.failed``, ``response.incomplete`` or ``error``
        (OpenAI API reference, "Streaming events" of the Responses API)."""
        kind = event.event or json_type(event)
        return kind in _TERMINAL

    def classify(self, event: SSEEvent) -> tuple[Kind, Content | bool, object]:
        """See :meth:`streamhop.middleware.rechunk.formats.base.Format.classify`."""
        obj = parse_object(event)
        if type(obj) is not dict:
            return Kind.FLUSH, False, obj
        content = _DELTA_TYPES.get(obj.get("type"))  # type: ignore[arg-type]
        if content is None:
            return Kind.FLUSH, False, None
        text = obj.get("delta")
        if type(text) is not str:
            return Kind.FLUSH, False, None
        return Kind.DELTA, content if text else Content.NONE, (obj, "delta", text)

    def open_group(self, event: SSEEvent, parsed: object) -> FieldGroup:
        """Start a merge group with a ``DELTA`` event (``parsed`` from :meth:`classify`)."""
        obj, field, text = cast(FieldParsed, parsed)
        return FieldGroup(event, obj, None, field, text, _SKIP, _LAST_WINS, _CONCAT)
