"""The WebSocket bridge's message protocol, without IO: parse client frames, build server frames.

Every frame is a text frame holding one JSON object with a ``type`` (``docs/websocket.md`` is the
user-facing reference). Client → server: ``request``, ``cancel``, ``resume`` and ``follow``.
Server → client: ``event``, ``done``, ``error`` and ``reconnect``.

Parsing is strict about what the bridge needs and lenient about the rest: unknown keys in a
message are ignored, so a client may send fields a later version understands. A frame that cannot
be used raises :class:`MessageError` carrying the ``code`` the client receives in its ``error``
message; the socket stays open.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final

import orjson

from streamhop.middleware.errors import StreamHopError
from streamhop.middleware.sse.events import SSEEvent

DONE_REASONS: Final = ("complete", "cancelled", "interrupted", "error")
# RFC 9110 §5.6.2 token; header values must not carry CR, LF or NUL (§5.5).
_TOKEN: Final = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_BAD_VALUE: Final = re.compile(r"[\r\n\x00]")
_STREAM_ID: Final = re.compile(r"^[0-9A-Za-z_-]{1,64}$")


class MessageError(StreamHopError):
    """A client frame the bridge cannot use.

    Attributes:
        code: the machine-readable ``error.code`` sent to the client.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class RequestMessage:
    """``{"type": "request", "body": {...}, "headers": {...}}``.

    Attributes:
        body: the JSON object to POST upstream (``stream`` is forced to ``true`` when sent).
        headers: extra request headers as ``(name, value)``, in the order given.
    """

    body: dict[str, Any]
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class CancelMessage:
    """``{"type": "cancel"}``."""


@dataclass(frozen=True, slots=True)
class ResumeMessage:
    """``{"type": "resume", "stream_id": "...", "after": <seq>, "headers": {...}}``: replay a
    logged generation after event ``after`` (0: from the start) and follow it live to its end.
    ``{"type": "follow", ...}`` (the same keys) is the same replay for another reader of the
    generation (a second tab, a supervisor): counted as a follower in the metrics, no more.

    Attributes:
        stream_id: the stream id of the generation (from a ``reconnect`` message or an event's
            ``id``).
        after: the ``seq`` of the last event the client has.
        headers: the caller's credential headers when they are not on the handshake (a browser
            cannot set ``Authorization`` on a WebSocket handshake): the resume is bound to the
            same credentials the generation's ``request`` message carried.
        follower: sent as ``follow`` rather than ``resume``.
    """

    stream_id: str
    after: int
    headers: tuple[tuple[str, str], ...] = ()
    follower: bool = False


ClientMessage = RequestMessage | CancelMessage | ResumeMessage


def parse_client_frame(text: str) -> ClientMessage:
    """Parse one client text frame.

    Args:
        text: the frame's text.

    Returns:
        The message.

    Raises:
        MessageError: ``invalid_json`` (not JSON), ``invalid_message`` (not an object, or no
            string ``type``), ``unknown_type``, ``invalid_body`` (``body`` missing or not an
            object), ``invalid_headers`` (``headers`` not an object of string names and values,
            or a name or value HTTP cannot carry).
    """
    try:
        obj = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise MessageError("invalid_json", f"frame is not valid JSON: {exc}") from None
    if type(obj) is not dict:
        raise MessageError(
            "invalid_message", f"expected a JSON object with a 'type', got {type(obj).__name__}"
        )
    kind = obj.get("type")
    if type(kind) is not str:
        raise MessageError("invalid_message", "expected a string 'type' in the message")
    if kind == "cancel":
        return CancelMessage()
    if kind in ("resume", "follow"):
        stream_id, after = obj.get("stream_id"), obj.get("after", 0)
        if type(stream_id) is not str or not _STREAM_ID.match(stream_id):
            raise MessageError("invalid_message", f"a {kind} needs 'stream_id', a stream id")
        if type(after) is not int or after < 0:
            raise MessageError("invalid_message", "'after' must be an integer >= 0")
        headers = _headers(obj.get("headers"))
        return ResumeMessage(stream_id, after, headers, follower=kind == "follow")
    if kind != "request":
        raise MessageError(
            "unknown_type",
            f"unknown message type {kind!r}; expected 'request', 'cancel', 'resume' or 'follow'",
        )
    body = obj.get("body")
    if type(body) is not dict:
        got = "nothing" if body is None else type(body).__name__
        raise MessageError(
            "invalid_body", f"a request needs 'body': the JSON object to send, got {got}"
        )
    return RequestMessage(body=body, headers=_headers(obj.get("headers")))


def _headers(raw: object) -> tuple[tuple[str, str], ...]:
    if raw is None:
        return ()
    if type(raw) is not dict:
        raise MessageError(
            "invalid_headers", f"'headers' must be an object of strings, got {type(raw).__name__}"
        )
    out: list[tuple[str, str]] = []
    for name, value in raw.items():
        if type(value) is not str:
            raise MessageError(
                "invalid_headers",
                f"header {name!r} must have a string value, got {type(value).__name__}",
            )
        if not _TOKEN.match(name):
            raise MessageError("invalid_headers", f"{name!r} is not a valid header name")
        if _BAD_VALUE.search(value):
            raise MessageError(
                "invalid_headers", f"header {name!r} has a CR, LF or NUL in its value"
            )
        try:
            value.encode("latin-1")
        except UnicodeEncodeError:
            raise MessageError(
                "invalid_headers", f"header {name!r} has characters outside Latin-1"
            ) from None
        out.append((name, value))
    return tuple(out)


def event_frame(event: SSEEvent) -> str:
    """``{"type": "event", "event": ..., "data": ...}`` for one re-chunked SSE event, plus
    ``"id": "<stream-id>:<seq>"`` when the generation is logged for resumption.

    ``data`` is the event's data parsed as JSON, or the raw string when it is not JSON (OpenAI's
    ``[DONE]``).
    """
    data = event.data
    parsed: Any
    try:
        parsed = orjson.loads(data) if data is not None else None
    except orjson.JSONDecodeError:
        parsed = data
        if data is not None and not data.isascii():
            # Invalid UTF-8 kept by the decoder (surrogate escapes): a JSON text frame must be
            # valid Unicode, so here, and only here, it becomes U+FFFD as a browser would show.
            parsed = data.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    name = event.event
    if name is not None and not name.isascii():
        name = name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    if event.id is not None:
        return orjson.dumps(
            {"type": "event", "event": name, "data": parsed, "id": event.id}
        ).decode()
    return orjson.dumps({"type": "event", "event": name, "data": parsed}).decode()


def reconnect_frame(stream_id: str, last_seq: int, retry_ms: int) -> str:
    """``{"type": "reconnect", "stream_id": ..., "last_seq": ..., "retry_ms": ...}``: this
    replica is shutting down; the generation goes on into the shared resume log. Reconnect after
    ``retry_ms`` and send ``{"type": "resume", "stream_id": ..., "after": last_seq}``."""
    return orjson.dumps(
        {"type": "reconnect", "stream_id": stream_id, "last_seq": last_seq, "retry_ms": retry_ms}
    ).decode()


def done_frame(reason: str) -> str:
    """``{"type": "done", "reason": reason}``; ``reason`` is one of :data:`DONE_REASONS`."""
    assert reason in DONE_REASONS, reason
    return orjson.dumps({"type": "done", "reason": reason}).decode()


def error_frame(code: str, message: str, **extra: Any) -> str:
    """``{"type": "error", "error": {"code": ..., "message": ..., **extra}}``."""
    return orjson.dumps(
        {"type": "error", "error": {"code": code, "message": message, **extra}}
    ).decode()
