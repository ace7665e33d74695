"""The OpenTelemetry GenAI metrics (``[tracing] export_metrics``) of real requests through a real
sidecar app on uvicorn and the simulator, read with the SDK's ``InMemoryMetricReader``: names,
units, bucket boundaries and attributes as the GenAI conventions define them, one observation
per request, values that agree with the spans; and the OTLP export of both signals from
``Tracing.from_config`` to a loopback collector."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx2
import pytest
from aiohttp import web
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    HistogramDataPoint,
    InMemoryMetricReader,
    Metric,
    NumberDataPoint,
)
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client import CollectorRegistry

from streamhop.middleware.errors import ConfigError
from streamhop.middleware.observe.metrics import Metrics
from streamhop.sidecar.app import build_proxy_app
from streamhop.sidecar.config import TracingConfig, config_from_dict
from streamhop.sidecar.observe.genai_metrics import (
    DURATION_BUCKETS_S,
    PER_TOKEN_BUCKETS_S,
    SERVER_TTFT_BUCKETS_S,
    TOKEN_BUCKETS,
)
from streamhop.sidecar.observe.tracing import Tracing
from streamhop.sidecar.upstream.registry import SidecarState
from tests.support import BackgroundAiohttp, BackgroundUvicorn, StreamhopProcess, wait_for

CHAT_BODY: dict[str, Any] = {
    "model": "sim-model",
    "stream": True,
    "stream_options": {"include_usage": True},
    "max_tokens": 30,
    "messages": [{"role": "user", "content": "count me"}],
}


@dataclass
class Traced:
    url: str
    spans: InMemorySpanExporter
    reader: InMemoryMetricReader

    def finished(self, count: int) -> list[ReadableSpan]:
        """Wait for ``count`` finished spans in all (metrics are recorded before spans end)."""

        def enough() -> list[ReadableSpan]:
            spans = list(self.spans.get_finished_spans())
            return spans if len(spans) >= count else []

        return wait_for(enough, 10, f"{count} finished spans")

    def metrics(self) -> dict[str, Metric]:
        data = self.reader.get_metrics_data()
        assert data is not None
        return {
            metric.name: metric
            for resource in data.resource_metrics
            for scope in resource.scope_metrics
            for metric in scope.metrics
        }


@pytest.fixture
def traced(simulator: StreamhopProcess, scripted_upstream: BackgroundAiohttp) -> Iterator[Traced]:
    """A sidecar of the test's own, so each test sees only its own observations."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meters = MeterProvider(metric_readers=[reader])
    config = config_from_dict(
        {
            "routes": [
                {"prefix": "/sim", "upstream": simulator.url},
                {"prefix": "/", "upstream": scripted_upstream.url},
            ]
        }
    )
    app = build_proxy_app(
        config, SidecarState(), Metrics(CollectorRegistry()), None, Tracing(provider, meters)
    )
    with BackgroundUvicorn(app, lifespan="on") as server:
        yield Traced(server.url, exporter, reader)
    # The app's shutdown shut both providers down (Tracing.shutdown).


def _points(metric: Metric) -> list[Any]:
    return list(metric.data.data_points)


def _one_histogram(metric: Metric) -> HistogramDataPoint:
    (point,) = _points(metric)
    assert isinstance(point, HistogramDataPoint)
    assert point.count == 1
    return point


def test_a_streamed_chat_records_each_genai_metric_once(
    traced: Traced, simulator: StreamhopProcess
) -> None:
    with httpx2.Client(timeout=30) as http:
        response = http.post(traced.url + "/sim/v1/chat/completions", json=CHAT_BODY)
    assert response.status_code == 200
    spans = {s.kind: s for s in traced.finished(3)}
    call_attrs = dict(spans[SpanKind.CLIENT].attributes or {})
    metrics = traced.metrics()

    common = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "sim-model",
        "gen_ai.response.model": "sim-model",
    }
    upstream = {
        **common,
        "server.address": "127.0.0.1",
        "server.port": int(simulator.url.rsplit(":", 1)[1]),
    }
    expected_histograms = {
        "gen_ai.client.inference.duration": ("s", DURATION_BUCKETS_S, upstream),
        "gen_ai.client.inference.time_to_first_chunk": ("s", DURATION_BUCKETS_S, upstream),
        "gen_ai.client.inference.operation.input_tokens": ("{token}", TOKEN_BUCKETS, upstream),
        "gen_ai.client.inference.operation.output_tokens": ("{token}", TOKEN_BUCKETS, upstream),
        "gen_ai.server.request.duration": ("s", DURATION_BUCKETS_S, common),
        "gen_ai.server.time_to_first_token": ("s", SERVER_TTFT_BUCKETS_S, common),
        "gen_ai.server.time_per_output_token": ("s", PER_TOKEN_BUCKETS_S, common),
    }
    for name, (unit, buckets, attributes) in expected_histograms.items():
        metric = metrics[name]
        point = _one_histogram(metric)
        assert metric.unit == unit, name
        assert tuple(point.explicit_bounds) == tuple(buckets), name
        assert dict(point.attributes or {}) == attributes, name
    for name, value in (
        ("gen_ai.client.inference.usage.input_tokens", call_attrs["gen_ai.usage.input_tokens"]),
        ("gen_ai.client.inference.usage.output_tokens", 30),
    ):
        metric = metrics[name]
        (point,) = _points(metric)
        assert isinstance(point, NumberDataPoint)
        assert metric.unit == "{token}"
        assert point.value == value, name
        assert dict(point.attributes or {}) == {**upstream, "gen_ai.token.modality": "unknown"}
    assert _one_histogram(metrics["gen_ai.client.inference.operation.output_tokens"]).sum == 30
    # The metric and the span say the same: the first chunk's time, the call's duration.
    ttfc = _one_histogram(metrics["gen_ai.client.inference.time_to_first_chunk"]).sum
    assert ttfc == pytest.approx(call_attrs["gen_ai.response.time_to_first_chunk"])
    call = spans[SpanKind.CLIENT]
    assert call.end_time is not None and call.start_time is not None
    duration = _one_histogram(metrics["gen_ai.client.inference.duration"]).sum
    assert duration == pytest.approx((call.end_time - call.start_time) / 1e9, abs=0.005)
    # Decode time per output token: after the first token, the rest of the stream over the
    # 29 tokens that followed it.
    server_ttft = _one_histogram(metrics["gen_ai.server.time_to_first_token"]).sum
    request = _one_histogram(metrics["gen_ai.server.request.duration"]).sum
    per_token = _one_histogram(metrics["gen_ai.server.time_per_output_token"]).sum
    assert per_token == pytest.approx((request - server_ttft) / 29, rel=0.05, abs=1e-4)
    assert "gen_ai.client.operation.duration" not in metrics  # inference has its own


def test_a_failed_stream_records_its_error_type_and_no_server_ttft(traced: Traced) -> None:
    with httpx2.Client(timeout=30) as http:
        response = http.post(
            traced.url + "/fault/truncated/v1/chat/completions", json={"model": "m", "stream": True}
        )
    assert response.status_code == 200
    traced.finished(3)
    metrics = traced.metrics()
    for name in ("gen_ai.client.inference.duration", "gen_ai.server.request.duration"):
        point = _one_histogram(metrics[name])
        assert dict(point.attributes or {})["error.type"] == "truncated", name
    # Usage is recorded for failed operations too: 0 when the stream reported none.
    (usage,) = _points(metrics["gen_ai.client.inference.usage.output_tokens"])
    assert usage.value == 0
    tokens = _one_histogram(metrics["gen_ai.client.inference.operation.output_tokens"])
    assert dict(tokens.attributes or {})["error.type"] == "truncated"
    # Server time to first token is for successful responses only.
    assert "gen_ai.server.time_to_first_token" not in metrics


def test_embeddings_are_timed_as_an_operation_and_other_requests_not_at_all(
    traced: Traced,
) -> None:
    with httpx2.Client(timeout=10) as http:
        assert http.post(traced.url + "/echo/v1/embeddings", json={"model": "e"}).status_code
        assert http.get(traced.url + "/echo/healthz").status_code
    traced.finished(6)
    metrics = traced.metrics()
    point = _one_histogram(metrics["gen_ai.client.operation.duration"])
    assert dict(point.attributes or {})["gen_ai.operation.name"] == "embeddings"
    assert "gen_ai.client.inference.duration" not in metrics
    assert "gen_ai.client.inference.usage.input_tokens" not in metrics
    # Only the embeddings request is a GenAI request.
    assert _one_histogram(metrics["gen_ai.server.request.duration"])


def test_export_metrics_needs_an_otlp_endpoint() -> None:
    with pytest.raises(ConfigError, match=r"tracing\.export_metrics"):
        config_from_dict({"routes": [], "tracing": {"export_metrics": True}})
    config = config_from_dict(
        {
            "routes": [],
            "tracing": {"otlp_endpoint": "http://127.0.0.1:4318", "export_metrics": True},
        }
    )
    assert config.tracing.export_metrics


def test_from_config_exports_spans_and_metrics_over_otlp(simulator: StreamhopProcess) -> None:
    received: dict[str, list[bytes]] = {"/v1/traces": [], "/v1/metrics": []}

    async def collect(request: web.Request) -> web.Response:
        received[request.path].append(await request.read())
        return web.Response(content_type="application/x-protobuf", body=b"")

    collector = web.Application()
    collector.router.add_post("/v1/traces", collect)
    collector.router.add_post("/v1/metrics", collect)
    with BackgroundAiohttp(collector) as sink:
        tracing = Tracing.from_config(
            TracingConfig(otlp_endpoint=sink.url, service_name="genai-test", export_metrics=True)
        )
        assert tracing is not None
        config = config_from_dict({"routes": [{"prefix": "/sim", "upstream": simulator.url}]})
        app = build_proxy_app(config, SidecarState(), Metrics(CollectorRegistry()), None, tracing)
        with BackgroundUvicorn(app, lifespan="on") as server, httpx2.Client(timeout=30) as http:
            response = http.post(server.url + "/sim/v1/chat/completions", json=CHAT_BODY)
            assert response.status_code == 200
        # The app's shutdown flushed both signals (Tracing.shutdown).
        wait_for(lambda: all(received.values()), 10, "spans and metrics at the collector")

    spans = ExportTraceServiceRequest.FromString(b"".join(received["/v1/traces"][:1]))
    names = {
        span.name
        for resource in spans.resource_spans
        for scope in resource.scope_spans
        for span in scope.spans
    }
    assert {"POST /sim", "chat sim-model"} <= names
    exported = ExportMetricsServiceRequest.FromString(received["/v1/metrics"][0])
    (resource,) = exported.resource_metrics
    service = {a.key: a.value.string_value for a in resource.resource.attributes}
    assert service["service.name"] == "genai-test"
    metric_names = {m.name for scope in resource.scope_metrics for m in scope.metrics}
    assert {
        "gen_ai.client.inference.duration",
        "gen_ai.client.inference.time_to_first_chunk",
        "gen_ai.client.inference.usage.output_tokens",
        "gen_ai.server.time_to_first_token",
    } <= metric_names
