"""The end of a stream, shared by the sidecar and the middleware: the pump's facts taken whole,
the metrics recorded from them, and the one JSON log line."""

from __future__ import annotations

import json
import logging
from dataclasses import fields

import pytest
from prometheus_client import CollectorRegistry

from streamhop.middleware.observe.metrics import Metrics
from streamhop.middleware.observe.stream_end import StreamEnd, log_end, log_fields, observe_end
from streamhop.middleware.pump import PumpStats

LABELS = {"route": "/", "model": "other"}


def _stats() -> PumpStats:
    """Stats whose every field has a value of its own, so a field not copied shows."""
    return PumpStats(
        format="openai-chat",
        events_in=8,
        events_out=6,
        malformed_events=1,
        writes=5,
        bytes_in=2112,
        bytes_out=1598,
        upstream_first_content_at=10.5,
        first_content_sent_at=10.6,
        first_tool_args_sent_at=10.7,
        usage_input_tokens=12,
        usage_output_tokens=40,
        upstream_first_event_at=10.4,
        response_id="chatcmpl-1",
        response_model="gpt-x",
        finish_reasons=("stop",),
        first_answer_sent_at=10.8,
    )


def test_take_stats_copies_every_field_of_the_pump() -> None:
    stats = _stats()
    end = StreamEnd(route="/", path="/v1", received_at=10.0)
    end.take_stats(stats)
    for f in fields(PumpStats):
        assert getattr(end, f.name) == getattr(stats, f.name), f.name


def _sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, {**LABELS, **labels})


def test_without_an_upstream_request_no_request_hop_and_upstream_ttft_from_arrival() -> None:
    """The middleware's case: its app is called as the request arrives."""
    metrics = Metrics(CollectorRegistry())
    end = StreamEnd(route="/", path="/v1", received_at=10.0, sse=True, finished_at=11.0)
    end.take_stats(_stats())
    observe_end(metrics.stream("/", None), end)
    r = metrics.registry
    assert _sample(r, "streamhop_proxy_overhead_seconds_count", hop="request") is None
    assert _sample(r, "streamhop_upstream_time_to_first_token_seconds_sum") == pytest.approx(0.5)
    assert _sample(r, "streamhop_time_to_first_token_seconds_sum") == pytest.approx(0.6)
    assert _sample(r, "streamhop_upstream_errors_total", kind="malformed_event") == 1
    assert _sample(r, "streamhop_bytes_total", direction="upstream") == 0  # the pump's to count
    assert log_fields(end)["upstream_ttft_ms"] == pytest.approx(500.0)


def test_with_an_upstream_request_the_request_hop_and_upstream_ttft_from_it() -> None:
    """The sidecar's case, a body copied without a pump (its bytes counted here)."""
    metrics = Metrics(CollectorRegistry())
    end = StreamEnd(route="/", path="/v1", received_at=10.0, finished_at=11.0)
    end.upstream_request_at = 10.25  # filled in as the request goes, as the sidecar does
    end.bytes_in = end.bytes_out = 7
    end.cancel_reason, end.cancel_latency_s = "client_disconnect", 0.002
    observe_end(metrics.stream("/", None), end)
    r = metrics.registry
    assert _sample(r, "streamhop_proxy_overhead_seconds_sum", hop="request") == 0.25
    assert _sample(r, "streamhop_bytes_total", direction="upstream") == 7
    assert _sample(r, "streamhop_cancellations_total", reason="client_disconnect") == 1
    assert log_fields(end)["cancel_latency_ms"] == 2.0


def test_log_end_writes_one_json_line_on_the_streams_logger(
    caplog: pytest.LogCaptureFixture,
) -> None:
    end = StreamEnd(route="/", path="/v1", received_at=10.0, finished_at=10.071)
    end.take_stats(_stats())
    with caplog.at_level(logging.INFO, logger="streamhop.streams"):
        log_end(end)
    (line,) = [r.getMessage() for r in caplog.records if r.name == "streamhop.streams"]
    logged = json.loads(line)
    assert logged == log_fields(end)
    assert logged["event"] == "stream_end" and len(logged["request_id"]) == 16
    assert logged["duration_ms"] == 71.0 and logged["finish_reasons"] == ["stop"]
