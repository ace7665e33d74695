"""OpenTelemetry tracing of proxied requests (off unless ``[tracing] otlp_endpoint`` is set).

Per request, following the OpenTelemetry semantic conventions for generative AI
(https://opentelemetry.io/docs/specs/semconv/gen-ai/gen-ai-spans/) and HTTP:

* a ``SERVER`` span named ``{gen_ai.operation.name} {gen_ai.request.model}`` (``{method} {path}``
  for requests that are not GenAI calls), continuing the client's W3C ``traceparent``;
* a ``CLIENT`` child span ``upstream.request`` from sending the upstream request to the end of the
  upstream body; its context is what the provider receives in ``traceparent``;
* a child span ``upstream.connect`` covering the wait for a (pooled or new) connection;
* span events ``streamhop.upstream.first_token`` (first content event from the provider) and
  ``streamhop.downstream.first_write`` (first content written to the client);
* attributes ``gen_ai.operation.name`` and ``gen_ai.provider.name`` (as each stream format names
  them, see :mod:`streamhop.middleware.rechunk.formats`), ``gen_ai.request.model``,
  ``gen_ai.usage.input_tokens`` / ``gen_ai.usage.output_tokens`` (when the stream reports usage),
  HTTP ones, and streamhop's own ``streamhop.*`` (events and bytes in/out, overhead, cancel
  reason).

Times in streamhop's records are ``time.monotonic()`` seconds; spans need Unix nanoseconds, so each
request converts with one offset taken when it starts.

With tracing off, the proxy holds ``None`` instead of a :class:`Tracing` and does no work at all.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Final
from urllib.parse import urlsplit

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from streamhop.middleware.rechunk.formats import operation_for_path, provider_for
from streamhop.sidecar.config import RouteConfig, TracingConfig
from streamhop.sidecar.observe.record import StreamRecord

_PROPAGATOR: Final = TraceContextTextMapPropagator()
_PROVIDER_HOSTS: Final = {
    "api.openai.com": "openai",
    "api.anthropic.com": "anthropic",
    "api.groq.com": "groq",
    "api.cerebras.ai": "cerebras",
    "api.mistral.ai": "mistral_ai",
    "api.deepseek.com": "deepseek",
}


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


class Tracing:
    """Creates the spans of each request with one ``TracerProvider``.

    Args:
        provider: where spans go (tests pass one with an in-memory exporter).
    """

    def __init__(self, provider: TracerProvider) -> None:
        self.provider = provider
        self.tracer = provider.get_tracer("streamhop")

    @classmethod
    def from_config(cls, config: TracingConfig) -> Tracing | None:
        """OTLP/HTTP export to ``otlp_endpoint`` (``/v1/traces`` appended), or ``None`` if unset."""
        if not config.otlp_endpoint:
            return None
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider = TracerProvider(resource=Resource.create({"service.name": config.service_name}))
        endpoint = config.otlp_endpoint.rstrip("/") + "/v1/traces"
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
        return cls(provider)

    def shutdown(self) -> None:
        """Flush pending spans and stop exporting."""
        self.provider.shutdown()

    def start(
        self, record: StreamRecord, route: RouteConfig, request_headers: list[tuple[bytes, bytes]]
    ) -> RequestTrace:
        """Start the server span of a request (continuing the client's ``traceparent``)."""
        return RequestTrace(self.tracer, record, route, request_headers)


class RequestTrace:
    """The spans of one request; :meth:`upstream_headers` before the upstream request,
    :meth:`finish` once the request is over."""

    def __init__(
        self,
        tracer: trace.Tracer,
        record: StreamRecord,
        route: RouteConfig,
        request_headers: list[tuple[bytes, bytes]],
    ) -> None:
        self._tracer = tracer
        # Unix ns = monotonic s * 1e9 + offset, fixed for this request.
        self._offset = time.time_ns() - time.monotonic_ns()
        carrier: dict[str, str] = {}
        for header, value in request_headers:
            if header in (b"traceparent", b"tracestate"):
                carrier[header.decode()] = value.decode("latin-1")
        parent = _PROPAGATOR.extract(carrier)
        self.operation = operation_name(record.path)
        attributes: dict[str, str] = {
            "http.request.method": record.method,
            "url.path": record.path,
            "streamhop.route": route.prefix,
            "streamhop.request_id": record.request_id,
        }
        if self.operation is not None:
            attributes["gen_ai.operation.name"] = self.operation
            provider = provider_name(route, record.path)
            if provider is not None:
                attributes["gen_ai.provider.name"] = provider
        name = f"{record.method} {record.path}"
        self.server: Span = tracer.start_span(
            name,
            context=parent,
            kind=SpanKind.SERVER,
            start_time=self._ns(record.received_at),
            attributes=attributes,
        )
        self.upstream: Span | None = None

    def _ns(self, monotonic_s: float) -> int:
        return int(monotonic_s * 1e9) + self._offset

    def upstream_headers(self, record: StreamRecord) -> Mapping[str, str]:
        """Start ``upstream.request``; return the ``traceparent`` (and ``tracestate``) to send."""
        if record.model is not None and self.operation is not None:
            self.server.set_attribute("gen_ai.request.model", record.model)
            self.server.update_name(f"{self.operation} {record.model}")
        self.upstream = self._tracer.start_span(
            "upstream.request",
            context=trace.set_span_in_context(self.server),
            kind=SpanKind.CLIENT,
        )
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(self.upstream))
        return carrier

    def finish(self, record: StreamRecord) -> None:
        """End every span with what the record says happened."""
        server = self.server
        ns = self._ns
        end = ns(record.finished_at if record.finished_at is not None else time.monotonic())
        if record.upstream_request_at is not None and record.upstream_connected_at is not None:
            connect = self._tracer.start_span(
                "upstream.connect",
                context=trace.set_span_in_context(server),
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
        attributes: dict[str, str | int | float | bool] = {
            "streamhop.sse": record.sse,
            "streamhop.events_in": record.events_in,
            "streamhop.events_out": record.events_out,
            "streamhop.bytes_in": record.bytes_in,
            "streamhop.bytes_out": record.bytes_out,
        }
        if record.status is not None:
            attributes["http.response.status_code"] = record.status
        if record.format is not None:
            attributes["streamhop.format"] = record.format
        if record.upstream_request_at is not None:
            attributes["streamhop.overhead.request_ms"] = (
                record.upstream_request_at - record.received_at
            ) * 1000
        if record.usage_input_tokens is not None:
            attributes["gen_ai.usage.input_tokens"] = record.usage_input_tokens
        if record.usage_output_tokens is not None:
            attributes["gen_ai.usage.output_tokens"] = record.usage_output_tokens
        if record.cancel_reason is not None:
            attributes["streamhop.cancel_reason"] = record.cancel_reason
        if record.cancel_latency_s is not None:
            attributes["streamhop.cancel_latency_ms"] = record.cancel_latency_s * 1000
        if record.error is not None:
            attributes["error.type"] = record.error
            server.set_status(Status(StatusCode.ERROR, record.error))
        elif record.status is not None and record.status >= 500:
            server.set_status(Status(StatusCode.ERROR))
        server.set_attributes(attributes)
        if self.upstream is not None:
            if record.status is not None:
                self.upstream.set_attribute("http.response.status_code", record.status)
            self.upstream.end(end_time=end)
        server.end(end_time=end)
