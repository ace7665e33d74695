"""The WebSocket bridge's message protocol without IO (``docs/websocket.md``): client frames
parsed or refused with the ``code`` the client gets, server frames built from events.

The same protocol against a real sidecar process: ``tests/sidecar/websocket/test_bridge.py``.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from streamhop.middleware.sse.events import SSEEvent
from streamhop.sidecar.websocket.messages import (
    DONE_REASONS,
    CancelMessage,
    MessageError,
    RequestMessage,
    done_frame,
    error_frame,
    event_frame,
    parse_client_frame,
)

BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


# --- client frames -------------------------------------------------------------------------------


def test_request_with_body_and_headers_in_order() -> None:
    frame = orjson.dumps(
        {"type": "request", "body": BODY, "headers": {"X-Trace": "2", "authorization": "Bearer k"}}
    ).decode()
    assert parse_client_frame(frame) == RequestMessage(
        body=BODY, headers=(("X-Trace", "2"), ("authorization", "Bearer k"))
    )


@pytest.mark.parametrize(
    "frame",
    [
        '{"type": "request", "body": {}}',
        '{"type": "request", "body": {}, "headers": null}',
        '{"type": "request", "body": {}, "headers": {}}',
        '{"body": {}, "type": "request", "resume": true, "v": 2}',  # unknown keys are ignored
    ],
)
def test_request_without_headers(frame: str) -> None:
    assert parse_client_frame(frame) == RequestMessage(body={}, headers=())


def test_header_values_in_latin1_are_accepted() -> None:
    frame = '{"type": "request", "body": {}, "headers": {"x-note": "caf\\u00e9"}}'
    message = parse_client_frame(frame)
    assert isinstance(message, RequestMessage)
    assert message.headers == (("x-note", "café"),)


@pytest.mark.parametrize("frame", ['{"type": "cancel"}', '{"type": "cancel", "id": 7}'])
def test_cancel(frame: str) -> None:
    assert parse_client_frame(frame) == CancelMessage()


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("this is not json", "invalid_json"),
        ("", "invalid_json"),
        ('{"type": "request"', "invalid_json"),
        ("[1, 2]", "invalid_message"),
        ('"request"', "invalid_message"),
        ("null", "invalid_message"),
        ('{"kind": "request"}', "invalid_message"),
        ('{"type": 1}', "invalid_message"),
        ('{"type": null}', "invalid_message"),
        ('{"type": "pause"}', "unknown_type"),
        ('{"type": "resume"}', "invalid_message"),
        ('{"type": "resume", "stream_id": "a b"}', "invalid_message"),
        ('{"type": "resume", "stream_id": "abc", "after": -1}', "invalid_message"),
        ('{"type": "resume", "stream_id": "abc", "after": "3"}', "invalid_message"),
        ('{"type": "Request"}', "unknown_type"),
        ('{"type": "request"}', "invalid_body"),
        ('{"type": "request", "body": null}', "invalid_body"),
        ('{"type": "request", "body": "hi"}', "invalid_body"),
        ('{"type": "request", "body": [1]}', "invalid_body"),
        ('{"type": "request", "body": {}, "headers": [["a", "b"]]}', "invalid_headers"),
        ('{"type": "request", "body": {}, "headers": "a: b"}', "invalid_headers"),
        ('{"type": "request", "body": {}, "headers": {"x": 1}}', "invalid_headers"),
        ('{"type": "request", "body": {}, "headers": {"x": null}}', "invalid_headers"),
        ('{"type": "request", "body": {}, "headers": {"a b": "c"}}', "invalid_headers"),
        ('{"type": "request", "body": {}, "headers": {"": "c"}}', "invalid_headers"),
        ('{"type": "request", "body": {}, "headers": {"a:b": "c"}}', "invalid_headers"),
        ('{"type": "request", "body": {}, "headers": {"x": "a\\r\\nb: c"}}', "invalid_headers"),
        ('{"type": "request", "body": {}, "headers": {"x": "a\\nb"}}', "invalid_headers"),
        ('{"type": "request", "body": {}, "headers": {"x": "a\\u0000"}}', "invalid_headers"),
        ('{"type": "request", "body": {}, "headers": {"x": "\\u65e5\\u672c"}}', "invalid_headers"),
    ],
)
def test_unusable_frames_are_refused_with_their_code(frame: str, code: str) -> None:
    with pytest.raises(MessageError) as info:
        parse_client_frame(frame)
    assert info.value.code == code
    assert str(info.value)


# --- server frames -------------------------------------------------------------------------------


def _frame(frame: object) -> dict[str, Any]:
    """A server frame as a client reads it: a WebSocket text frame (a ``str``; ``bytes`` would
    go out as a binary frame) of valid UTF-8 holding one JSON object."""
    assert type(frame) is str, f"not a text frame: {type(frame).__name__}"
    parsed = orjson.loads(frame.encode("utf-8"))  # a lone surrogate raises: not UTF-8
    assert type(parsed) is dict, frame
    return parsed


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (SSEEvent(data='{"a": 1}'), {"type": "event", "event": None, "data": {"a": 1}}),
        (
            SSEEvent(data='{"type":"ping"}', event="ping"),
            {"type": "event", "event": "ping", "data": {"type": "ping"}},
        ),
        (SSEEvent(data="[DONE]"), {"type": "event", "event": None, "data": "[DONE]"}),
        (SSEEvent(data='"café"'), {"type": "event", "event": None, "data": "café"}),
        (SSEEvent(data="caf\u00e9 ok"), {"type": "event", "event": None, "data": "café ok"}),
        (SSEEvent(data="1\n2"), {"type": "event", "event": None, "data": "1\n2"}),
        (SSEEvent(data="42"), {"type": "event", "event": None, "data": 42}),
        (SSEEvent(data=None), {"type": "event", "event": None, "data": None}),
    ],
)
def test_event_frame_carries_the_data_as_json_when_it_parses(
    event: SSEEvent, expected: dict[str, Any]
) -> None:
    assert _frame(event_frame(event)) == expected


def test_event_frame_turns_invalid_utf8_into_replacement_characters() -> None:
    # The decoder keeps bytes that are not UTF-8 as surrogate escapes; a text frame must be
    # valid Unicode, so there (and only there) they become U+FFFD.
    raw = b"caf\xe9 \xff\xfe ok"
    data = raw.decode("utf-8", "surrogateescape")
    name = b"n\xe9".decode("utf-8", "surrogateescape")
    text = event_frame(SSEEvent(data=data, event=name))
    text.encode("utf-8")  # valid Unicode, no lone surrogates
    assert _frame(text) == {
        "type": "event",
        "event": "n\ufffd",
        "data": "caf\ufffd \ufffd\ufffd ok",
    }


@pytest.mark.parametrize("reason", DONE_REASONS)
def test_done_frame(reason: str) -> None:
    assert _frame(done_frame(reason)) == {"type": "done", "reason": reason}


def test_done_reasons_are_the_documented_ones() -> None:
    assert set(DONE_REASONS) == {"complete", "cancelled", "interrupted", "error"}


def test_error_frame_with_and_without_extra_fields() -> None:
    assert _frame(error_frame("nothing_to_cancel", "no generation is running")) == {
        "type": "error",
        "error": {"code": "nothing_to_cancel", "message": "no generation is running"},
    }
    frame = _frame(error_frame("upstream_status", "429 from upstream", status=429, body={"e": 1}))
    assert frame == {
        "type": "error",
        "error": {
            "code": "upstream_status",
            "message": "429 from upstream",
            "status": 429,
            "body": {"e": 1},
        },
    }


def test_resume_message_and_reconnect_frame() -> None:
    from streamhop.sidecar.websocket.messages import ResumeMessage, reconnect_frame

    assert parse_client_frame('{"type": "resume", "stream_id": "ab12", "after": 7}') == (
        ResumeMessage("ab12", 7)
    )
    assert parse_client_frame('{"type": "resume", "stream_id": "ab12"}') == ResumeMessage("ab12", 0)
    assert orjson.loads(reconnect_frame("ab12", 7, 150)) == {
        "type": "reconnect",
        "stream_id": "ab12",
        "last_seq": 7,
        "retry_ms": 150,
    }
