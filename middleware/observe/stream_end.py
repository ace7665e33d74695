"""The end of one stream, the same in the sidecar and the middleware: what it did
(:class:`StreamEnd`), the metrics recorded from that (:func:`observe_end`), and its one JSON log
line on the ``streamhop.streams`` logger (:func:`log_end`; the keys are documented in
docs/observability.md, "The stream log line").

The sidecar's record (:class:`~streamhop.sidecar.observe.record.StreamRecord`) is a
:class:`StreamEnd` with the sidecar's own facts added; the middleware fills one per response it
records. The pump's facts go in with one call (:meth:`StreamEnd.take_stats`): their fields have
:class:`~streamhop.middleware.pump_types.PumpStats`'s names.

Where there is no upstream request (the middleware, whose app is called as the request
arrives), ``upstream_request_at`` is ``None``: no ``request`` hop is observed and the upstream
TTFT counts from the request's arrival.

Times are ``time.monotonic()`` seconds; the log line gives durations in milliseconds.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass, field, fields
from typing import Any

import orjson

from streamhop.middleware.observe.metrics import StreamMetrics
from streamhop.middleware.pump_types import PumpStats

stream_logger = logging.getLogger("streamhop.streams")

_STATS_FIELDS = tuple(f.name for f in fields(PumpStats))


@dataclass(slots=True, kw_only=True)
class StreamEnd:
    """What one request did, filled in as it goes; ``None`` means "did not happen".

    ``request_id`` is a random id for logs and spans. ``model`` is the request's ``model`` as
    sent (not mapped through the label allow-list). ``sse``: the response was re-chunked (the
    pump counted its events and bytes). The fields from ``format`` to ``finish_reasons`` are
    the pump's (:meth:`take_stats`). ``cancel_reason`` is the first reason the stream was ended
    early, ``error`` the provider fault (the ``kind`` of ``streamhop_upstream_errors_total``).
    """

    route: str
    path: str
    received_at: float
    request_id: str = field(default_factory=lambda: secrets.token_hex(8))
    model: str | None = None
    status: int | None = None
    sse: bool = False
    upstream_request_at: float | None = None
    finished_at: float | None = None
    format: str | None = None
    events_in: int = 0
    events_out: int = 0
    malformed_events: int = 0
    writes: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    upstream_first_event_at: float | None = None
    upstream_first_content_at: float | None = None
    first_content_sent_at: float | None = None
    first_tool_args_sent_at: float | None = None
    first_answer_sent_at: float | None = None
    """When the first answer text (after any reasoning) was handed to the client."""
    usage_input_tokens: int | None = None
    usage_output_tokens: int | None = None
    response_id: str | None = None
    response_model: str | None = None
    finish_reasons: tuple[str, ...] = ()
    cancel_reason: str | None = None
    cancel_latency_s: float | None = None
    error: str | None = None
    upstream_bursts: int = 0
    """Upstream bursts the stream saw (:mod:`streamhop.middleware.observe.bursts`)."""

    def take_stats(self, stats: PumpStats) -> None:
        """Copy the pump's counters and times (every field of ``stats``) into this record."""
        for name in _STATS_FIELDS:
            setattr(self, name, getattr(stats, name))


def observe_end(observed: StreamMetrics, end: StreamEnd) -> None:
    """Record the metrics of a finished request, and copy its burst count into ``end`` (the log
    line and the span are made from it afterwards).

    Args:
        observed: the stream's bound metric children.
        end: what the request did.
    """
    observed.flush()
    end.upstream_bursts = observed.upstream_bursts
    received = end.received_at
    request_at = end.upstream_request_at
    if request_at is not None:
        observed.request_overhead(request_at - received)
    if end.first_content_sent_at is not None:
        observed.ttft(end.first_content_sent_at - received)
    if end.first_answer_sent_at is not None:
        observed.time_to_first_answer_token(end.first_answer_sent_at - received)
    if end.first_tool_args_sent_at is not None:
        observed.time_to_first_tool_argument(end.first_tool_args_sent_at - received)
    if end.upstream_first_content_at is not None:
        origin = received if request_at is None else request_at
        observed.upstream_ttft(end.upstream_first_content_at - origin)
    if end.finished_at is not None:
        observed.duration(end.finished_at - received)
    if end.cancel_reason is not None:
        observed.cancelled(end.cancel_reason, end.cancel_latency_s)
    if end.error is not None:
        observed.upstream_error(end.error)
    if end.malformed_events:
        observed.upstream_error("malformed_event", end.malformed_events)
    if not end.sse:
        # A body copied without a pump: its bytes are counted here, not per write.
        observed.bytes_up.inc(end.bytes_in)
        observed.bytes_down.inc(end.bytes_out)


def log_end(end: StreamEnd) -> None:
    """Write the request's one JSON log line (INFO on ``streamhop.streams``)."""
    stream_logger.info("%s", orjson.dumps(log_fields(end)).decode())


def log_fields(end: StreamEnd) -> dict[str, Any]:
    """The keys and values of the log line, in their order (times in milliseconds)."""
    received = end.received_at
    upstream_origin = received if end.upstream_request_at is None else end.upstream_request_at
    return {
        "event": "stream_end",
        "request_id": end.request_id,
        "route": end.route,
        "path": end.path,
        "model": end.model,
        "status": end.status,
        "format": end.format,
        "ttft_ms": _ms(received, end.first_content_sent_at),
        "answer_ms": _ms(received, end.first_answer_sent_at),
        "tool_args_ms": _ms(received, end.first_tool_args_sent_at),
        "upstream_ttft_ms": _ms(upstream_origin, end.upstream_first_content_at),
        "duration_ms": _ms(received, end.finished_at),
        "events_in": end.events_in,
        "events_out": end.events_out,
        "bytes_in": end.bytes_in,
        "bytes_out": end.bytes_out,
        "malformed_events": end.malformed_events,
        "cancel_reason": end.cancel_reason,
        "cancel_latency_ms": _ms(0.0, end.cancel_latency_s),
        "error": end.error,
        "response_id": end.response_id,
        "response_model": end.response_model,
        "finish_reasons": list(end.finish_reasons),
        "usage_input_tokens": end.usage_input_tokens,
        "usage_output_tokens": end.usage_output_tokens,
        "upstream_bursts": end.upstream_bursts,
    }


def _ms(start: float | None, end: float | None) -> float | None:
    """``end - start`` in milliseconds, rounded to microseconds; ``None`` if either is."""
    return None if start is None or end is None else round((end - start) * 1000, 3)
