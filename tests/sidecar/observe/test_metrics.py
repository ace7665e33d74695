"""Prometheus metrics of the real sidecar after real traffic from the real simulator.

Each check scrapes ``/metrics`` on the session sidecar's admin listener before and after a known
piece of traffic on the ``/sim`` route and compares the *difference* with what the client and the
provider saw: other tests share the sidecar, so no value is assumed to start at zero. The scrape
is parsed with ``prometheus_client``'s own text parser, not with string matching.

Before each "before" and "after" scrape the route is left to go idle (``streams_active`` back to
0): per-stream metrics are recorded when the request ends, just after the client has read the
last byte, and a request of an earlier test may still be ending.

Durations are checked without wall-clock windows: from below by what the simulator's pacing
makes certain (it is never early), from above by what contains them on the client's side (a
request's time in the sidecar lies within the time from before the client sent it to after the
sidecar was idle again), so a slow machine can make them larger but not fail a check.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import httpx2
import pytest

from streamhop.middleware.observe.metrics import (
    CADENCE_BUCKETS,
    CANCEL_REASONS,
    DURATION_BUCKETS,
    HOPS,
    OTHER_MODEL,
    OVERHEAD_BUCKETS,
    TTFT_BUCKETS,
)
from tests.support import (
    Received,
    Scrape,
    StreamhopProcess,
    chat_body,
    connect_error_once,
    delta,
    disconnect_once,
    serve,
    stream_once,
    wait_idle,
)

ROUTE = "/sim"
TTFT_S = 0.080
"""The simulator's time to first token for these requests (``x-sim-ttft-ms``)."""
STREAMS = 3
"""Streams sent through the sidecar by the :func:`traffic` fixture."""
SIM_HEADERS = {
    "x-sim-ttft-ms": str(round(TTFT_S * 1000)),
    "x-sim-events-per-second": "100",
    "x-sim-tokens-per-second": "1000",
}
"""10 tokens per content event, one every 10 ms: with the 20 ms window, visibly coalesced."""
UNLISTED_MODEL = "gpt-not-in-the-allow-list"
BODY = chat_body("Count the events, please.", 100, model=UNLISTED_MODEL)
"""The traffic's request: 10 content events of 10 tokens."""

# DESIGN.md "Metrics": exposition name -> (type, label names besides ``le``).
FAMILIES: Mapping[str, tuple[str, frozenset[str]]] = {
    "streamhop_time_to_first_token_seconds": ("histogram", frozenset({"route", "model"})),
    "streamhop_upstream_time_to_first_token_seconds": ("histogram", frozenset({"route", "model"})),
    "streamhop_inter_chunk_seconds": ("histogram", frozenset({"route", "model"})),
    "streamhop_proxy_overhead_seconds": ("histogram", frozenset({"route", "model", "hop"})),
    "streamhop_stream_duration_seconds": ("histogram", frozenset({"route", "model"})),
    "streamhop_streams_active": ("gauge", frozenset({"route"})),
    "streamhop_events_total": ("counter", frozenset({"route", "model", "direction"})),
    "streamhop_bytes_total": ("counter", frozenset({"route", "model", "direction"})),
    "streamhop_cancellations_total": ("counter", frozenset({"route", "model", "reason"})),
    "streamhop_cancel_latency_seconds": ("histogram", frozenset({"route", "model"})),
    "streamhop_upstream_errors_total": ("counter", frozenset({"route", "model", "kind"})),
}
BUCKETS: Mapping[str, tuple[float, ...]] = {
    "streamhop_time_to_first_token_seconds": TTFT_BUCKETS,
    "streamhop_upstream_time_to_first_token_seconds": TTFT_BUCKETS,
    "streamhop_inter_chunk_seconds": CADENCE_BUCKETS,
    "streamhop_proxy_overhead_seconds": OVERHEAD_BUCKETS,
    "streamhop_stream_duration_seconds": DURATION_BUCKETS,
    "streamhop_cancel_latency_seconds": OVERHEAD_BUCKETS,
}
LABEL_VALUES: Mapping[str, frozenset[str]] = {
    "direction": frozenset({"upstream", "downstream"}),
    "hop": frozenset(HOPS),
    "reason": frozenset(CANCEL_REASONS),
}


# --- traffic -------------------------------------------------------------------------------------


def sim_events(simulator: StreamhopProcess, request_ids: list[str]) -> int:
    """Events the simulator's stream log says it wrote for ``request_ids`` (all finished)."""
    records = httpx2.get(simulator.url + "/_simulator/streams", timeout=10).json()
    by_id = {r["id"]: r for r in records}
    assert all(by_id[rid]["outcome"] == "complete" for rid in request_ids), by_id
    return sum(int(by_id[rid]["events"]) for rid in request_ids)


@dataclass(frozen=True)
class Traffic:
    """:data:`STREAMS` proxied streams and what each side saw of them."""

    before: Scrape
    after: Scrape
    direct: Received
    """The same request sent to the simulator directly (it answers identically every time)."""
    proxied: list[Received]
    spans_s: list[float]
    """Per proxied stream, seconds from before the client sent it to after the sidecar was idle
    again: everything the sidecar timed of that stream lies within."""
    simulator_events: int
    """Events the simulator's own log counts for the proxied requests."""

    @property
    def client_s(self) -> float:
        """The spans together."""
        return sum(self.spans_s)

    def delta(self, name: str, **labels: str) -> float:
        """Growth of ``name`` on the ``/sim`` route between before and after."""
        return delta(self.before, self.after, name, route=ROUTE, **labels)


@pytest.fixture(scope="module")
def traffic(simulator: StreamhopProcess, sidecar: StreamhopProcess) -> Traffic:
    """One direct request to the simulator, then :data:`STREAMS` identical ones through the
    sidecar, one at a time, each until the sidecar is idle again, with idle scrapes before and
    after."""
    assert sidecar.admin_url is not None
    with httpx2.Client(timeout=30) as http:
        direct = stream_once(http, simulator.url, SIM_HEADERS, BODY)
        assert direct.status == 200
        before = wait_idle(sidecar.admin_url)
        ids = [uuid.uuid4().hex for _ in range(STREAMS)]
        proxied = []
        spans = []
        for rid in ids:
            sent = time.monotonic()
            headers = {**SIM_HEADERS, "x-request-id": rid}
            proxied.append(stream_once(http, sidecar.url + ROUTE, headers, BODY))
            after = wait_idle(sidecar.admin_url)
            spans.append(time.monotonic() - sent)
    assert [r.status for r in proxied] == [200] * STREAMS
    return Traffic(before, after, direct, proxied, spans, sim_events(simulator, ids))


@dataclass(frozen=True)
class Cancelled:
    """One client disconnect mid-stream, with scrapes around it."""

    before: Scrape
    after: Scrape


@pytest.fixture(scope="module")
def cancelled(sidecar: StreamhopProcess) -> Cancelled:
    """A client that leaves after the first content delta of a seconds-long stream."""
    assert sidecar.admin_url is not None
    before = wait_idle(sidecar.admin_url)
    with httpx2.Client(timeout=30) as http:
        disconnect_once(http, sidecar.url + ROUTE)
    return Cancelled(before, wait_idle(sidecar.admin_url))


# --- families ------------------------------------------------------------------------------------


def test_every_design_family_is_exposed_with_its_type_labels_and_buckets(
    sidecar: StreamhopProcess, traffic: Traffic, cancelled: Cancelled
) -> None:
    assert sidecar.admin_url is not None
    connect_error_once(sidecar.url)
    current = wait_idle(sidecar.admin_url, "/down")
    for name, (kind, labels) in FAMILIES.items():
        assert name in current.families, f"{name} missing from /metrics"
        exposed_type, samples = current.families[name]
        assert exposed_type == kind, (name, exposed_type)
        assert samples, f"{name} has no series after traffic that should have recorded it"
        for sample in samples:
            assert set(sample.labels) - {"le"} == labels, (name, sample.labels)
            for label, allowed in LABEL_VALUES.items():
                if label in sample.labels:
                    assert sample.labels[label] in allowed, (name, sample.labels)
        if name in BUCKETS:
            bounds = {float(s.labels["le"]) for s in samples if s.name == name + "_bucket"}
            assert bounds == {*BUCKETS[name], float("inf")}, name


# --- counters ------------------------------------------------------------------------------------


def test_upstream_events_are_exactly_what_the_simulator_sent(traffic: Traffic) -> None:
    per_stream = traffic.direct.events
    assert per_stream > 10
    assert traffic.simulator_events == STREAMS * per_stream
    assert traffic.delta("streamhop_events_total", direction="upstream") == STREAMS * per_stream


def test_downstream_events_are_exactly_what_the_client_received(traffic: Traffic) -> None:
    received = sum(r.events for r in traffic.proxied)
    assert traffic.delta("streamhop_events_total", direction="downstream") == received
    # The 20 ms window merged the 10 ms-apart deltas: fewer events went out than came in.
    assert received < STREAMS * traffic.direct.events


def test_bytes_are_exactly_what_each_side_sent_and_received(traffic: Traffic) -> None:
    upstream = traffic.delta("streamhop_bytes_total", direction="upstream")
    assert upstream == STREAMS * len(traffic.direct.body)
    downstream = traffic.delta("streamhop_bytes_total", direction="downstream")
    assert downstream == sum(len(r.body) for r in traffic.proxied)


def test_every_series_of_the_traffic_has_model_other(traffic: Traffic) -> None:
    """The session sidecar has no model allow-list: any model is recorded as ``other``."""
    for sample in traffic.after.samples():
        if sample.name.startswith("streamhop_") and "model" in sample.labels:
            assert sample.labels["model"] != UNLISTED_MODEL, sample
    assert traffic.delta("streamhop_events_total", model=OTHER_MODEL) > 0


# --- histograms ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["streamhop_time_to_first_token_seconds", "streamhop_upstream_time_to_first_token_seconds"],
)
def test_ttft_histograms_count_each_stream_after_the_provider_ttft(
    traffic: Traffic, name: str
) -> None:
    assert traffic.delta(name + "_count") == STREAMS
    total = traffic.delta(name + "_sum")
    # Not before the provider's TTFT (its pacing is never early); within the streams' spans.
    assert TTFT_S * STREAMS <= total <= traffic.client_s, (total, traffic.spans_s)
    # Every observation lies above the provider's TTFT: none in the 75 ms bucket.
    assert traffic.delta(name + "_bucket", le="0.075") == 0
    # Seconds, bucketed: a stream whose whole span was under 0.5 s is in the 0.5 s bucket.
    within = sum(span <= 0.5 for span in traffic.spans_s)
    assert traffic.delta(name + "_bucket", le="0.5") >= within, traffic.spans_s
    assert traffic.delta(name + "_bucket", le="+Inf") == STREAMS


def test_end_to_end_ttft_includes_the_provider_ttft(traffic: Traffic) -> None:
    e2e = traffic.delta("streamhop_time_to_first_token_seconds_sum")
    provider = traffic.delta("streamhop_upstream_time_to_first_token_seconds_sum")
    assert e2e >= provider
    # What streamhop adds to the first token on loopback: well under 50 ms a stream.
    assert (e2e - provider) / STREAMS < 0.05


def test_overhead_per_hop_counts_requests_reads_and_writes(traffic: Traffic) -> None:
    name = "streamhop_proxy_overhead_seconds"
    assert traffic.delta(name + "_count", hop="request") == STREAMS
    reads = traffic.delta(name + "_count", hop="event")
    writes = traffic.delta(name + "_count", hop="flush")
    assert reads >= STREAMS
    assert STREAMS <= writes <= sum(r.events for r in traffic.proxied)
    for hop in HOPS:
        count = traffic.delta(name + "_count", hop=hop)
        mean = traffic.delta(name + "_sum", hop=hop) / count
        assert 0 <= mean < 0.05, (hop, mean)


def test_inter_chunk_gaps_are_counted_between_the_writes_of_each_stream(
    traffic: Traffic,
) -> None:
    writes = traffic.delta("streamhop_proxy_overhead_seconds_count", hop="flush")
    gaps = traffic.delta("streamhop_inter_chunk_seconds_count")
    assert gaps == writes - STREAMS
    assert gaps > 0
    total = traffic.delta("streamhop_inter_chunk_seconds_sum")
    # Writes are a coalescing window apart, mostly; a stream's gaps add up to the time from its
    # first write to its last, within its span.
    assert total / gaps >= 0.001, total / gaps
    assert total <= traffic.client_s, (total, traffic.spans_s)


def test_stream_duration_counts_each_stream(traffic: Traffic) -> None:
    assert traffic.delta("streamhop_stream_duration_seconds_count") == STREAMS
    total = traffic.delta("streamhop_stream_duration_seconds_sum")
    ttft = traffic.delta("streamhop_time_to_first_token_seconds_sum")
    assert ttft < total <= traffic.client_s, (ttft, total, traffic.spans_s)


def test_streams_active_is_back_to_zero(traffic: Traffic) -> None:
    assert traffic.after.value("streamhop_streams_active", route=ROUTE) == 0


# --- cancellation and errors ---------------------------------------------------------------------


def test_client_disconnect_is_counted_with_its_cancel_latency(cancelled: Cancelled) -> None:
    def grew(name: str, **labels: str) -> float:
        return delta(cancelled.before, cancelled.after, name, route=ROUTE, **labels)

    assert grew("streamhop_cancellations_total", reason="client_disconnect") == 1
    assert grew("streamhop_cancellations_total") == 1
    assert grew("streamhop_cancel_latency_seconds_count") == 1
    # Detection to upstream closed; about 0.1 ms (docs/lifecycle.md), 100 ms is generous.
    assert 0 < grew("streamhop_cancel_latency_seconds_sum") < 0.1
    assert grew("streamhop_stream_duration_seconds_count") == 1
    assert grew("streamhop_time_to_first_token_seconds_count") == 1
    assert cancelled.after.value("streamhop_streams_active", route=ROUTE) == 0


def test_connect_failure_is_counted_by_kind(sidecar: StreamhopProcess) -> None:
    assert sidecar.admin_url is not None
    before = wait_idle(sidecar.admin_url, "/down")
    connect_error_once(sidecar.url)
    after = wait_idle(sidecar.admin_url, "/down")
    name = "streamhop_upstream_errors_total"
    assert delta(before, after, name, route="/down", kind="connect") == 1
    assert delta(before, after, name, route="/down") == 1
    # No upstream request ever answered: no TTFT, but the request's duration is recorded.
    assert delta(before, after, "streamhop_upstream_time_to_first_token_seconds_count") == 0
    assert delta(before, after, "streamhop_stream_duration_seconds_count", route="/down") == 1


# --- Server-Timing -------------------------------------------------------------------------------


def test_server_timing_reports_upstream_phases_in_milliseconds(traffic: Traffic) -> None:
    for received, span_s in zip(traffic.proxied, traffic.spans_s, strict=True):
        phases = {}
        for part in received.headers["server-timing"].split(","):
            name, _, dur = part.strip().partition(";dur=")
            phases[name] = float(dur)
        assert set(phases) == {"upstream-connect", "upstream-headers"}
        # Headers come after the connect, and both within the stream's span, in milliseconds.
        assert 0 <= phases["upstream-connect"] <= phases["upstream-headers"], phases
        assert phases["upstream-headers"] <= span_s * 1000, (phases, span_s)


# --- the model allow-list ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def allow_listed(
    simulator: StreamhopProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[StreamhopProcess]:
    """A sidecar of its own whose ``[metrics] models`` allow-list has one model."""
    config = f"""
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[metrics]
models = ["streamhop-sim-1"]

[[routes]]
prefix = "/sim"
upstream = "{simulator.url}"
"""
    proc = serve(tmp_path_factory.mktemp("allow-list"), config)
    yield proc
    proc.stop()


def test_model_label_keeps_allow_listed_models_and_maps_others_to_other(
    allow_listed: StreamhopProcess,
) -> None:
    assert allow_listed.admin_url is not None
    with httpx2.Client(timeout=30) as http:
        for model in ("streamhop-sim-1", UNLISTED_MODEL, "streamhop-sim-1"):
            received = stream_once(
                http,
                allow_listed.url + ROUTE,
                SIM_HEADERS,
                chat_body("Count the events, please.", 20, model=model),
            )
            assert received.status == 200
    after = wait_idle(allow_listed.admin_url)
    models = {s.labels.get("model") for s in after.samples() if s.name.startswith("streamhop_")}
    assert models - {None} == {"streamhop-sim-1", OTHER_MODEL}
    ttft = "streamhop_time_to_first_token_seconds_count"
    assert after.value(ttft, model="streamhop-sim-1") == 2
    assert after.value(ttft, model=OTHER_MODEL) == 1
