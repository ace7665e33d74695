"""Histogram observations gathered per stream and added to Prometheus in batches.

A stream observes its per-read and per-write histograms (proxy overhead per event, upstream
inter-event gap, inter-chunk gap, flush overhead) hundreds of times a second; each
``Histogram.observe`` of ``prometheus_client`` takes a lock and walks the buckets, and was a
fifth of the sidecar's per-read CPU (docs/performance.md). :class:`BatchedHistogram` counts the
observations in a local bucket array (one ``bisect``) and adds them to the labelled child at
:meth:`BatchedHistogram.flush`, with the same result a scrape after the flush would show had
each value been observed at once: bucket counts, count and sum (no exemplars: streamhop sets
none).

It adds to the child's bucket and sum values (``_buckets``, ``_sum``, ``_upper_bounds``: the
layout every ``prometheus_client`` release since 0.4 has, in both the single- and the
multi-process value classes); a child without them is observed value by value.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any


class BatchedHistogram:
    """Local bucket counts for one labelled ``Histogram`` child.

    Args:
        child: the bound child (``Histogram(...).labels(...)``).
    """

    __slots__ = ("_bounds", "_child", "_counts", "_direct", "_sum", "pending")

    def __init__(self, child: Any) -> None:
        self._child = child
        bounds = getattr(child, "_upper_bounds", None)
        self._direct = not (
            isinstance(bounds, list)
            and len(getattr(child, "_buckets", ())) == len(bounds)
            and hasattr(child, "_sum")
        )
        self._bounds: list[float] = [] if self._direct else list(bounds or ())
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0
        self.pending = 0
        """Observations not yet added to the child."""

    def observe(self, value: float) -> None:
        """Record one observation (seconds, bytes: the family's unit)."""
        if self._direct:
            self._child.observe(value)
            return
        self._counts[bisect_left(self._bounds, value)] += 1
        self._sum += value
        self.pending += 1

    def flush(self) -> None:
        """Add the recorded observations to the child."""
        if not self.pending:
            return
        child = self._child
        counts = self._counts
        buckets = child._buckets
        for index, count in enumerate(counts):
            if count:
                buckets[index].inc(count)
                counts[index] = 0
        child._sum.inc(self._sum)
        self._sum = 0.0
        self.pending = 0
