"""The recorder (sans-IO: clock passed in), the timeline it becomes, and header redaction."""

from __future__ import annotations

from typing import Any

from streamhop.sidecar.observe.record import StreamRecord
from streamhop.sidecar.recording.recorder import StreamRecorder
from streamhop.sidecar.recording.redact import REDACTED, is_secret, redact_headers
from streamhop.sidecar.recording.timeline import build_timeline, outcome


def _record(**facts: Any) -> StreamRecord:
    record = StreamRecord(
        stream_id="s", route="/", method="POST", path="/v1/chat/completions", received_at=100.0
    )
    for name, value in facts.items():
        setattr(record, name, value)
    return record


def test_reads_are_kept_in_order_with_their_times() -> None:
    recorder = StreamRecorder(1024, lambda r, rec: None)
    for i, chunk in enumerate((b"data: a\n", b"\n", b"data: [DONE]\n\n")):
        recorder.add(chunk, 100.5 + i / 100)
    assert recorder.body() == b"data: a\n\ndata: [DONE]\n\n"
    assert recorder.size == 23 and recorder.times == [100.5, 100.51, 100.52]
    assert "3 reads" in repr(recorder)


def test_past_the_limit_the_recording_is_abandoned_and_freed() -> None:
    recorder = StreamRecorder(10, lambda r, rec: None)
    recorder.add(b"123456", 1.0)
    recorder.add(b"78901", 2.0)
    assert recorder.too_large and recorder.chunks == [] and recorder.times == []
    recorder.add(b"x", 3.0)  # ignored from now on
    assert recorder.chunks == [] and "too large" in repr(recorder)


def test_end_hands_the_recording_on_once() -> None:
    ended: list[tuple[StreamRecorder, StreamRecord]] = []
    recorder = StreamRecorder(10, lambda r, rec: ended.append((r, rec)))
    record = _record()
    recorder.end(record)
    recorder.end(record)
    assert ended == [(recorder, record)]


def test_begin_redacts_response_headers_and_notes_the_encoding() -> None:
    recorder = StreamRecorder(10, lambda r, rec: None, redact=("x-route-secret",))
    recorder.begin(
        [
            (b"Content-Type", b"text/event-stream"),
            (b"Content-Encoding", b"GZIP"),
            (b"Set-Cookie", b"session=abc"),
            (b"X-Route-Secret", b"s3cret"),
            (b"x-ratelimit-remaining-tokens", b"99"),
        ]
    )
    assert recorder.content_encoding == "gzip"
    assert recorder.response_headers == [
        ("Content-Type", "text/event-stream"),
        ("Content-Encoding", "GZIP"),
        ("Set-Cookie", REDACTED),
        ("X-Route-Secret", REDACTED),
        ("x-ratelimit-remaining-tokens", "99"),
    ]


def test_credentials_are_never_kept() -> None:
    for name in (
        "Authorization",
        "proxy-authorization",
        "X-Api-Key",
        "api-key",
        "Cookie",
        "x-goog-api-key",
        "x-amz-security-token",
        "X-Session-Id",
        "anthropic-api-key",
    ):
        assert is_secret(name), name
    for name in ("content-type", "anthropic-version", "openai-organization", "x-request-id"):
        assert not is_secret(name), name
    assert redact_headers([("Referer", "https://user:pw@example.com/x")]) == [
        ("Referer", "https://***@example.com/x")
    ]


def test_timeline_offsets_count_from_the_request_arrival() -> None:
    recorder = StreamRecorder(1024, lambda r, rec: None, [("authorization", REDACTED)])
    recorder.begin([(b"content-type", b"text/event-stream")])
    recorder.add(b"data: 1\n\n", 100.0305)
    recorder.add(b"data: 2\n\n", 100.0711)
    record = _record(
        model="m",
        status=200,
        format="openai-chat",
        upstream_request_at=100.001,
        upstream_connected_at=100.002,
        upstream_headers_at=100.03,
        finished_at=100.08,
    )
    timeline = build_timeline(recorder, record)
    assert timeline["version"] == 1 and timeline["request_id"] == record.request_id
    assert timeline["reads"] == [
        {"offset_ms": 30.5, "bytes": 9},
        {"offset_ms": 71.1, "bytes": 9},
    ]
    assert (timeline["upstream_request_offset_ms"], timeline["upstream_connected_offset_ms"]) == (
        1.0,
        2.0,
    )
    assert timeline["upstream_headers_offset_ms"] == 30.0
    assert timeline["finished_offset_ms"] == 80.0
    assert timeline["outcome"] == "complete" and timeline["bytes"] == 18
    assert timeline["request_headers"] == [["authorization", REDACTED]]
    assert timeline["response_headers"] == [["content-type", "text/event-stream"]]
    assert "request_body" not in timeline and "request_body_base64" not in timeline


def test_timeline_keeps_the_request_body_only_when_given() -> None:
    text = StreamRecorder(1024, lambda r, rec: None, request_body=b'{"model": "m"}')
    assert build_timeline(text, _record())["request_body"] == '{"model": "m"}'
    binary = StreamRecorder(1024, lambda r, rec: None, request_body=b"\xff\x00")
    assert build_timeline(binary, _record())["request_body_base64"] == "/wA="


def test_outcome() -> None:
    assert outcome(_record()) == "complete"
    assert outcome(_record(error="read_timeout")) == "error"
    assert outcome(_record(error="disconnected", cancel_reason="client_disconnect")) == "cancelled"
