"""The upstream burst detector end to end: the simulator's ``buffered`` fault through a real
sidecar fires ``streamhop_upstream_bursts_total``, a paced stream does not; the count reaches the
JSON log line and the upstream span; ``streamhop demo`` shows it; the ``[metrics]`` keys are
validated.

The sidecar of this module runs with ``burst_gap_ms = 400``, and the buffering hop releases every
450 ms: with the default 500 ms those lumps would (but for a stalled machine) not be bursts, so the
counter moving shows that the configured value reached the detector.

Whatever the machine's load, a buffered stream's first lump is a burst: the hop holds everything
until its first release, which is never early, and writes it in one write. Later lumps depend on
scheduling, so only "at least one" is asserted. A paced stream could only look bursty after a
400 ms stall of the sidecar itself.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import httpx2
import orjson
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client import CollectorRegistry

from streamhop.middleware.errors import ConfigError
from streamhop.middleware.observe.metrics import GAP_BUCKETS, Metrics
from streamhop.sidecar.app import build_proxy_app
from streamhop.sidecar.config import config_from_dict
from streamhop.sidecar.observe.tracing import Tracing
from streamhop.sidecar.simulate.cli import add_arguments
from streamhop.sidecar.upstream.registry import SidecarState
from tests.support import (
    CHAT,
    BackgroundUvicorn,
    Received,
    Scrape,
    StreamhopProcess,
    chat_body,
    chat_text,
    delta,
    serve,
    sidecar_config,
    sse_data,
    stream_once,
    wait_for,
    wait_idle,
)

ROUTE = "/"
GAP_MS = 400
EVERY_MS = 450
BURSTY_MODEL = "bursty"
"""In the allow-list: the buffered requests' series are ``model="bursty"``."""
METRICS = f"""
[metrics]
models = ["{BURSTY_MODEL}"]
burst_gap_ms = {GAP_MS}
burst_events = 20
"""
BUFFERED = {"x-sim-buffered-every-ms": str(EVERY_MS)}
# The session simulator: 200 events/s of 10 tokens, TTFT 30 ms. 1900 tokens are 190 content
# events over 0.95 s: lumps at 0.45 s (~85 events) and 0.9 s (~90), the rest at the end.
BUFFERED_BODY = chat_body("Hold these, please.", 1900, model=BURSTY_MODEL)
PACED_BODY = chat_body("Pace these, please.", 1000, model="paced")
"""100 content events over 0.5 s, one every 5 ms; ``model="other"`` in the metrics."""


@dataclass(frozen=True)
class Seen:
    """One stream through the sidecar: what the client got, the scrapes around it, its log."""

    received: Received
    before: Scrape
    after: Scrape
    log: Mapping[str, Any]

    def delta(self, name: str, **labels: str) -> float:
        return delta(self.before, self.after, name, route=ROUTE, **labels)


@pytest.fixture(scope="module")
def bursty(
    simulator: StreamhopProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[StreamhopProcess]:
    """A sidecar of its own (one route ``/`` to the session simulator), logging at INFO."""
    proc = serve(
        tmp_path_factory.mktemp("bursts"),
        sidecar_config(simulator.url, sections=METRICS),
        log_level="info",
    )
    yield proc
    proc.stop()


def log_line(proc: StreamhopProcess, request_id: str) -> dict[str, Any]:
    """The ``stream_end`` line of request ``request_id`` (``X-Streamhop-Request-Id``)."""

    def logged() -> dict[str, Any] | None:
        for line in proc.stderr.splitlines():
            if f'"request_id":"{request_id}"' in line:
                return dict(orjson.loads(line[line.index("{") :]))
        return None

    return wait_for(logged, 10, f"the log line of request {request_id}")


def through(proc: StreamhopProcess, headers: Mapping[str, str], body: Mapping[str, Any]) -> Seen:
    assert proc.admin_url is not None
    before = wait_idle(proc.admin_url, ROUTE)
    with httpx2.Client(timeout=30) as http:
        received = stream_once(http, proc.url, headers, body)
    after = wait_idle(proc.admin_url, ROUTE)
    assert received.status == 200, received.body[:500]
    return Seen(received, before, after, log_line(proc, received.headers["x-streamhop-request-id"]))


@pytest.fixture(scope="module")
def buffered(bursty: StreamhopProcess) -> Seen:
    return through(bursty, BUFFERED, BUFFERED_BODY)


@pytest.fixture(scope="module")
def paced(bursty: StreamhopProcess) -> Seen:
    return through(bursty, {}, PACED_BODY)


def test_a_buffering_hop_upstream_is_counted_as_bursts(buffered: Seen) -> None:
    bursts = buffered.delta("streamhop_upstream_bursts_total", model=BURSTY_MODEL)
    # Lumps at 0.45 s and 0.9 s, and a tail too short after the second to be one.
    assert 1 <= bursts <= 2
    assert buffered.log["upstream_bursts"] == bursts
    # The gaps before the lumps are in the histogram, above the configured gap.
    name = "streamhop_upstream_inter_event_seconds_bucket"
    all_gaps = buffered.delta(name, model=BURSTY_MODEL, le="+Inf")
    short_gaps = buffered.delta(name, model=BURSTY_MODEL, le="0.25")
    assert all_gaps > 0 and all_gaps - short_gaps >= bursts - 1  # the first lump's is a wait
    # Nothing is lost through the hop and the sidecar.
    assert chat_text(sse_data(buffered.received.body)).count(" ") > 100


def test_a_paced_stream_has_no_burst_and_its_series_exist_at_zero(paced: Seen) -> None:
    scrape = paced.after
    family = scrape.families["streamhop_upstream_bursts_total"]
    assert family[0] == "counter"
    assert scrape.value("streamhop_upstream_bursts_total", route=ROUTE, model="other") == 0
    assert any(s.labels == {"route": ROUTE, "model": "other"} for s in family[1])
    assert paced.delta("streamhop_upstream_bursts_total") == 0
    assert paced.log["upstream_bursts"] == 0
    gaps = paced.delta("streamhop_upstream_inter_event_seconds_count", model="other")
    assert gaps >= 50  # one per read that completed events, not the first


def test_the_gap_histogram_has_its_buckets_and_labels(paced: Seen) -> None:
    kind, samples = paced.after.families["streamhop_upstream_inter_event_seconds"]
    assert kind == "histogram"
    for sample in samples:
        assert set(sample.labels) - {"le"} == {"route", "model"}
    bounds = {
        float(s.labels["le"])
        for s in samples
        if s.name.endswith("_bucket") and s.labels["model"] == "other"
    }
    assert bounds == {*GAP_BUCKETS, float("inf")}


# --- the upstream span ---------------------------------------------------------------------------


def test_the_upstream_span_of_a_bursty_stream_carries_the_count(
    simulator: StreamhopProcess,
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    config = config_from_dict({"routes": [{"prefix": "/", "upstream": simulator.url}]})
    metrics = Metrics(CollectorRegistry(), burst_gap_s=GAP_MS / 1000, burst_events=20)
    app = build_proxy_app(config, SidecarState(), metrics, None, Tracing(provider))
    try:
        with BackgroundUvicorn(app, lifespan="on") as server, httpx2.Client(timeout=30) as http:
            assert stream_once(http, server.url, BUFFERED, BUFFERED_BODY).status == 200
            assert stream_once(http, server.url, {}, chat_body(max_tokens=50)).status == 200

            def upstream_spans() -> list[ReadableSpan]:
                spans = exporter.get_finished_spans()
                found = [s for s in spans if s.kind == SpanKind.CLIENT]
                return found if len(found) == 2 else []

            bursty, quiet = wait_for(upstream_spans, 10, "two upstream spans")
    finally:
        provider.shutdown()
    assert bursty.attributes is not None and quiet.attributes is not None
    assert int(bursty.attributes["streamhop.upstream.bursts"]) >= 1  # type: ignore[arg-type]
    assert "streamhop.upstream.bursts" not in quiet.attributes


# --- the simulator's buffered fault --------------------------------------------------------------


def lumps(simulator: StreamhopProcess, headers: Mapping[str, str]) -> tuple[list[float], str]:
    """Stream ``BUFFERED_BODY`` from the simulator; return the start time of each lump of reads
    (reads less than 100 ms apart are one lump), from sending, and the text."""
    starts: list[float] = []
    last = None
    body = b""
    with httpx2.Client(timeout=30) as http:
        sent = time.monotonic()
        url = simulator.url + CHAT
        with http.stream("POST", url, json=BUFFERED_BODY, headers=dict(headers)) as response:
            assert response.status_code == 200
            for chunk in response.iter_raw():
                now = time.monotonic()
                if last is None or now - last > 0.1:
                    starts.append(now - sent)
                last = now
                body += chunk
    return starts, chat_text(sse_data(body))


def test_the_buffered_fault_holds_events_and_releases_them_in_lumps(
    simulator: StreamhopProcess,
) -> None:
    starts, text = lumps(simulator, BUFFERED)
    # Nothing before the first release; at most one lump per release and one at the end.
    assert starts[0] >= EVERY_MS / 1000
    assert 1 <= len(starts) <= 3, starts
    paced_starts, paced_text = lumps(simulator, {})
    assert paced_starts[0] < EVERY_MS / 1000
    assert text == paced_text  # the same answer, only held


def test_the_buffered_fault_header_is_validated_and_named(simulator: StreamhopProcess) -> None:
    with httpx2.Client(timeout=30) as http:
        response = http.post(
            simulator.url + CHAT, json=BUFFERED_BODY, headers={"x-sim-buffered-every-ms": "-5"}
        )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "x-sim-buffered-every-ms"


def test_the_buffered_fault_flag_is_validated_and_named(
    capsys: pytest.CaptureFixture[str],
) -> None:
    parser = argparse.ArgumentParser(prog="streamhop simulate")
    add_arguments(parser)
    assert parser.parse_args(["--buffered-every-ms", "600"]).buffered_every_ms == 600
    assert parser.parse_args([]).buffered_every_ms == 0
    with pytest.raises(SystemExit):
        parser.parse_args(["--buffered-every-ms", "soon"])
    assert "--buffered-every-ms" in capsys.readouterr().err


# --- [metrics] keys ------------------------------------------------------------------------------


def test_burst_keys_default_to_500_ms_and_20_events() -> None:
    metrics = config_from_dict({"routes": [{"prefix": "/", "upstream": "http://x"}]}).metrics
    assert (metrics.burst_gap_ms, metrics.burst_events) == (500.0, 20)
    configured = config_from_dict(
        {
            "routes": [{"prefix": "/", "upstream": "http://x"}],
            "metrics": {"burst_gap_ms": 250, "burst_events": 8},
        }
    ).metrics
    assert (configured.burst_gap_ms, configured.burst_events) == (250.0, 8)


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        ("burst_gap_ms", "500", "expected a number"),
        ("burst_gap_ms", 1, "must be >= 10"),
        ("burst_events", 1, "must be >= 2"),
        ("burst_events", 2.5, "expected an integer"),
        ("burst_events", True, "expected an integer"),
    ],
)
def test_burst_keys_are_validated_and_named(key: str, value: object, reason: str) -> None:
    data = {"routes": [{"prefix": "/", "upstream": "http://x"}], "metrics": {key: value}}
    with pytest.raises(ConfigError, match=re.escape(reason)) as caught:
        config_from_dict(data)
    assert f"metrics.{key}" in str(caught.value)


# --- the demo ------------------------------------------------------------------------------------


def test_the_demo_shows_the_detector_fire_on_a_buffered_stream_only() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "streamhop.sidecar.cli", "demo", "--rounds", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    line = re.search(
        r"Burst detector: .* streamhop counted (\d+) upstream bursts .*; (\d+) for the paced",
        result.stdout,
    )
    assert line is not None, result.stdout
    assert int(line.group(1)) >= 1 and int(line.group(2)) == 0


def test_a_buffering_hop_is_still_seen_while_the_process_is_busy(
    simulator: StreamhopProcess,
) -> None:
    """The proxy under load: a thread in the sidecar's own process keeps the interpreter busy
    (it holds the GIL in 5 ms slices), so the loop reads a released lump late and over several
    reads. The run of reads after the silence is still one burst."""
    config = config_from_dict({"routes": [{"prefix": "/", "upstream": simulator.url}]})
    registry = CollectorRegistry()
    metrics = Metrics(registry, burst_gap_s=GAP_MS / 1000, burst_events=20)
    app = build_proxy_app(config, SidecarState(), metrics, None, None)
    stop = threading.Event()
    spins = 0

    def hog() -> None:
        nonlocal spins
        while not stop.is_set():
            sum(range(20_000))  # pure-Python work: holds the GIL until the switch interval
            spins += 1

    busy = threading.Thread(target=hog, daemon=True)
    with BackgroundUvicorn(app, lifespan="on") as server, httpx2.Client(timeout=60) as http:
        busy.start()
        try:
            assert stream_once(http, server.url, BUFFERED, BUFFERED_BODY).status == 200
        finally:
            stop.set()
            busy.join(10)
    assert spins > 0, "the process was busy while the stream ran"
    bursts = registry.get_sample_value(
        "streamhop_upstream_bursts_total", {"route": "/", "model": "other"}
    )
    assert bursts is not None and bursts >= 1
