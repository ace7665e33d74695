"""The supervisor's own metric families (``[server] workers > 1``), beside the workers' (read
from their files by :class:`~prometheus_client.multiprocess.MultiProcessCollector`)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class WorkerMetrics:
    """``streamhop_workers`` and ``streamhop_worker_restarts_total``, registered in
    ``registry`` (the supervisor's; a single process has neither)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.workers = Gauge(
            "streamhop_workers",
            "Worker processes running ([server] workers > 1 only), draining ones included.",
            registry=registry,
        )
        self.restarts = Counter(
            "streamhop_worker_restarts",
            "Workers that exited without being asked to and were started again.",
            registry=registry,
        )
