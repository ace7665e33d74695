"""OpenTelemetry spans of real requests through a real sidecar app on uvicorn, checked with the
SDK's in-memory exporter: structure, W3C trace context continued and propagated, the HTTP
conventions on the downstream (SERVER) span and the GenAI conventions on the upstream (CLIENT)
span, with the response's id, model and finish reasons as the stream reported them."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import httpx2
import orjson
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import CollectorRegistry

from streamhop.middleware.observe.metrics import Metrics
from streamhop.sidecar.app import build_proxy_app
from streamhop.sidecar.config import config_from_dict
from streamhop.sidecar.observe.tracing import Tracing
from streamhop.sidecar.upstream.registry import SidecarState
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


def _by_kind(spans: list[ReadableSpan]) -> dict[SpanKind, ReadableSpan]:
    by_kind = {s.kind: s for s in spans}
    assert len(by_kind) == len(spans), [s.name for s in spans]
    return by_kind


def _traced_post(url: str, trace_id: str, body: dict[str, Any]) -> httpx2.Response:
    with httpx2.Client(timeout=30) as http:
        return http.post(
            url,
            json=body,
            headers={"traceparent": f"00-{trace_id}-{PARENT_ID}-01", "user-agent": "trace-test/1"},
        )


def _first_data(response: httpx2.Response) -> dict[str, Any]:
    """The JSON data of the first SSE event of a response, as the client read it."""
    for line in response.text.splitlines():
        if line.startswith("data: {"):
            data: dict[str, Any] = orjson.loads(line[6:])
            return data
    raise AssertionError(f"no JSON data event in {response.text[:200]!r}")


def test_stream_spans_structure_and_genai_attributes(
    traced_sidecar: tuple[str, InMemorySpanExporter], simulator: StreamhopProcess
) -> None:
    url, exporter = traced_sidecar
    body: dict[str, Any] = {
        "model": "sim-model",
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 40,
        "messages": [{"role": "user", "content": "trace me"}],
    }
    response = _traced_post(url + "/sim/v1/chat/completions", TRACE_ID, body)
    assert response.status_code == 200
    spans = _spans(exporter, int(TRACE_ID, 16), 3)
    by_kind = _by_kind(spans)
    server = by_kind[SpanKind.SERVER]
    upstream = by_kind[SpanKind.CLIENT]
    connect = by_kind[SpanKind.INTERNAL]
    assert (server.name, upstream.name, connect.name) == (
        "POST /sim",
        "chat sim-model",
        "upstream.connect",
    )
    # The client's trace is continued: same trace id, parented on the client's span; the
    # upstream call is the server span's child, the connection wait part of the upstream call.
    assert server.parent is not None and server.parent.span_id == int(PARENT_ID, 16)
    assert upstream.parent is not None and upstream.parent.span_id == server.context.span_id
    assert connect.parent is not None and connect.parent.span_id == upstream.context.span_id

    attrs = dict(server.attributes or {})
    assert attrs["http.request.method"] == "POST"
    assert attrs["http.route"] == "/sim"
    assert attrs["url.path"] == "/sim/v1/chat/completions"
    assert attrs["url.scheme"] == "http"
    assert attrs["server.address"] == "127.0.0.1"
    assert attrs["server.port"] == int(url.rsplit(":", 1)[1])
    assert attrs["user_agent.original"] == "trace-test/1"
    assert attrs["http.response.status_code"] == 200
    assert attrs["streamhop.events_in"] > attrs["streamhop.events_out"] > 0
    assert attrs["streamhop.bytes_out"] == len(response.content)
    assert attrs["streamhop.format"] == "openai-chat"
    assert not any(key.startswith("gen_ai.") for key in attrs)
    assert server.status.status_code is StatusCode.UNSET
    events = [e.name for e in server.events]
    assert events == ["streamhop.upstream.first_token", "streamhop.downstream.first_write"]
    first_token, first_write = server.events
    assert server.start_time <= first_token.timestamp <= first_write.timestamp <= server.end_time

    call = dict(upstream.attributes or {})
    first = _first_data(response)
    assert call["gen_ai.operation.name"] == "chat"
    assert call["gen_ai.provider.name"] == "openai"
    assert call["gen_ai.request.model"] == "sim-model"
    assert call["gen_ai.request.stream"] is True
    assert call["gen_ai.response.model"] == first["model"] == "sim-model"
    assert call["gen_ai.response.id"] == first["id"]
    assert call["gen_ai.response.finish_reasons"] == ("stop",)
    assert call["gen_ai.usage.output_tokens"] == 40
    assert isinstance(call["gen_ai.usage.input_tokens"], int)
    assert call["server.address"] == "127.0.0.1"
    assert call["server.port"] == int(simulator.url.rsplit(":", 1)[1])
    assert call["http.request.method"] == "POST"
    assert call["http.response.status_code"] == 200
    assert "error.type" not in call
    # Time to first chunk: any first event (the role chunk, sent before the first token),
    # so no later than the first content, which the server span's event marks.
    ttfc = call["gen_ai.response.time_to_first_chunk"]
    assert isinstance(ttfc, float)
    assert 0 < ttfc <= (first_token.timestamp - server.start_time) / 1e9


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
    by_kind = _by_kind(_spans(exporter, int(trace_id, 16), 2))
    upstream = by_kind[SpanKind.CLIENT]
    expected = f"00-{trace_id}-{upstream.context.span_id:016x}-01"
    assert sent["traceparent"] == expected
    assert upstream.name == "embeddings e"
    assert by_kind[SpanKind.SERVER].name == "POST /"
    call = dict(upstream.attributes or {})
    assert call["gen_ai.operation.name"] == "embeddings"
    assert "gen_ai.request.stream" not in call  # set if and only if the request streams


@pytest.mark.parametrize(
    ("path", "provider", "finish", "id_prefix"),
    [
        ("/sim/v1/messages", "anthropic", ("end_turn",), "msg_"),
        ("/sim/v1/responses", "openai", ("stop",), "resp_"),
    ],
)
def test_each_format_reports_its_response_facts(
    traced_sidecar: tuple[str, InMemorySpanExporter],
    path: str,
    provider: str,
    finish: tuple[str, ...],
    id_prefix: str,
) -> None:
    url, exporter = traced_sidecar
    trace_id = "1af7651916cd43dd8448eb211c8031" + ("aa" if "messages" in path else "bb")
    body: dict[str, Any] = {"model": "sim-model", "stream": True}
    if path.endswith("/messages"):
        body |= {"max_tokens": 12, "messages": [{"role": "user", "content": "hi"}]}
    else:
        body |= {"max_output_tokens": 12, "input": "hi"}
    response = _traced_post(url + path, trace_id, body)
    assert response.status_code == 200
    upstream = _by_kind(_spans(exporter, int(trace_id, 16), 3))[SpanKind.CLIENT]
    call = dict(upstream.attributes or {})
    assert upstream.name == "chat sim-model"
    assert call["gen_ai.provider.name"] == provider
    assert call["gen_ai.response.model"] == "sim-model"
    response_id = call["gen_ai.response.id"]
    assert isinstance(response_id, str) and response_id.startswith(id_prefix)
    assert response_id in response.text
    assert call["gen_ai.response.finish_reasons"] == finish
    assert call["gen_ai.usage.output_tokens"] == 12


@pytest.mark.parametrize(
    ("fixture", "path", "expected"),
    [
        (
            "anthropic_tool_use",
            "/v1/messages",
            {
                "gen_ai.provider.name": "anthropic",
                "gen_ai.response.id": "msg_019Q1hrJbZG26Fb9BQhrkHEr",
                "gen_ai.response.model": "claude-sonnet-4-20250514",
                "gen_ai.response.finish_reasons": ("tool_use",),
                "gen_ai.usage.input_tokens": 377,
                "gen_ai.usage.output_tokens": 65,
            },
        ),
        (
            "groq_chat_reasoning_tool_call",
            "/v1/chat/completions",
            {
                "gen_ai.provider.name": "openai",
                "gen_ai.response.id": "chatcmpl-e35442a8-12c0-4fb4-8be4-0e51727ce7b7",
                "gen_ai.response.model": "openai/gpt-oss-120b",
                "gen_ai.response.finish_reasons": ("tool_calls",),
            },
        ),
    ],
)
def test_recorded_provider_streams_give_their_response_facts(
    traced_sidecar: tuple[str, InMemorySpanExporter],
    fixture: str,
    path: str,
    expected: dict[str, Any],
) -> None:
    url, exporter = traced_sidecar
    trace_id = hashlib.md5(fixture.encode()).hexdigest()
    response = _traced_post(f"{url}/fx/{fixture}/pace/0{path}", trace_id, {"model": "m"})
    assert response.status_code == 200
    upstream = _by_kind(_spans(exporter, int(trace_id, 16), 3))[SpanKind.CLIENT]
    call = dict(upstream.attributes or {})
    assert upstream.name == "chat m"
    assert {key: call.get(key) for key in expected} == expected


def test_an_upstream_fault_is_an_error_of_both_spans(
    traced_sidecar: tuple[str, InMemorySpanExporter],
) -> None:
    url, exporter = traced_sidecar
    trace_id = "2af7651916cd43dd8448eb211c80319c"
    body = {"model": "m", "stream": True}
    response = _traced_post(url + "/fault/truncated/v1/chat/completions", trace_id, body)
    assert response.status_code == 200  # the stream had started: it ends with an error event
    by_kind = _by_kind(_spans(exporter, int(trace_id, 16), 3))
    for kind in (SpanKind.SERVER, SpanKind.CLIENT):
        span = by_kind[kind]
        assert dict(span.attributes or {})["error.type"] == "truncated", kind
        assert span.status.status_code is StatusCode.ERROR, kind


def test_a_provider_error_status_is_an_error_of_the_upstream_call_only(
    traced_sidecar: tuple[str, InMemorySpanExporter],
) -> None:
    url, exporter = traced_sidecar
    trace_id = "3af7651916cd43dd8448eb211c80319c"
    response = _traced_post(url + "/fault/status/v1/chat/completions", trace_id, {"model": "m"})
    assert response.status_code == 429
    by_kind = _by_kind(_spans(exporter, int(trace_id, 16), 3))
    upstream, server = by_kind[SpanKind.CLIENT], by_kind[SpanKind.SERVER]
    assert dict(upstream.attributes or {})["error.type"] == "429"
    assert upstream.status.status_code is StatusCode.ERROR
    # An HTTP server span is an error for 5xx only: a 429 passed through is the client's.
    assert dict(server.attributes or {})["http.response.status_code"] == 429
    assert "error.type" not in dict(server.attributes or {})
    assert server.status.status_code is StatusCode.UNSET
