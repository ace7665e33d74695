"""The Anthropic Messages stream format (``anthropic``).

Wire format: Anthropic docs, "Streaming Messages"
(https://docs.anthropic.com/en/docs/build-with-claude/streaming): ``message_start``,
``content_block_start``, ``content_block_delta``, ``content_block_stop``, ``message_delta``,
``message_stop``, ``ping``, ``error``, each with an ``event:`` line naming the ``type``.

Only ``content_block_delta`` events whose delta is ``text_delta`` (``text``),
``input_json_delta`` (``partial_json``) or ``thinking_delta`` (``thinking``) are deltas; they
merge when index, delta type and every other field are equal. ``signature_delta``,
``citations_delta``, unknown delta types and every other event are boundaries, forwarded as they
came (the API's whitespace padding included).

Detection: an ``event:`` name or JSON ``type`` among the stream's event types. Terminal:
``message_stop`` or ``error``. Usage (same page): ``message_start`` carries
``message.usage.input_tokens``; each ``message_delta`` the cumulative ``usage.output_tokens``.
Response facts: ``message_start``'s ``message.id`` and ``message.model``, ``message_delta``'s
``delta.stop_reason``.
Errors (https://docs.anthropic.com/en/api/errors): ``event: error`` with
``{"type": "error", "error": {"type", "message"}}``, on which the ``anthropic`` SDK raises; the
same object is the body of an error response, its ``type`` by the response's status
(``not_found_error`` for a 404: :func:`anthropic_error_type`). The API lives under ``/v1/messages``.
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
    text_or_none,
    token_usage,
    usage_object,
)
from streamhop.middleware.rechunk.formats.field_group import FieldGroup, FieldParsed
from streamhop.middleware.rechunk.formats.parsing import parse_object
from streamhop.middleware.sse.events import SSEEvent

_DELTA_FIELDS: Final = {
    "text_delta": "text",
    "input_json_delta": "partial_json",
    "thinking_delta": "thinking",
}
_CONTENT: Final = {
    "text": Content.TEXT,
    "partial_json": Content.TOOL_ARGS,
    "thinking": Content.REASONING,
}
_TOP_SKIP: Final = frozenset(("delta",))
_FACT_EVENTS: Final = frozenset(("message_start", "message_delta"))
# The event types that say a stream is Anthropic's when it is the first one with data (``ping``
# and ``error`` are left out: other APIs use those names too).
_EVENTS: Final = frozenset(
    (
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    )
)

# The error ``type`` of each HTTP status Anthropic's errors page names (see anthropic_error_type).
_ERROR_TYPES: Final[dict[int, str]] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


def anthropic_error_type(status: int | None) -> str:
    """Anthropic's error ``type`` for a response of HTTP ``status``.

    From Anthropic's "Errors" page (https://docs.anthropic.com/en/api/errors): 400
    ``invalid_request_error`` (also used "for other 4XX status codes not listed": 405, 408,
    410, 421, 431), 401 ``authentication_error``, 403 ``permission_error``, 404 ``not_found_error``,
    413 ``request_too_large``, 429 ``rate_limit_error``, 500 ``api_error``, 529
    ``overloaded_error``. Divergences: streamhop's 503 (draining, too many streams, resume
    store down) is ``overloaded_error``, the page's type for "temporarily overloaded, try
    again"; other 5xx (502, 504) and ``None`` are ``api_error``, the page lists no type of
    their own.
    """
    if status is None:
        return "api_error"
    known = _ERROR_TYPES.get(status)
    if known is not None:
        return known
    return "invalid_request_error" if 400 <= status < 500 else "api_error"


class AnthropicFormat:
    """Classifies and merges Anthropic Messages stream events (stateless, shareable)."""

    name = "anthropic"
    has_terminal = True
    terminal_hint = "message_stop"
    provider_name = "anthropic"

    def detect(self, event: SSEEvent, obj: dict[str, Any] | None) -> Match:
        """An Anthropic Messages event: its ``event:`` name (``message_start``, …) is one of
        the Messages stream's, else its body's ``type`` is (:meth:`.base.Format.detect`)."""
        if event.event in _EVENTS:
            return Match.NAME
        if obj is not None and obj.get("type") in _EVENTS:
            return Match.BODY
        return Match.NONE

    def is_terminal(self, event: SSEEvent) -> bool:
        """``message_stop`` or ``error`` (Anthropic docs, "Streaming Messages")."""
        kind = event.event or json_type(event)
        return kind in ("message_stop", "error")

    def completion(self) -> TerminalCompletion:
        """Finished at the terminal event (:meth:`is_terminal`)."""
        return TerminalCompletion(self)

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
            # signature_delta closes a thinking block; citations_delta and unknown delta types
            # belong to the answer.
            if delta.get("type") == "signature_delta":
                return Kind.FLUSH, Content.REASONING, None
            return Kind.FLUSH, Content.TEXT, None
        text = delta.get(field)
        if type(text) is not str:
            return Kind.FLUSH, False, None
        if not text:
            return Kind.DELTA, Content.NONE, (obj, field, text)
        return Kind.DELTA, _CONTENT[field], (obj, field, text)

    def open_group(self, event: SSEEvent, parsed: object) -> FieldGroup:
        """Start a merge group with a ``DELTA`` event (``parsed`` from :meth:`classify`)."""
        obj, field, text = cast(FieldParsed, parsed)
        # Text and thinking may be held for a flush boundary; tool input (partial_json) never.
        return FieldGroup(
            event, obj, "delta", field, text, _TOP_SKIP, holdable=field != "partial_json"
        )

    def usage(self, event: SSEEvent) -> Usage | None:
        """``message.usage`` of ``message_start``, or ``usage`` of ``message_delta``."""
        obj = usage_object(event)
        if obj is None:
            return None
        message = obj.get("message")
        usage = message.get("usage") if type(message) is dict else obj.get("usage")
        return token_usage(usage, "input_tokens", "output_tokens")

    def response_facts(self, event: SSEEvent) -> ResponseFacts | None:
        """``message.id`` and ``message.model`` of ``message_start``; ``delta.stop_reason`` of
        ``message_delta``. Every other event is skipped by its name, unparsed."""
        named = named_object(event, _FACT_EVENTS)
        if named is None:
            return None
        kind, obj = named
        if kind == "message_start":
            message = obj.get("message")
            if type(message) is not dict:
                return None
            return ResponseFacts(
                text_or_none(message.get("id")), text_or_none(message.get("model"))
            )
        delta = obj.get("delta")
        reason = text_or_none(delta.get("stop_reason")) if type(delta) is dict else None
        return None if reason is None else ResponseFacts(finish_reasons=(reason,))

    def error_event(self, code: str, message: str) -> SSEEvent:
        """``event: error`` with Anthropic's error object (``type`` ``api_error``)."""
        return SSEEvent(data=self.error_body(code, message).decode(), event="error")

    def error_body(self, code: str, message: str, status: int | None = None) -> bytes:
        """Anthropic's error object, its ``type`` by ``status`` (:func:`anthropic_error_type`);
        streamhop's ``code`` rides along in ``error.code``."""
        return orjson.dumps(
            {
                "type": "error",
                "error": {"type": anthropic_error_type(status), "message": message, "code": code},
            }
        )

    def claims_path(self, path: str) -> bool:
        """``/v1/messages`` and everything under it (``/v1/messages/count_tokens``)."""
        return path.endswith("/messages") or "/messages/" in path

    def operation_name(self, path: str) -> str | None:
        """``chat`` for ``/v1/messages``."""
        return "chat" if path.endswith("/messages") else None
