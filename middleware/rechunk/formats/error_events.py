"""Errors in the client's own provider format, so its SDK raises a clear exception.

* OpenAI (chat and plain SSE): ``data: {"error": {"message", "type", "code", "param"}}`` — the
  shape of OpenAI's error object (https://platform.openai.com/docs/guides/error-codes); the
  ``openai`` SDK raises ``APIError`` on a stream event with an ``error`` key.
* OpenAI Responses: ``event: error`` with ``{"type": "error", "code", "message", "param"}``
  (Responses streaming reference, "error" event).
* Anthropic: ``event: error`` with ``{"type": "error", "error": {"type", "message"}}``
  (https://docs.anthropic.com/en/api/errors); the ``anthropic`` SDK raises on it.

``code`` values are streamhop's (``upstream_disconnected``, ``upstream_timeout``,
``event_too_large``, ...); ``type`` is ``api_error`` (Anthropic) / ``server_error`` (OpenAI).
"""

from __future__ import annotations

from typing import Any

import orjson

from streamhop.middleware.sse.events import SSEEvent


def format_for_path(path: str) -> str:
    """Guess a provider format from a request path when the route says ``auto``.

    Anthropic's Messages API lives under ``/v1/messages``; OpenAI Responses under
    ``/v1/responses``; everything else answers errors OpenAI-style.
    """
    if path.endswith("/messages") or "/messages/" in path:
        return "anthropic"
    if path.endswith("/responses"):
        return "openai-responses"
    return "openai-chat"


def error_event(format_name: str | None, code: str, message: str) -> SSEEvent:
    """A terminal error event for a stream of ``format_name`` (``None``/``auto``: OpenAI's).

    Args:
        format_name: the stream's format name.
        code: a short machine-readable reason (``upstream_disconnected``).
        message: a sentence for a person.
    """
    body: dict[str, Any]
    if format_name == "anthropic":
        body = {"type": "error", "error": {"type": "api_error", "message": message, "code": code}}
        return SSEEvent(data=orjson.dumps(body).decode(), event="error")
    if format_name == "openai-responses":
        body = {"type": "error", "code": code, "message": message, "param": None}
        return SSEEvent(data=orjson.dumps(body).decode(), event="error")
    body = {"error": {"message": message, "type": "server_error", "code": code, "param": None}}
    return SSEEvent(data=orjson.dumps(body).decode())


def error_body(format_name: str | None, code: str, message: str) -> bytes:
    """A JSON error response body (for a non-streamed answer such as 502/504/503).

    Anthropic's shape for ``anthropic``, OpenAI's for every other format.
    """
    if format_name == "anthropic":
        return orjson.dumps(
            {"type": "error", "error": {"type": "api_error", "message": message, "code": code}}
        )
    return orjson.dumps(
        {"error": {"message": message, "type": "server_error", "code": code, "param": None}}
    )
