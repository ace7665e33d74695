"""OpenTelemetry tracing of proxied requests (off unless ``[tracing] otlp_endpoint`` is set), and
the GenAI metrics with ``export_metrics`` (:mod:`.genai_metrics`).

Each request gives two spans and a third for the connection, following the OpenTelemetry
semantic conventions for HTTP (stable: https://opentelemetry.io/docs/specs/semconv/http/http-spans/)
and for generative AI (status Development, in the ``open-telemetry/semantic-conventions-genai``
repository: ``docs/gen-ai/gen-ai-spans.md`` "Inference" and "Embeddings",
``docs/gen-ai/client-inference.md`` "Span: gen_ai.client.inference"):

* the downstream hop, a ``SERVER`` span named ``{http.request.method} {http.route}`` (the matched
  route's ``prefix`` is the route), continuing the client's W3C ``traceparent``, with
  ``http.request.method``, ``url.scheme``, ``url.path``, ``http.route``, ``server.address`` /
  ``server.port`` (from the ``Host`` header), ``user_agent.original``,
  ``http.response.status_code``, ``error.type``; streamhop's own ``streamhop.*`` (route, request
  id, format, events and bytes in/out, overhead, cancel reason); span events
  ``streamhop.upstream.first_token`` (first content event from the provider) and
  ``streamhop.downstream.first_write`` (first content written to the client);
* the upstream call, a ``CLIENT`` child named ``{gen_ai.operation.name} {gen_ai.request.model}``
  ("Span name SHOULD be ..." of both documents; ``{http.request.method}`` for a request that is no
  GenAI call), from sending the upstream request to the end of the upstream body; its context is
  what the provider receives in ``traceparent``. At creation (the conventions ask these "at span
  creation time" for sampling): ``gen_ai.operation.name``, ``gen_ai.provider.name`` (as each
  stream format names it, or from a well-known upstream host), ``gen_ai.request.model``,
  ``gen_ai.request.stream`` ("if and only if the request is streaming"), ``server.address`` /
  ``server.port`` (the provider's, from the route's ``upstream``), ``http.request.method``. At the
  end: ``gen_ai.response.id``, ``gen_ai.response.model``, ``gen_ai.response.finish_reasons``
  (what the stream itself reported, read from its boundary events only),
  ``gen_ai.usage.input_tokens`` / ``gen_ai.usage.output_tokens``,
  ``gen_ai.response.time_to_first_chunk`` (seconds from the upstream request to the first event
  of the response stream), ``http.response.status_code``, ``error.type``;
* ``upstream.connect``, an ``INTERNAL`` child of the upstream call, covering the wait for a
  (pooled or new) connection.

Deliberate choices: ``url.full`` is not set on the upstream span (its query may carry a key, and
the route's ``upstream`` plus ``url.path`` say the same); a request streamhop ends early because
its client left is not an error of either span (``streamhop.cancel_reason`` says why); an
upstream fault (``truncated``, ``read_timeout``, ...) is ``error.type`` on both spans, an HTTP
error status from the provider on the upstream span (4xx and 5xx) and, as the client gets it
too, on the server span (5xx only, as the HTTP conventions say for servers).

Times in streamhop's records are ``time.monotonic()`` seconds; spans need Unix nanoseconds, so each
request converts with one offset taken when it starts.

With tracing off, the proxy holds ``None`` instead of a :class:`Tracing` and does no work at all.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from functools import lru_cache
from typing import Final
from urllib.parse import urlsplit

from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

from streamhop.middleware.rechunk.formats import operation_for_path, provider_for
from streamhop.sidecar.config import RouteConfig, TracingConfig
from streamhop.sidecar.observe.genai_metrics import GenAIMetrics
from streamhop.sidecar.observe.record import StreamRecord

_PROPAGATOR: Final = TraceContextTextMapPropagator()
# Well-known gen_ai.provider.name values (gen-ai-spans.md lists them; cerebras is not among them
# and is a custom value, as the conventions allow).
_PROVIDER_HOSTS: Final = {
    "api.openai.com": "openai",
    "api.anthropic.com": "anthropic",
    "api.groq.com": "groq",
    "api.cerebras.ai": "cerebras",
    "api.mistral.ai": "mistral_ai",
    "api.deepseek.com": "deepseek",
    "api.x.ai": "x_ai",
    "api.perplexity.ai": "perplexity",
}
# The HTTP conventions' known methods; any other is reported as _OTHER.
_HTTP_METHODS: Final = frozenset(
    ("CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE")
)
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
# Statuses streamhop itself answers when the provider gave none (sidecar/upstream/driver.py).
_REFUSAL_STATUS: Final = {"connect": 502, "headers_timeout": 504}

Attributes = dict[str, AttributeValue]


def operation_name(path: str) -> str | None:
    """``gen_ai.operation.name`` for an API path (asked of each stream format), ``None`` for
    other requests."""
    return operation_for_path(path)


def provider_name(route: RouteConfig, path: str) -> str | None:
    """``gen_ai.provider.name``: from the upstream host when well known, else from the route's
    format, else from the format whose API the path calls; ``None`` when none names one."""
    host = urlsplit(route.upstream).hostname or ""
    known = _PROVIDER_HOSTS.get(host)
    if known is not None:
        return known
    return provider_for(route.format, path)


@lru_cache(maxsize=256)
def upstream_address(upstream: str) -> tuple[str | None, int | None]:
    """``server.address`` and ``server.port`` of a route's ``upstream`` URL (the scheme's default
    port when the URL names none)."""
    parts = urlsplit(upstream)
    try:
        port = parts.port
    except ValueError:
        port = None
    return parts.hostname, port if port is not None else _DEFAULT_PORTS.get(parts.scheme)


def _host_header(value: str) -> tuple[str | None, int | None]:
    """``server.address`` and ``server.port`` from a ``Host`` header (port ``None`` if absent)."""
    try:
        parts = urlsplit("//" + value)
        return parts.hostname, parts.port
    except ValueError:
        return None, None


class Tracing:
    """Creates the spans of each request with one ``TracerProvider`` and, when given a
    ``MeterProvider``, records the GenAI metrics of each request.

    Args:
        provider: where spans go (tests pass one with an in-memory exporter).
        meter_provider: where the GenAI metrics go; ``None``: no metrics.
    """

    def __init__(
        self, provider: TracerProvider, meter_provider: MeterProvider | None = None
    ) -> None:
        self.provider = provider
        self.tracer = provider.get_tracer("streamhop")
        self.meter_provider = meter_provider
        self.metrics = (
            None if meter_provider is None else GenAIMetrics(meter_provider.get_meter("streamhop"))
        )

    @classmethod
    def from_config(cls, config: TracingConfig) -> Tracing | None:
        """OTLP/HTTP export to ``otlp_endpoint`` (``/v1/traces`` appended; with
        ``export_metrics``, metrics to ``/v1/metrics`` too), or ``None`` if unset."""
        if not config.otlp_endpoint:
            return None
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        resource = Resource.create({"service.name": config.service_name})
        provider = TracerProvider(resource=resource)
        base = config.otlp_endpoint.rstrip("/")
        provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=base + "/v1/traces"))
        )
        meter_provider = None
        if config.export_metrics:
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
            from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

            reader = PeriodicExportingMetricReader(
                OTLPMetricExporter(endpoint=base + "/v1/metrics")
            )
            meter_provider = MeterProvider(resource=resource, metric_readers=[reader])
        return cls(provider, meter_provider)

    def shutdown(self) -> None:
        """Flush pending spans and metrics and stop exporting."""
        self.provider.shutdown()
        if self.meter_provider is not None:
            self.meter_provider.shutdown()

    def start(
        self, record: StreamRecord, route: RouteConfig, request_headers: list[tuple[bytes, bytes]]
    ) -> RequestTrace:
        """Start the server span of a request (continuing the client's ``traceparent``)."""
        return RequestTrace(self.tracer, record, route, request_headers, self.metrics)


class RequestTrace:
    """The spans of one request; :meth:`upstream_headers` before the upstream request,
    :meth:`finish` once the request is over."""

    def __init__(
        self,
        tracer: trace.Tracer,
        record: StreamRecord,
        route: RouteConfig,
        request_headers: list[tuple[bytes, bytes]],
        metrics: GenAIMetrics | None = None,
    ) -> None:
        self._tracer = tracer
        self._metrics = metrics
        self._route = route
        # Unix ns = monotonic s * 1e9 + offset, fixed for this request.
        self._offset = time.time_ns() - time.monotonic_ns()
        carrier: dict[str, str] = {}
        host: str | None = None
        user_agent: str | None = None
        for header, value in request_headers:
            if header in (b"traceparent", b"tracestate"):
                carrier[header.decode()] = value.decode("latin-1")
            elif header == b"host":
                host = value.decode("latin-1")
            elif header == b"user-agent":
                user_agent = value.decode("latin-1")
        parent = _PROPAGATOR.extract(carrier)
        self.operation = operation_name(record.path)
        method = record.method if record.method in _HTTP_METHODS else "_OTHER"
        self._method = method
        attributes: Attributes = {
            "http.request.method": method,
            "url.scheme": "http",  # the proxy listener speaks plain HTTP
            "url.path": record.path,
            "http.route": route.prefix,
            "streamhop.route": route.prefix,
            "streamhop.request_id": record.request_id,
        }
        if method == "_OTHER":
            attributes["http.request.method_original"] = record.method
        if host is not None:
            address, port = _host_header(host)
            if address is not None:
                attributes["server.address"] = address
                if port is not None:
                    attributes["server.port"] = port
        if user_agent is not None:
            attributes["user_agent.original"] = user_agent
        self.server: Span = tracer.start_span(
            f"{'HTTP' if method == '_OTHER' else method} {route.prefix}",
            context=parent,
            kind=SpanKind.SERVER,
            start_time=self._ns(record.received_at),
            attributes=attributes,
        )
        self.upstream: Span | None = None
        self.call: Attributes = {}
        """The GenAI attributes of the upstream call known before it starts (empty for a request
        that is no GenAI call): the common attributes of its metrics too."""

    def _ns(self, monotonic_s: float) -> int:
        return int(monotonic_s * 1e9) + self._offset

    def upstream_headers(self, record: StreamRecord) -> Mapping[str, str]:
        """Start the upstream call's span; return the ``traceparent`` (and ``tracestate``) to
        send."""
        attributes: Attributes = {"http.request.method": self._method}
        address, port = upstream_address(self._route.upstream)
        name = "HTTP" if self._method == "_OTHER" else self._method
        operation = self.operation
        if operation is not None:
            call: Attributes = {"gen_ai.operation.name": operation}
            provider = provider_name(self._route, record.path)
            if provider is not None:
                call["gen_ai.provider.name"] = provider
            name = operation
            if record.model is not None:
                call["gen_ai.request.model"] = record.model
                name = f"{operation} {record.model}"
            if address is not None:
                call["server.address"] = address
                if port is not None:
                    call["server.port"] = port
            self.call = call
            attributes.update(call)
            if record.streaming_request:
                attributes["gen_ai.request.stream"] = True
        elif address is not None:
            attributes["server.address"] = address
            if port is not None:
                attributes["server.port"] = port
        self.upstream = self._tracer.start_span(
            name,
            context=trace.set_span_in_context(self.server),
            kind=SpanKind.CLIENT,
            attributes=attributes,
        )
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(self.upstream))
        return carrier

    def finish(self, record: StreamRecord) -> None:
        """End every span with what the record says happened, and record the GenAI metrics."""
        server = self.server
        upstream = self.upstream
        ns = self._ns
        end = ns(record.finished_at if record.finished_at is not None else time.monotonic())
        if record.upstream_request_at is not None and record.upstream_connected_at is not None:
            connect = self._tracer.start_span(
                "upstream.connect",
                context=trace.set_span_in_context(upstream if upstream is not None else server),
                kind=SpanKind.INTERNAL,
                start_time=ns(record.upstream_request_at),
            )
            connect.end(end_time=ns(record.upstream_connected_at))
        if record.upstream_first_content_at is not None:
            server.add_event(
                "streamhop.upstream.first_token", timestamp=ns(record.upstream_first_content_at)
            )
        if record.first_content_sent_at is not None:
            server.add_event(
                "streamhop.downstream.first_write", timestamp=ns(record.first_content_sent_at)
            )
        status = record.status
        attributes: Attributes = {
            "streamhop.sse": record.sse,
            "streamhop.events_in": record.events_in,
            "streamhop.events_out": record.events_out,
            "streamhop.bytes_in": record.bytes_in,
            "streamhop.bytes_out": record.bytes_out,
        }
        answered = status if status is not None else _REFUSAL_STATUS.get(record.error or "")
        if answered is not None:
            attributes["http.response.status_code"] = answered
        if record.format is not None:
            attributes["streamhop.format"] = record.format
        if record.upstream_request_at is not None:
            attributes["streamhop.overhead.request_ms"] = (
                record.upstream_request_at - record.received_at
            ) * 1000
        if record.cancel_reason is not None:
            attributes["streamhop.cancel_reason"] = record.cancel_reason
        if record.cancel_latency_s is not None:
            attributes["streamhop.cancel_latency_ms"] = record.cancel_latency_s * 1000
        if record.error is not None:
            attributes["error.type"] = record.error
            server.set_status(Status(StatusCode.ERROR, record.error))
        elif answered is not None and answered >= 500:
            attributes["error.type"] = str(answered)
            server.set_status(Status(StatusCode.ERROR))
        server.set_attributes(attributes)
        upstream_error = record.error
        if upstream_error is None and status is not None and status >= 400:
            upstream_error = str(status)
        # Metrics first: whoever sees the spans ended may read them.
        if self._metrics is not None and self.call:
            self._metrics.record(record, self.call, upstream_error)
        if upstream is not None:
            upstream.set_attributes(self._call_end(record, upstream_error))
            if upstream_error is not None:
                upstream.set_status(Status(StatusCode.ERROR, upstream_error))
            upstream.end(end_time=end)
        server.end(end_time=end)

    def _call_end(self, record: StreamRecord, error: str | None) -> Attributes:
        """The upstream call's attributes known at its end."""
        attributes: Attributes = {}
        if record.status is not None:
            attributes["http.response.status_code"] = record.status
        if error is not None:
            attributes["error.type"] = error
        if record.upstream_bursts:
            attributes["streamhop.upstream.bursts"] = record.upstream_bursts
        if not self.call:
            return attributes
        if record.response_id is not None:
            attributes["gen_ai.response.id"] = record.response_id
        if record.response_model is not None:
            attributes["gen_ai.response.model"] = record.response_model
        if record.finish_reasons:
            attributes["gen_ai.response.finish_reasons"] = record.finish_reasons
        if record.usage_input_tokens is not None:
            attributes["gen_ai.usage.input_tokens"] = record.usage_input_tokens
        if record.usage_output_tokens is not None:
            attributes["gen_ai.usage.output_tokens"] = record.usage_output_tokens
        first = record.upstream_first_event_at
        if first is not None and record.upstream_request_at is not None:
            attributes["gen_ai.response.time_to_first_chunk"] = first - record.upstream_request_at
        return attributes
