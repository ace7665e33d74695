"""OpenTelemetry spans of real requests through a real sidecar app on uvicorn, checked with the
SDK's in-memory exporter: structure, W3C trace context continued and propagated, GenAI
attributes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx2
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client import CollectorRegistry

from streamhop.middleware.observe.metrics import Metrics
from streamhop.sidecar.app import build_proxy_app
from streamhop.sidecar.config import config_from_dict
from streamhop.sidecar.http.proxy import SidecarState
from streamhop.sidecar.observe.tracing import Tracing
from tests.support import BackgroundAiohttp, BackgroundUvicorn, StreamhopProcess, wait_for

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


@pytest.fixture(scope="module")
def traced_sidecar(
    simulator: StreamhopProcess, scripted_upstream: BackgroundAiohttp
) -> Iterator[tuple[str, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    config = config_from_dict(
        {
            "routes": [
                {"prefix": "/sim", "upstream": simulator.url},
                {"prefix": "/", "upstream": scripted_upstream.url},
            ]
        }
    )
    app = build_proxy_app(
        config, SidecarState(), Metrics(CollectorRegistry()), None, Tracing(provider)
    )
    with BackgroundUvicorn(app, lifespan="on") as server:
        yield server.url, exporter
    provider.shutdown()


def _spans(exporter: InMemorySpanExporter, trace_id: int, count: int) -> list[ReadableSpan]:
    def finished() -> list[ReadableSpan]:
        spans = [s for s in exporter.get_finished_spans() if s.context.trace_id == trace_id]
        return spans if len(spans) >= count else []

    return wait_for(finished, 10, f"{count} finished spans of trace {trace_id:032x}")


def _by_name(spans: list[ReadableSpan]) -> dict[str, ReadableSpan]:
    return {s.name: s for s in spans}


def test_stream_spans_structure_and_genai_attributes(
    traced_sidecar: tuple[str, InMemorySpanExporter],
) -> None:
    url, exporter = traced_sidecar
    body: dict[str, Any] = {
        "model": "sim-model",
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 40,
        "messages": [{"role": "user", "content": "trace me"}],
    }
    with httpx2.Client(timeout=30) as http:
        response = http.post(
            url + "/sim/v1/chat/completions",
            json=body,
            headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"},
        )
    assert response.status_code == 200
    spans = _by_name(_spans(exporter, int(TRACE_ID, 16), 3))
    server = spans["chat sim-model"]
    upstream = spans["upstream.request"]
    connect = spans["upstream.connect"]
    # The client's trace is continued: same trace id, parented on the client's span.
    assert server.kind is SpanKind.SERVER
    assert server.parent is not None and server.parent.span_id == int(PARENT_ID, 16)
    assert upstream.kind is SpanKind.CLIENT
    assert upstream.parent is not None and upstream.parent.span_id == server.context.span_id
    assert connect.parent is not None and connect.parent.span_id == server.context.span_id
    attrs = dict(server.attributes or {})
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.provider.name"] == "openai"
    assert attrs["gen_ai.request.model"] == "sim-model"
    assert attrs["gen_ai.usage.output_tokens"] == 40
    assert isinstance(attrs["gen_ai.usage.input_tokens"], int)
    assert attrs["http.response.status_code"] == 200
    assert attrs["streamhop.events_in"] > attrs["streamhop.events_out"] > 0
    assert attrs["streamhop.bytes_out"] == len(response.content)
    assert attrs["streamhop.format"] == "openai-chat"
    events = [e.name for e in server.events]
    assert events == ["streamhop.upstream.first_token", "streamhop.downstream.first_write"]
    first_token, first_write = server.events
    assert server.start_time <= first_token.timestamp <= first_write.timestamp <= server.end_time


def test_upstream_receives_the_upstream_span_as_traceparent(
    traced_sidecar: tuple[str, InMemorySpanExporter],
) -> None:
    url, exporter = traced_sidecar
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    with httpx2.Client(timeout=10) as http:
        response = http.post(
            url + "/echo/v1/embeddings",
            json={"model": "e"},
            headers={"traceparent": f"00-{trace_id}-b7ad6b7169203331-01"},
        )
    sent = dict(response.json()["headers"])
    spans = _by_name(_spans(exporter, int(trace_id, 16), 2))
    upstream = spans["upstream.request"]
    expected = f"00-{trace_id}-{upstream.context.span_id:016x}-01"
    assert sent["traceparent"] == expected
    server = spans["embeddings e"]
    assert dict(server.attributes or {})["gen_ai.operation.name"] == "embeddings"
