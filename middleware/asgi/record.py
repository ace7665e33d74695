"""What one request through the middleware did: its labels, its cancellation, its metrics and
its log line.

:class:`RequestRecord` is the middleware's counterpart of the sidecar's stream record. The
responder tells it what happens (:meth:`~RequestRecord.cancelled`, ``error_kind``) and, once
the app's task is over, :meth:`~RequestRecord.finish` records the metrics of
:mod:`streamhop.middleware.observe.metrics` and writes one JSON log line per re-chunked stream:
the sidecar's end of a stream (:mod:`streamhop.middleware.observe.stream_end`), where the app is
the upstream. A response passed through untouched and not cancelled records nothing.

Labels: ``route`` is the configured ``route_label``, else the framework's route template from
``scope["route"]`` (Starlette and FastAPI set it while routing, so it is read at
``http.response.start`` or later), else :data:`DEFAULT_ROUTE_LABEL`; never the raw path, whose
cardinality is unbounded. ``model`` is the request body's JSON ``model`` field when it is in the
``models`` allow-list, else ``other`` (the log line's ``model`` is the field as sent, read only
with an allow-list).

Times are ``time.monotonic()`` seconds.
"""

from __future__ import annotations

import time
import weakref
from typing import Final

import orjson
from prometheus_client import CollectorRegistry
from starlette.types import Scope

from streamhop.middleware.asgi.options import MiddlewareOptions
from streamhop.middleware.asgi.receive import ReceiveRelay
from streamhop.middleware.observe.metrics import OTHER_MODEL, Metrics, StreamMetrics
from streamhop.middleware.observe.stream_end import StreamEnd, log_end, observe_end
from streamhop.middleware.pump import PumpStats

DEFAULT_ROUTE_LABEL: Final = "asgi"
"""The ``route`` label when neither ``route_label`` nor a framework route template is known."""
MODEL_PEEK_BYTES: Final = 64 * 1024
"""Request body bytes kept to read the ``model`` field (only with a ``models`` allow-list)."""

# One set of metric families per registry, so several middleware instances (several apps, or a
# rebuilt middleware stack) can share one registry without "Duplicated timeseries".
_FAMILIES: weakref.WeakKeyDictionary[CollectorRegistry, Metrics] = weakref.WeakKeyDictionary()


def families(registry: CollectorRegistry) -> Metrics:
    """The metric families registered in ``registry``, created on first use."""
    metrics = _FAMILIES.get(registry)
    if metrics is None:
        metrics = _FAMILIES[registry] = Metrics(registry)
    return metrics


class RequestRecord:
    """The accounting of one HTTP request.

    Args:
        metrics: the metric families to record in.
        options: the middleware's options (``route_label``, ``models``).
        scope: the request's ASGI scope (read for ``route`` when the labels are needed).
        relay: the request's receive relay (its :attr:`~.ReceiveRelay.peek` gives ``model``).

    Attributes:
        received_at: when the middleware got the request.
        cancel_reason: the first cancellation reason (``client_disconnect``, ``stall``,
            ``shutdown``), or ``None``.
        cancel_latency: seconds from the first cancellation to the app's task being over.
        error_kind: the stream's fault for ``streamhop_upstream_errors_total{kind}``
            (``app_error``, ``event_too_large``, ``truncated``), or ``None``.
    """

    __slots__ = (
        "_cancel_detected_at",
        "_metrics",
        "_observed",
        "_options",
        "_relay",
        "_scope",
        "_status",
        "cancel_latency",
        "cancel_reason",
        "error_kind",
        "received_at",
    )

    def __init__(
        self, metrics: Metrics, options: MiddlewareOptions, scope: Scope, relay: ReceiveRelay
    ) -> None:
        self._metrics = metrics
        self._options = options
        self._scope = scope
        self._relay = relay
        self._observed: StreamMetrics | None = None
        self._cancel_detected_at: float | None = None
        self._status: int | None = None
        self.received_at = time.monotonic()
        self.cancel_reason: str | None = None
        self.cancel_latency: float | None = None
        self.error_kind: str | None = None

    def open_stream(self, status: int | None) -> StreamMetrics:
        """The metric children of the SSE response that starts now with HTTP ``status``
        (counted as active)."""
        options = self._options
        self._status = status
        observed = self._observed = StreamMetrics(
            self._metrics,
            self._route(),
            self._model_label(),
            burst_gap_s=options.burst_gap_ms / 1000.0,
            burst_events=options.burst_events,
        )
        observed.active.inc()
        return observed

    def cancelled(self, reason: str) -> None:
        """The response is stopped for ``reason``; the first reason is the one recorded."""
        if self.cancel_reason is None:
            self.cancel_reason = reason
            self._cancel_detected_at = time.monotonic()

    def app_over(self) -> None:
        """The app's task is over: the cancel latency, if any, ends now."""
        if self._cancel_detected_at is not None:
            self.cancel_latency = time.monotonic() - self._cancel_detected_at

    def finish(self, stats: PumpStats | None) -> None:
        """Record the request's metrics and, for a re-chunked stream, write its log line
        (:func:`~streamhop.middleware.observe.stream_end.observe_end`,
        :func:`~streamhop.middleware.observe.stream_end.log_end`).

        Args:
            stats: the pump's counters of an SSE response; ``None`` for any other response
                (only its cancellation, if any, is recorded).
        """
        observed = self._observed
        reason = self.cancel_reason
        if observed is None and reason is None:
            return  # a response passed through untouched and not cancelled: nothing to record
        if observed is None:
            observed = StreamMetrics(self._metrics, self._route(), self._model_label())
        end = StreamEnd(
            route=observed.route,
            path=str(self._scope.get("path", "")),
            received_at=self.received_at,
            model=self._model(),
            status=self._status,
            cancel_reason=reason,
            cancel_latency_s=self.cancel_latency,
            error=self.error_kind,
        )
        if stats is not None:
            observed.active.dec()
            end.sse = True
            end.finished_at = time.monotonic()
            end.take_stats(stats)
        observe_end(observed, end)
        if stats is not None:
            log_end(end)

    def _route(self) -> str:
        label = self._options.route_label
        if label is not None:
            return label
        path = getattr(self._scope.get("route"), "path", None)
        return path if isinstance(path, str) and path else DEFAULT_ROUTE_LABEL

    def _model(self) -> str | None:
        """The request body's JSON ``model`` (the body is peeked only with an allow-list)."""
        peek = self._relay.peek
        if not peek or peek[:1] != b"{":
            return None
        try:
            obj = orjson.loads(peek)
        except orjson.JSONDecodeError:
            return None
        model = obj.get("model") if isinstance(obj, dict) else None
        return model if isinstance(model, str) else None

    def _model_label(self) -> str:
        model = self._model()
        return model if model is not None and model in self._options.models else OTHER_MODEL
