"""Prometheus metrics of streamhop, shared by the sidecar and the middleware.

Names, types and labels are those of DESIGN.md ("Metrics"). Every metric carries ``route``;
stream metrics also carry ``model``, taken from the request and mapped through an allow-list
(anything else is ``other``) so a client cannot grow label cardinality without bound.

Buckets resolve what matters for fast providers: proxy overhead from 10 us, a 5 ms event cadence
(1 ms steps up to 10 ms, then 2.5 ms), upstream gaps from 0.5 ms to 10 s, and TTFT from 5 ms to
30 s. Per-stream label children are bound once (:meth:`Metrics.stream`), so the per-event path
does no label lookups. Each stream also runs a :class:`~.bursts.BurstDetector` on its upstream
reads (``streamhop_upstream_bursts_total``).

All durations are seconds, sizes bytes (Prometheus base units).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from streamhop.middleware.observe.batched import BatchedHistogram
from streamhop.middleware.observe.bursts import DEFAULT_GAP_S, DEFAULT_MIN_EVENTS, BurstDetector
from streamhop.middleware.observe.sampled import SampledGauge

OVERHEAD_BUCKETS: Final = (
    1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 0.1,
)  # fmt: skip
CADENCE_BUCKETS: Final = (
    0.001, 0.002, 0.003, 0.004, 0.005, 0.006, 0.007, 0.008, 0.009, 0.01, 0.0125, 0.015, 0.0175,
    0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip
TTFT_BUCKETS: Final = (
    0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75,
    1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0,
)  # fmt: skip
GAP_BUCKETS: Final = (
    0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
DURATION_BUCKETS: Final = (
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0,
)  # fmt: skip
CANCEL_REASONS: Final = (
    "client_disconnect", "timeout", "stall", "interrupt", "shutdown", "stop", "grace_expired",
)  # fmt: skip
HOPS: Final = ("request", "event", "flush")
WEBSOCKET_REFUSED_REASONS: Final = ("max_websockets",)
UPSTREAM_ERROR_KINDS: Final = (
    "connect",
    "headers_timeout",
    "disconnected",
    "truncated",
    "incomplete",
    "read_timeout",
    "event_too_large",
    "malformed_event",
)
"""The ``kind`` label values of ``streamhop_upstream_errors_total``."""
OTHER_MODEL: Final = "other"
COUNTER_FLUSH_S: Final = 0.1
"""Longest a stream holds its event and byte counts before adding them to the counters (each
``inc`` takes a lock: per read and per write they cost more than the rest of the metrics). A
scrape sees a running stream's counts at most this late; a finished stream's are all in."""


class Metrics:
    """The metric families, registered in ``registry``.

    Args:
        registry: where to register (a fresh ``CollectorRegistry`` per app keeps tests and
            several apps in one process apart). Default: a new registry.
        models: model names kept as the ``model`` label; others become ``other``.
        burst_gap_s: silence before a burst, seconds (:class:`~.bursts.BurstDetector`).
        burst_events: events within 1 ms after that silence that make a burst.

    Raises:
        ValueError: ``burst_gap_s`` is not above 1 ms, or ``burst_events`` is below 2.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        models: Iterable[str] = (),
        *,
        burst_gap_s: float = DEFAULT_GAP_S,
        burst_events: int = DEFAULT_MIN_EVENTS,
    ) -> None:
        BurstDetector(burst_gap_s, burst_events)  # validates them once, here
        self.registry = registry if registry is not None else CollectorRegistry()
        self.models = frozenset(models)
        self.burst_gap_s = burst_gap_s
        self.burst_events = burst_events
        self._seen: set[tuple[str, str]] = set()
        self._children: dict[tuple[str, str], tuple[Any, ...]] = {}
        r = self.registry
        rm = ("route", "model")
        self.ttft = Histogram(
            "streamhop_time_to_first_token_seconds",
            "Request received by streamhop to first content byte handed to the client.",
            rm,
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.upstream_ttft = Histogram(
            "streamhop_upstream_time_to_first_token_seconds",
            "Upstream request sent to first upstream content event (text, reasoning, tool call).",
            rm,
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.tool_args = Histogram(
            "streamhop_time_to_first_tool_argument_seconds",
            "Request received by streamhop to the first tool-call argument byte handed to the "
            "client (streams that call a tool).",
            rm,
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.answer = Histogram(
            "streamhop_time_to_first_answer_token_seconds",
            "Request received by streamhop to the first answer text handed to the client "
            "(after any reasoning or thinking: the TTFT a reasoning model's user sees).",
            rm,
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.inter_chunk = Histogram(
            "streamhop_inter_chunk_seconds",
            "Gap between consecutive downstream writes of one stream.",
            rm,
            buckets=CADENCE_BUCKETS,
            registry=r,
        )
        self.overhead = Histogram(
            "streamhop_proxy_overhead_seconds",
            "Time spent inside streamhop per hop: request (received to upstream request sent), "
            "event (decode and merge one upstream read), flush (encode and hand over one write).",
            ("route", "model", "hop"),
            buckets=OVERHEAD_BUCKETS,
            registry=r,
        )
        self.duration = Histogram(
            "streamhop_stream_duration_seconds",
            "Request received to response finished.",
            rm,
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.active = Gauge(  # livesum: workers > 1 write files a supervisor adds up
            "streamhop_streams_active", "Requests in flight.", ("route",), registry=r,
            multiprocess_mode="livesum",
        )  # fmt: skip
        self.events = Counter(
            "streamhop_events_total",
            "SSE events: upstream (received) and downstream (sent after re-chunking).",
            ("route", "model", "direction"),
            registry=r,
        )
        self.bytes = Counter(
            "streamhop_bytes_total",
            "Response body bytes: upstream (received) and downstream (sent).",
            ("route", "model", "direction"),
            registry=r,
        )
        self.cancellations = Counter(
            "streamhop_cancellations_total",
            "Upstream requests closed early by streamhop, by reason.",
            ("route", "model", "reason"),
            registry=r,
        )
        self.cancel_latency = Histogram(
            "streamhop_cancel_latency_seconds",
            "Cancellation detected (disconnect, deadline, stall) to upstream connection closed.",
            rm,
            buckets=OVERHEAD_BUCKETS,
            registry=r,
        )
        self.upstream_errors = Counter(
            "streamhop_upstream_errors_total",
            "Provider faults by kind (connect, headers_timeout, disconnected, truncated, "
            "incomplete, read_timeout, event_too_large, malformed_event).",
            ("route", "model", "kind"),
            registry=r,
        )
        self.upstream_inter_event = Histogram(
            "streamhop_upstream_inter_event_seconds",
            "Gap between upstream events of one stream: once per read that completes events, "
            "the time since the previous such read.",
            rm,
            buckets=GAP_BUCKETS,
            registry=r,
        )
        self.upstream_bursts = Counter(
            "streamhop_upstream_bursts_total",
            "Upstream bursts: a gap of at least burst_gap_ms without events, then at least "
            "burst_events events in one run of reads with no gap between them (a provider or a "
            "hop before it buffers).",
            rm,
            registry=r,
        )
        self.resume_errors = Counter(
            "streamhop_resume_errors_total",
            "Resume log failures by store (memory, redis) and kind (write, read, log_full, "
            "stop_forged: an unsigned or forged stop message on the Redis channel, dropped).",
            ("store", "kind"),
            registry=r,
        )
        self.resume_evictions = Counter(
            "streamhop_resume_evictions_total",
            "Resume logs the memory store dropped before window_s to stay within its bounds, "
            "by reason (max_total_bytes, max_streams).",
            ("reason",),
            registry=r,
        )
        self.resume_memory_bytes = SampledGauge(
            "streamhop_resume_memory_bytes",
            "Encoded event bytes the memory resume store holds (at most max_total_bytes).",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.websockets_open = SampledGauge(
            "streamhop_websockets_open",
            "WebSocket connections open (what max_websockets counts), idle or not.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.websocket_refused = Counter(
            "streamhop_websocket_refused_total",
            "WebSocket handshakes refused with 503, by reason (max_websockets).",
            ("reason",),
            registry=r,
        )
        for reason in WEBSOCKET_REFUSED_REASONS:
            self.websocket_refused.labels(reason)  # the series start at 0

    def model_label(self, model: str | None) -> str:
        """The ``model`` label for a request's model name."""
        return model if model is not None and model in self.models else OTHER_MODEL

    def children(self, route: str, model: str) -> tuple[Any, ...]:
        """The label children one stream uses, bound once per ``(route, model)`` (``model``
        already mapped): ``labels()`` takes a lock and builds a key each call, ten per stream.

        Bound on a route's first request, so the upstream inter-event and burst series exist
        (at 0) from then on.
        """
        key = (route, model)
        bound = self._children.get(key)
        if bound is None:
            bound = self._children[key] = (
                self.active.labels(route),
                self.events.labels(route, model, "upstream"),
                self.events.labels(route, model, "downstream"),
                self.bytes.labels(route, model, "upstream"),
                self.bytes.labels(route, model, "downstream"),
                self.inter_chunk.labels(route, model),
                self.overhead.labels(route, model, "event"),
                self.overhead.labels(route, model, "flush"),
                self.upstream_inter_event.labels(route, model),
                self.upstream_bursts.labels(route, model),
            )
        return bound

    def stream(self, route: str, model: str | None) -> StreamMetrics:
        """Label children bound for one stream (cheap to call per request).

        The first stream of a ``(route, model)`` also creates its cancellation and error series
        at 0, so dashboards show 0 rather than "no data" until the first one happens.
        """
        label = self.model_label(model)
        key = (route, label)
        if key not in self._seen:
            self._seen.add(key)
            for reason in CANCEL_REASONS:
                self.cancellations.labels(route, label, reason)
            for kind in UPSTREAM_ERROR_KINDS:
                self.upstream_errors.labels(route, label, kind)
        return StreamMetrics(self, route, label)


class StreamMetrics:
    """One stream's bound metric children; every method is a few attribute calls.

    Args:
        metrics: the families.
        route, model: the labels (``model`` already mapped, see :meth:`Metrics.model_label`).
        started_at: ``time.monotonic()`` when the stream started (default: now); the burst
            detector measures the wait for the first upstream events from it.
        burst_gap_s, burst_events: this stream's burst thresholds (``None``: the families'
            ``burst_gap_s`` / ``burst_events``).
    """

    __slots__ = (
        "active",
        "bursts",
        "bytes_down",
        "bytes_up",
        "detector",
        "events_down",
        "events_up",
        "flushed_at",
        "inter_chunk",
        "inter_event",
        "last_write",
        "metrics",
        "model",
        "overhead_event",
        "overhead_flush",
        "pending_bytes_down",
        "pending_bytes_up",
        "pending_events_down",
        "pending_events_up",
        "route",
    )

    def __init__(
        self,
        metrics: Metrics,
        route: str,
        model: str,
        *,
        started_at: float | None = None,
        burst_gap_s: float | None = None,
        burst_events: int | None = None,
    ) -> None:
        self.metrics = metrics
        self.route = route
        self.model = model
        (
            self.active,
            self.events_up,
            self.events_down,
            self.bytes_up,
            self.bytes_down,
            self.inter_chunk,
            self.overhead_event,
            self.overhead_flush,
            self.inter_event,
            self.bursts,
        ) = metrics.children(route, model)
        # Observed per read or per write: counted locally, added at each flush.
        self.inter_chunk = BatchedHistogram(self.inter_chunk)
        self.overhead_event = BatchedHistogram(self.overhead_event)
        self.overhead_flush = BatchedHistogram(self.overhead_flush)
        self.inter_event = BatchedHistogram(self.inter_event)
        started = time.monotonic() if started_at is None else started_at
        self.detector = BurstDetector(
            metrics.burst_gap_s if burst_gap_s is None else burst_gap_s,
            metrics.burst_events if burst_events is None else burst_events,
            started_at=started,
        )
        self.last_write: float | None = None
        self.pending_events_up = 0
        self.pending_bytes_up = 0
        self.pending_events_down = 0
        self.pending_bytes_down = 0
        self.flushed_at = started

    def upstream_read(self, events: int, size: int, seconds: float, at: float) -> None:
        """One upstream read: ``events`` decoded, ``size`` bytes, ``seconds`` spent on it,
        read at ``at`` (``time.monotonic()``).

        The counters and histograms are added to at most every :data:`COUNTER_FLUSH_S` (at a
        write) and at :meth:`flush`, not per read: a Prometheus ``inc`` or ``observe`` takes a
        lock, and a fast stream reads hundreds of times a second
        (:class:`~.batched.BatchedHistogram`). A read that
        completes events feeds the burst detector: one gap observation, and a burst counted at
        once (rare, and a dashboard should see it while a long stream still runs).
        """
        self.pending_events_up += events
        self.pending_bytes_up += size
        self.overhead_event.observe(seconds)
        if events:
            detector = self.detector
            if detector.arrival(events, at):
                self.bursts.inc()
            gap = detector.last_gap_s
            if gap is not None:
                self.inter_event.observe(gap)

    @property
    def upstream_bursts(self) -> int:
        """Bursts seen on this stream so far."""
        return self.detector.bursts

    def flush(self) -> None:
        """Add the event and byte counts and the histogram observations gathered since the last
        flush (called at the stream's end, and by :meth:`downstream_write` every
        :data:`COUNTER_FLUSH_S`)."""
        self.overhead_event.flush()
        self.inter_event.flush()
        self.inter_chunk.flush()
        self.overhead_flush.flush()
        if self.pending_events_up:
            self.events_up.inc(self.pending_events_up)
            self.pending_events_up = 0
        if self.pending_bytes_up:
            self.bytes_up.inc(self.pending_bytes_up)
            self.pending_bytes_up = 0
        if self.pending_events_down:
            self.events_down.inc(self.pending_events_down)
            self.pending_events_down = 0
        if self.pending_bytes_down:
            self.bytes_down.inc(self.pending_bytes_down)
            self.pending_bytes_down = 0

    def downstream_write(self, events: int, size: int, start: float, end: float) -> None:
        """One downstream write of ``events`` events and ``size`` bytes, from ``start`` to
        ``end`` (monotonic seconds)."""
        self.pending_events_down += events
        self.pending_bytes_down += size
        if start - self.flushed_at >= COUNTER_FLUSH_S:
            self.flushed_at = start
            self.flush()
        if self.last_write is not None:
            self.inter_chunk.observe(start - self.last_write)
        self.last_write = start

    def flush_overhead(self, seconds: float) -> None:
        self.overhead_flush.observe(seconds)

    def request_overhead(self, seconds: float) -> None:
        self.metrics.overhead.labels(self.route, self.model, "request").observe(seconds)

    def ttft(self, seconds: float) -> None:
        self.metrics.ttft.labels(self.route, self.model).observe(seconds)

    def upstream_ttft(self, seconds: float) -> None:
        self.metrics.upstream_ttft.labels(self.route, self.model).observe(seconds)

    def time_to_first_answer_token(self, seconds: float) -> None:
        self.metrics.answer.labels(self.route, self.model).observe(seconds)

    def time_to_first_tool_argument(self, seconds: float) -> None:
        self.metrics.tool_args.labels(self.route, self.model).observe(seconds)

    def duration(self, seconds: float) -> None:
        self.metrics.duration.labels(self.route, self.model).observe(seconds)

    def cancelled(self, reason: str, latency: float | None) -> None:
        self.metrics.cancellations.labels(self.route, self.model, reason).inc()
        if latency is not None:
            self.metrics.cancel_latency.labels(self.route, self.model).observe(latency)

    def upstream_error(self, kind: str, count: int = 1) -> None:
        self.metrics.upstream_errors.labels(self.route, self.model, kind).inc(count)
