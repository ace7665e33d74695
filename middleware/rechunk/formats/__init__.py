"""Wire formats: merge rules per provider stream format, and detection from the first event.

Names used in config (``[[routes]].format``) and the ``X-Streamhop-Format`` of logs:
``openai-chat``, ``openai-responses``, ``anthropic``, ``sse``, and ``auto`` (detect).
"""

from __future__ import annotations

from typing import Final

import orjson

from streamhop.middleware.rechunk.formats.anthropic import AnthropicFormat
from streamhop.middleware.rechunk.formats.base import MALFORMED, Format, Kind, MergeGroup
from streamhop.middleware.rechunk.formats.error_events import (
    error_body,
    error_event,
    format_for_path,
)
from streamhop.middleware.rechunk.formats.openai_chat import OpenAIChatFormat
from streamhop.middleware.rechunk.formats.openai_responses import OpenAIResponsesFormat
from streamhop.middleware.rechunk.formats.plain import PlainSSEFormat
from streamhop.middleware.sse.events import SSEEvent

__all__ = [
    "FORMATS",
    "FORMAT_NAMES",
    "MALFORMED",
    "Format",
    "Kind",
    "MergeGroup",
    "detect_format",
    "error_body",
    "error_event",
    "format_for_path",
    "get_format",
]

FORMATS: Final[dict[str, Format]] = {
    f.name: f
    for f in (OpenAIChatFormat(), OpenAIResponsesFormat(), AnthropicFormat(), PlainSSEFormat())
}
FORMAT_NAMES: Final = ("auto", *FORMATS)

_ANTHROPIC_EVENTS: Final = frozenset(
    (
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    )
)


def get_format(name: str) -> Format:
    """Return the format called ``name`` (not ``auto``).

    Raises:
        KeyError: unknown name; the message lists the known ones.
    """
    try:
        return FORMATS[name]
    except KeyError:
        raise KeyError(f"unknown stream format {name!r}; expected one of {list(FORMATS)}") from None


def detect_format(event: SSEEvent) -> Format | None:
    """Guess the format from the first event that has data.

    Returns:
        The format, or ``None`` when ``event`` has no data (look at the next one). A stream whose
        first event matches no provider format is plain ``sse``.
    """
    data = event.data
    if data is None:
        return None
    name = event.event
    if name is not None:
        if name.startswith("response."):
            return FORMATS["openai-responses"]
        if name in _ANTHROPIC_EVENTS:
            return FORMATS["anthropic"]
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return FORMATS["sse"]
    if type(obj) is not dict:
        return FORMATS["sse"]
    kind = obj.get("type")
    if type(kind) is str:
        if kind.startswith("response."):
            return FORMATS["openai-responses"]
        if kind in _ANTHROPIC_EVENTS:
            return FORMATS["anthropic"]
    if "choices" in obj or obj.get("object") == "chat.completion.chunk":
        return FORMATS["openai-chat"]
    return FORMATS["sse"]
