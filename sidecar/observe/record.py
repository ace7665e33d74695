"""What streamhop knows about one proxied request, filled in as it goes and logged at the end."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field

import orjson

from streamhop.middleware.observe.metrics import StreamMetrics


@dataclass(slots=True)
class StreamRecord:
    """Per-request facts. Times are ``time.monotonic()`` seconds; durations are seconds.

    ``stream_id`` is the public id (``X-Streamhop-Stream-Id``, resume): a capability, never
    logged at any level or put in traces. ``request_id`` is a separate random id for logs and
    spans.

    ``response_id``, ``response_model`` and ``finish_reasons`` are what the stream itself
    reported (the first id and model, every finish reason in order); ``upstream_first_event_at``
    is when its first event arrived (content or not: the GenAI conventions' "first chunk").

    ``cancel_reason`` is one of ``client_disconnect``, ``timeout``, ``stall``, ``interrupt``,
    ``shutdown`` when streamhop closed the upstream early, else ``None``.
    """

    stream_id: str
    route: str
    method: str
    path: str
    received_at: float
    request_id: str = field(default_factory=lambda: secrets.token_hex(8))
    model: str | None = None
    streaming_request: bool = False
    status: int | None = None
    format: str | None = None
    response_id: str | None = None
    response_model: str | None = None
    finish_reasons: tuple[str, ...] = ()
    sse: bool = False
    upstream_request_at: float | None = None
    upstream_connected_at: float | None = None
    upstream_headers_at: float | None = None
    upstream_first_event_at: float | None = None
    upstream_first_content_at: float | None = None
    first_content_sent_at: float | None = None
    first_tool_args_sent_at: float | None = None
    first_answer_sent_at: float | None = None
    """When the first answer text (after any reasoning) was handed to the client."""
    finished_at: float | None = None
    events_in: int = 0
    events_out: int = 0
    writes: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    malformed_events: int = 0
    cancel_reason: str | None = None
    cancel_detected_at: float | None = None
    cancel_latency_s: float | None = None
    error: str | None = None
    usage_input_tokens: int | None = None
    usage_output_tokens: int | None = None
    upstream_bursts: int = 0
    """Upstream bursts the stream saw (a buffering provider or hop; see
    :mod:`streamhop.middleware.observe.bursts`)."""

    def mark_cancel(self, reason: str) -> None:
        """Note why streamhop ends the stream early; the first reason wins (a disconnect seen
        while a deadline fires stays a disconnect), and its time starts the cancel latency."""
        if self.cancel_reason is None:
            self.cancel_reason = reason
            self.cancel_detected_at = time.monotonic()


def observe_end(observed: StreamMetrics, record: StreamRecord) -> None:
    """Record a finished request's per-stream metrics (and copy its burst count into
    ``record``: the span and the log line are made from the record after this)."""
    observed.flush()
    record.upstream_bursts = observed.upstream_bursts
    if record.upstream_request_at is not None:
        observed.request_overhead(record.upstream_request_at - record.received_at)
    if record.first_content_sent_at is not None:
        observed.ttft(record.first_content_sent_at - record.received_at)
    if record.first_answer_sent_at is not None:
        observed.time_to_first_answer_token(record.first_answer_sent_at - record.received_at)
    if record.first_tool_args_sent_at is not None:
        observed.time_to_first_tool_argument(record.first_tool_args_sent_at - record.received_at)
    if record.upstream_first_content_at is not None and record.upstream_request_at is not None:
        observed.upstream_ttft(record.upstream_first_content_at - record.upstream_request_at)
    if record.finished_at is not None:
        observed.duration(record.finished_at - record.received_at)
    if record.cancel_reason is not None:
        observed.cancelled(record.cancel_reason, record.cancel_latency_s)
    if record.error is not None:
        observed.upstream_error(record.error)
    if record.malformed_events:
        observed.upstream_error("malformed_event", record.malformed_events)
    if not record.sse:
        # Non-SSE bodies are copied without a pump: count their bytes here.
        observed.bytes_up.inc(record.bytes_in)
        observed.bytes_down.inc(record.bytes_out)


def request_facts(body: bytes) -> tuple[str | None, bool]:
    """``(model, stream)`` from a request body that is a JSON object (else ``(None, False)``)."""
    if not body or body[:1] != b"{":
        return None, False
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None, False
    if not isinstance(obj, dict):
        return None, False
    model = obj.get("model")
    return (model if isinstance(model, str) else None), obj.get("stream") is True
