"""The upstream burst detector, driven by a fake clock (no sleeps), and its metrics.

Times are seconds on the fake clock. A "read" is one :meth:`BurstDetector.arrival`: the events
one upstream read completed, all at the read's instant.
"""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from streamhop.middleware.observe.bursts import WINDOW_S, BurstDetector
from streamhop.middleware.observe.metrics import GAP_BUCKETS, Metrics

GAP_S = 0.5
EVENTS = 20


def paced(detector: BurstDetector, start: float, count: int, every_s: float) -> float:
    """``count`` reads of one event each, ``every_s`` apart from ``start``; returns the last
    read's time."""
    now = start
    for i in range(count):
        now = start + i * every_s
        detector.arrival(1, now)
    return now


def test_a_gap_then_events_in_one_read_is_one_burst() -> None:
    detector = BurstDetector(GAP_S, EVENTS, started_at=0.0)
    last = paced(detector, 0.05, 10, 0.005)
    assert detector.arrival(EVENTS, last + GAP_S) is True
    assert detector.bursts == 1
    assert detector.last_gap_s == pytest.approx(GAP_S)


def test_events_of_one_burst_may_arrive_in_several_reads_within_the_window() -> None:
    detector = BurstDetector(GAP_S, EVENTS, started_at=0.0)
    at = paced(detector, 0.05, 3, 0.005) + 0.7
    assert detector.arrival(8, at) is False
    assert detector.arrival(8, at + 0.0004) is False
    assert detector.arrival(4, at + 0.9 * WINDOW_S) is True
    assert detector.bursts == 1


def test_single_event_reads_after_the_window_do_not_continue_a_run() -> None:
    """After a gap, events that come one per read, each after the 1 ms window, are a provider
    streaming again (a model that paused), not a released buffer."""
    detector = BurstDetector(GAP_S, EVENTS, started_at=0.0)
    at = paced(detector, 0.05, 3, 0.005) + 0.7
    assert detector.arrival(EVENTS - 1, at) is False
    for i in range(1, 30):
        assert detector.arrival(1, at + i * 2 * WINDOW_S) is False
    assert detector.bursts == 0


def test_a_burst_read_by_a_busy_process_over_several_late_reads_is_one_burst() -> None:
    """The loaded-machine case: a 1.5 s stall, then 170 waiting events read in nine reads 2 to
    9 ms apart (the loop served other streams between them)."""
    detector = BurstDetector(GAP_S, EVENTS, started_at=0.0)
    at = paced(detector, 0.05, 10, 0.005) + 1.5
    counts = [3, 12, 25, 18, 30, 22, 20, 20, 20]
    gaps = [0.0, 0.004, 0.009, 0.002, 0.006, 0.008, 0.003, 0.005, 0.007]
    results = []
    for count, gap in zip(counts, gaps, strict=True):
        at += gap
        results.append(detector.arrival(count, at))
    assert results.count(True) == 1
    assert detector.bursts == 1


def test_late_multi_event_reads_past_the_run_gap_end_the_run() -> None:
    detector = BurstDetector(GAP_S, EVENTS, started_at=0.0)
    at = paced(detector, 0.05, 3, 0.005) + 0.7
    assert detector.arrival(EVENTS - 5, at) is False
    assert detector.arrival(10, at + detector.run_gap_s + 0.001) is False
    assert detector.bursts == 0


def test_one_burst_is_counted_once_however_many_events_follow() -> None:
    detector = BurstDetector(GAP_S, EVENTS, started_at=0.0)
    at = paced(detector, 0.05, 3, 0.005) + 0.6
    assert detector.arrival(EVENTS, at) is True
    assert detector.arrival(500, at + 0.0001) is False
    assert detector.arrival(500, at + 0.0002) is False
    assert detector.bursts == 1


def test_a_gap_just_short_of_the_threshold_is_no_burst() -> None:
    detector = BurstDetector(GAP_S, EVENTS, started_at=0.0)
    last = paced(detector, 0.05, 3, 0.005)
    assert detector.arrival(1000, last + GAP_S - 1e-6) is False
    assert detector.bursts == 0


def test_a_gap_followed_by_too_few_events_is_a_slow_provider_not_a_burst() -> None:
    detector = BurstDetector(GAP_S, EVENTS, started_at=0.0)
    last = paced(detector, 0.05, 3, 0.005)
    for stall in range(1, 5):
        # A long pause, then events one by one again: the model was thinking.
        last = paced(detector, last + stall * GAP_S, 30, 0.002)
    assert detector.bursts == 0


def test_a_paced_fast_stream_has_no_burst_and_gaps_at_its_cadence() -> None:
    detector = BurstDetector(GAP_S, EVENTS, started_at=0.0)
    gaps = []
    for i in range(2000):
        # 200 events/s, sometimes two in one read.
        detector.arrival(1 + i % 2, 0.04 + i * 0.005)
        gaps.append(detector.last_gap_s)
    assert detector.bursts == 0
    assert gaps[0] is None
    assert gaps[1:] == pytest.approx([0.005] * 1999)


def test_a_hop_that_releases_every_600_ms_gives_a_burst_per_release() -> None:
    detector = BurstDetector(GAP_S, EVENTS, started_at=0.0)
    # The whole answer held: the first release comes 600 ms after the start (no event before).
    releases = [0.6, 1.2, 1.8, 2.4]
    for at in releases:
        detector.arrival(60, at)
        detector.arrival(60, at + 0.0002)  # the rest of the same release, a second read
    assert detector.bursts == len(releases)


def test_the_wait_for_the_first_events_is_a_gap_but_not_an_inter_event_gap() -> None:
    detector = BurstDetector(GAP_S, EVENTS, started_at=10.0)
    assert detector.arrival(EVENTS, 10.0 + GAP_S) is True
    assert detector.last_gap_s is None
    detector.arrival(1, 10.0 + GAP_S + 0.01)
    assert detector.last_gap_s == pytest.approx(0.01)


def test_a_slow_first_token_then_paced_events_is_no_burst() -> None:
    detector = BurstDetector(GAP_S, EVENTS, started_at=0.0)
    # A reasoning model: 3 s to the first token, then the usual preamble and paced deltas.
    detector.arrival(4, 3.0)
    paced(detector, 3.005, 100, 0.005)
    assert detector.bursts == 0


def test_without_a_start_the_first_read_only_sets_the_clock() -> None:
    detector = BurstDetector(GAP_S, EVENTS)
    assert detector.arrival(1000, 5.0) is False
    assert detector.last_gap_s is None
    assert detector.arrival(EVENTS, 5.0 + GAP_S) is True


def test_reads_without_events_change_nothing() -> None:
    detector = BurstDetector(GAP_S, EVENTS, started_at=0.0)
    detector.arrival(1, 0.05)
    for i in range(100):
        assert detector.arrival(0, 0.06 + i * 0.01) is False  # partial events, comments
    assert detector.last_at == 0.05
    assert detector.arrival(EVENTS, 0.05 + GAP_S) is True


def test_thresholds_are_the_callers() -> None:
    detector = BurstDetector(0.2, 5, started_at=0.0)
    assert detector.arrival(5, 0.2) is True
    assert detector.arrival(4, 0.4) is False
    assert "bursts=1" in repr(detector)


@pytest.mark.parametrize(("gap_s", "events"), [(0.001, 20), (0.0, 20), (0.5, 1), (0.5, 0)])
def test_impossible_thresholds_are_refused(gap_s: float, events: int) -> None:
    with pytest.raises(ValueError, match=r"gap_s|min_events"):
        BurstDetector(gap_s, events)
    with pytest.raises(ValueError, match=r"gap_s|min_events"):
        Metrics(CollectorRegistry(), burst_gap_s=gap_s, burst_events=events)


# --- through StreamMetrics, as the pump calls it ------------------------------------------------


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_stream_metrics_count_bursts_and_observe_gaps_per_read() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry, burst_gap_s=0.3, burst_events=10)
    labels = {"route": "/r", "model": "other"}
    observed = metrics.stream("/r", "m")
    # Both series exist at 0 before any event, so dashboards show 0, not "no data".
    assert registry.get_sample_value("streamhop_upstream_bursts_total", labels) == 0.0
    bucket = {**labels, "le": "+Inf"}
    assert registry.get_sample_value("streamhop_upstream_inter_event_seconds_bucket", bucket) == 0
    start = observed.detector.last_at
    assert start is not None
    observed.upstream_read(0, 100, 1e-5, start + 0.01)  # a partial event: no arrival
    observed.upstream_read(3, 900, 1e-5, start + 0.02)  # the first events: no gap observed
    observed.upstream_read(1, 300, 1e-5, start + 0.024)
    observed.upstream_read(40, 12000, 1e-5, start + 0.425)  # held for 400 ms, then together
    assert observed.upstream_bursts == 1
    assert sample(registry, "streamhop_upstream_bursts_total", **labels) == 1
    count = "streamhop_upstream_inter_event_seconds_count"
    # Gaps are counted per stream and added at a flush (every COUNTER_FLUSH_S at a write, and
    # at the stream's end); a burst is counted at once.
    assert sample(registry, count, **labels) == 0
    observed.flush()
    assert sample(registry, count, **labels) == 2
    total = sample(registry, "streamhop_upstream_inter_event_seconds_sum", **labels)
    assert total == pytest.approx(0.004 + 0.401)
    le = {**labels, "le": "0.005"}
    assert sample(registry, "streamhop_upstream_inter_event_seconds_bucket", **le) == 1


def test_gap_buckets_run_from_half_a_millisecond_to_ten_seconds() -> None:
    assert GAP_BUCKETS[0] == 0.0005 and GAP_BUCKETS[-1] == 10.0
    assert list(GAP_BUCKETS) == sorted(set(GAP_BUCKETS))
    assert 0.5 in GAP_BUCKETS  # the default burst_gap_ms is a bucket boundary
