"""The OpenAI Responses API stream format (``openai-responses``).

Wire format: OpenAI API reference, "Streaming events" of the Responses API
(https://platform.openai.com/docs/api-reference/responses-streaming): typed events such as
``response.created``, ``response.output_text.delta``, ``response.completed``, each with an
``event:`` line equal to its ``type`` and, since 2025, a ``sequence_number``.

The ``response.*.delta`` events below carry one string ``delta``; consecutive ones merge when
every other field is equal (``item_id``, ``output_index``, ``content_index``, unknown fields),
keeping the last ``sequence_number`` (the merged event stands for everything up to it),
concatenating ``logprobs`` and keeping the first ``obfuscation`` (random padding). Every other
event (``response.created`` and ``response.in_progress`` too) is a boundary, forwarded as it came.

Detection: an ``event:`` name or JSON ``type`` starting with ``response.``. Terminal:
``response.completed``, ``response.failed``, ``response.incomplete`` or ``error``. Usage:
``response.usage.input_tokens`` / ``output_tokens`` of ``response.completed`` (and
``response.incomplete``). Response facts: ``response.id`` and ``response.model`` of
``response.created``, a finish reason from the final event's status. Errors: ``event: error``
with ``{"type": "error", "code", "message", "param"}`` (the "error" streaming event of the same
reference); an error response body is OpenAI's error object. The API is ``/v1/responses``.
"""

from __future__ import annotations

from typing import Any, Final, cast

import orjson

from streamhop.middleware.rechunk.formats.base import (
    Content,
    Kind,
    Match,
    ResponseFacts,
    TerminalCompletion,
    Usage,
    json_type,
    named_object,
    openai_error_object,
    text_or_none,
    token_usage,
    usage_object,
)
from streamhop.middleware.rechunk.formats.field_group import FieldGroup, FieldParsed
from streamhop.middleware.rechunk.formats.parsing import parse_object
from streamhop.middleware.sse.events import SSEEvent

# delta event type -> what its (non-empty) text counts as for TTFT
_DELTA_TYPES: Final = {
    "response.output_text.delta": Content.TEXT,
    "response.refusal.delta": Content.TEXT,
    "response.reasoning_text.delta": Content.REASONING,
    "response.reasoning_summary_text.delta": Content.REASONING,
    "response.function_call_arguments.delta": Content.TOOL_ARGS,
    "response.custom_tool_call_input.delta": Content.TOOL_ARGS,
    "response.mcp_call_arguments.delta": Content.TOOL_ARGS,
    "response.code_interpreter_call_code.delta": Content.TOOL_ARGS,
    "response.audio.transcript.delta": Content.NONE,
}
# Text deltas that may be held for a flush boundary (tool input and code never are; nor is an
# audio transcript, which follows audio already sent).
_HOLDABLE: Final = frozenset(
    (
        "response.output_text.delta",
        "response.refusal.delta",
        "response.reasoning_text.delta",
        "response.reasoning_summary_text.delta",
    )
)
_SKIP: Final = frozenset(("delta", "sequence_number", "logprobs", "obfuscation"))
_LAST_WINS: Final = ("sequence_number",)
_CONCAT: Final = ("logprobs",)


_TERMINAL = frozenset(("response.completed", "response.failed", "response.incomplete", "error"))
# events whose ``response`` object names the response (id, model) or ends it
_FACT_EVENTS: Final = frozenset(
    (
        "response.created",
        "response.in_progress",
        "response.completed",
        "response.failed",
        "response.incomplete",
    )
)


class OpenAIResponsesFormat:
    """Classifies and merges Responses API stream events (stateless, shareable)."""

    name = "openai-responses"
    has_terminal = True
    terminal_hint = "response.completed"
    provider_name = "openai"

    def detect(self, event: SSEEvent, obj: dict[str, Any] | None) -> Match:
        """A Responses API event: its ``event:`` name starts with ``response.``, else its
        body's ``type`` does (:meth:`.base.Format.detect`)."""
        name = event.event
        if name is not None and name.startswith("response."):
            return Match.NAME
        kind = obj.get("type") if obj is not None else None
        if type(kind) is str and kind.startswith("response."):
            return Match.BODY
        return Match.NONE

    def is_terminal(self, event: SSEEvent) -> bool:
        """``response.completed``, ``response.failed``, ``response.incomplete`` or ``error``
        (OpenAI API reference, "Streaming events" of the Responses API)."""
        kind = event.event or json_type(event)
        return kind in _TERMINAL

    def completion(self) -> TerminalCompletion:
        """Finished at the terminal event (:meth:`is_terminal`)."""
        return TerminalCompletion(self)

    def classify(self, event: SSEEvent) -> tuple[Kind, Content | bool, object]:
        """See :meth:`streamhop.middleware.rechunk.formats.base.Format.classify`."""
        # OpenAI-compatible Responses servers (OpenRouter) end with chat's `[DONE]` after
        # `response.completed`; the openai SDK stops reading there. Not malformed.
        obj = parse_object(event, "[DONE]")
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
        holdable = obj["type"] in _HOLDABLE
        return FieldGroup(event, obj, None, field, text, _SKIP, _LAST_WINS, _CONCAT, holdable)

    def usage(self, event: SSEEvent) -> Usage | None:
        """``response.usage`` of ``response.completed`` / ``response.incomplete``."""
        obj = usage_object(event)
        if obj is None:
            return None
        response = obj.get("response")
        usage = response.get("usage") if type(response) is dict else None
        return token_usage(usage, "input_tokens", "output_tokens")

    def response_facts(self, event: SSEEvent) -> ResponseFacts | None:
        """``response.id`` and ``response.model`` of ``response.created`` (and of the events
        that carry the whole response); a finish reason from the final status: ``stop`` for
        ``response.completed``, ``incomplete_details.reason`` (``max_output_tokens``,
        ``content_filter``) for ``response.incomplete``, ``error`` for ``response.failed``.
        The Responses API has no per-choice finish reason; these are the Chat Completions
        words for the same endings. Other events are skipped by their name, unparsed."""
        named = named_object(event, _FACT_EVENTS)
        if named is None:
            return None
        kind, obj = named
        response = obj.get("response")
        if type(response) is not dict:
            return None
        reasons: tuple[str, ...] = ()
        if kind == "response.completed":
            reasons = ("stop",)
        elif kind == "response.failed":
            reasons = ("error",)
        elif kind == "response.incomplete":
            details = response.get("incomplete_details")
            reason = text_or_none(details.get("reason")) if type(details) is dict else None
            reasons = (reason or "incomplete",)
        return ResponseFacts(
            text_or_none(response.get("id")), text_or_none(response.get("model")), reasons
        )

    def error_event(self, code: str, message: str) -> SSEEvent:
        """``event: error`` with ``{"type": "error", "code", "message", "param": null}``."""
        body = {"type": "error", "code": code, "message": message, "param": None}
        return SSEEvent(data=orjson.dumps(body).decode(), event="error")

    def error_body(self, code: str, message: str, status: int | None = None) -> bytes:
        """OpenAI's error object (the Responses API answers errors like every OpenAI API), its
        ``type`` by ``status``."""
        return orjson.dumps(openai_error_object(code, message, status))

    def claims_path(self, path: str) -> bool:
        """``/v1/responses``."""
        return path.endswith("/responses")

    def operation_name(self, path: str) -> str | None:
        """``chat`` for ``/v1/responses`` (the GenAI conventions have no separate name)."""
        return "chat" if path.endswith("/responses") else None
