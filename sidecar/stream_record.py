"""What streamhop knows about one proxied request, filled in as it goes and logged at the end."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class StreamRecord:
    """Per-request facts. Times are ``time.monotonic()`` seconds; durations are seconds.

    ``cancel_reason`` is one of ``client_disconnect``, ``timeout``, ``stall``, ``interrupt``,
    ``shutdown`` when streamhop closed the upstream early, else ``None``.
    """

    stream_id: str
    route: str
    method: str
    path: str
    received_at: float
    model: str | None = None
    streaming_request: bool = False
    status: int | None = None
    format: str | None = None
    sse: bool = False
    upstream_request_at: float | None = None
    upstream_connected_at: float | None = None
    upstream_headers_at: float | None = None
    upstream_first_content_at: float | None = None
    first_content_sent_at: float | None = None
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
