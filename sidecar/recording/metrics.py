"""The Prometheus families of ``[record]`` (docs/observability.md), registered next to
:class:`~streamhop.middleware.observe.metrics.Metrics` in the same registry when recording is
on. The engine's metrics module holds the stream families; these belong to the sidecar alone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from prometheus_client import CollectorRegistry, Counter

from streamhop.middleware.observe.sampled import SampledGauge

RECORDING_RESULTS: Final = ("written", "failed", "too_large", "dropped")
"""``result`` of ``streamhop_recordings_total``."""


class RecordingMetrics:
    """``streamhop_recordings_total{result}``, ``streamhop_recordings_evicted_total`` and
    ``streamhop_recordings_bytes`` (the bytes on disk, read at scrape time from ``on_disk``)."""

    def __init__(self, registry: CollectorRegistry, on_disk: Callable[[], float]) -> None:
        self.recordings = Counter(
            "streamhop_recordings_total",
            "Sampled streams by what became of their recording (written; failed: a write "
            "error; too_large: over max_recording_bytes; dropped: too many writes pending).",
            ("result",),
            registry=registry,
        )
        for result in RECORDING_RESULTS:
            self.recordings.labels(result)  # the series start at 0
        self.evicted = Counter(
            "streamhop_recordings_evicted_total",
            "Recordings deleted, oldest first, to keep [record] dir within max_bytes.",
            registry=registry,
        )
        # Sampled: read from on_disk in a worker too ([server] workers > 1); livemax: the
        # workers share the directory, each counting what it knows of.
        self.disk_bytes = SampledGauge(
            "streamhop_recordings_bytes",
            "Bytes the recordings in [record] dir take (at most max_bytes).",
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.disk_bytes.set_function(on_disk)
