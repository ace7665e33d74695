"""Token usage reported inside a stream, per format, for metrics and span attributes.

* OpenAI chat: the chunk with ``usage`` (``prompt_tokens``, ``completion_tokens``), sent when the
  request has ``stream_options.include_usage``.
* OpenAI Responses: ``response.completed`` (and ``response.incomplete``) carry
  ``response.usage.input_tokens`` / ``output_tokens``.
* Anthropic: ``message_start`` carries ``message.usage.input_tokens``; each ``message_delta``
  carries the cumulative ``usage.output_tokens``.

Only boundary events are inspected (a few per stream), never deltas.
"""

from __future__ import annotations

from typing import Any

import orjson

from streamhop.middleware.sse.events import SSEEvent


def usage_of(format_name: str, event: SSEEvent) -> tuple[int | None, int | None] | None:
    """``(input_tokens, output_tokens)`` reported by ``event``, or ``None`` if it reports none.

    Either element may be ``None`` when the event reports only the other one.
    """
    data = event.data
    if data is None or "usage" not in data:
        return None
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    if type(obj) is not dict:
        return None
    usage: Any = None
    if format_name == "openai-chat":
        usage = obj.get("usage")
        if type(usage) is dict:
            return _int(usage.get("prompt_tokens")), _int(usage.get("completion_tokens"))
        return None
    if format_name == "openai-responses":
        response = obj.get("response")
        usage = response.get("usage") if type(response) is dict else None
    elif format_name == "anthropic":
        message = obj.get("message")
        usage = message.get("usage") if type(message) is dict else obj.get("usage")
    if type(usage) is dict:
        return _int(usage.get("input_tokens")), _int(usage.get("output_tokens"))
    return None


def _int(value: object) -> int | None:
    return value if type(value) is int else None
