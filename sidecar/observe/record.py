"""What streamhop knows about one proxied request, filled in as it goes and logged at the end.

The end of a request (its metrics and its log line) is the middleware's as well:
:mod:`streamhop.middleware.observe.stream_end`; :class:`StreamRecord` is its
:class:`~streamhop.middleware.observe.stream_end.StreamEnd` with the sidecar's own facts.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import orjson

from streamhop.middleware.observe.stream_end import StreamEnd

__all__ = ["StreamRecord", "request_facts"]


@dataclass(slots=True)
class StreamRecord(StreamEnd):
    """Per-request facts (those of :class:`StreamEnd`, and the sidecar's). Times are
    ``time.monotonic()`` seconds; durations are seconds.

    ``stream_id`` is the public id (``X-Streamhop-Stream-Id``, resume): a capability, never
    logged at any level or put in traces. ``request_id`` is a separate random id for logs and
    spans.

    ``response_id``, ``response_model`` and ``finish_reasons`` are what the stream itself
    reported (the first id and model, every finish reason in order); ``upstream_first_event_at``
    is when its first event arrived (content or not: the GenAI conventions' "first chunk").

    ``cancel_reason`` is one of ``CANCEL_REASONS`` (``streamhop.middleware.observe.metrics``)
    when streamhop closed the upstream early, else ``None``.
    """

    stream_id: str
    method: str
    streaming_request: bool = False
    upstream_connected_at: float | None = None
    upstream_headers_at: float | None = None
    cancel_detected_at: float | None = None

    def mark_cancel(self, reason: str) -> None:
        """Note why streamhop ends the stream early; the first reason wins (a disconnect seen
        while a deadline fires stays a disconnect), and its time starts the cancel latency."""
        if self.cancel_reason is None:
            self.cancel_reason = reason
            self.cancel_detected_at = time.monotonic()


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
