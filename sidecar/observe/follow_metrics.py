"""The followers' metric families: ``streamhop_followers`` (open followers) and
``streamhop_follower_bytes_total`` (bytes written to them), by ``route``.

A follower (``GET <prefix>/streamhop/v1/streams/<id>``, or a WebSocket ``follow``) is a resume
from the log, served by the same code; these two families are the only place the two are told
apart. They live here rather than in :class:`~streamhop.middleware.observe.metrics.Metrics`
because followers are the sidecar's alone (the ASGI middleware has no resume log), and they are
registered on the app's own registry, the one ``Metrics`` uses, so ``/metrics`` shows them.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge

__all__ = ["Follower", "FollowerMetrics", "follower_metrics"]


class Follower:
    """One open follower's bound series: :meth:`wrote` per write, :meth:`close` once at its
    end (idempotent)."""

    __slots__ = ("_bytes", "_open")

    def __init__(self, metrics: FollowerMetrics, route: str) -> None:
        self._open: Gauge | None = metrics.open.labels(route)
        self._bytes = metrics.bytes.labels(route)
        self._open.inc()

    def wrote(self, size: int) -> None:
        """``size`` bytes were handed to the follower's transport."""
        self._bytes.inc(size)

    def close(self) -> None:
        """The follower ended (its stream ended, it left, or it was refused)."""
        if self._open is not None:
            self._open.dec()
            self._open = None


class FollowerMetrics:
    """The followers' families, registered in ``registry`` (see the module docstring).

    Args:
        registry: the app's registry (:attr:`~streamhop.middleware.observe.metrics.Metrics.
            registry`).
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.open = Gauge(
            "streamhop_followers",
            "Followers reading a stream by its id now (HTTP GET on the stream control path and "
            "WebSocket follow messages).",
            ("route",),
            registry=registry,
            multiprocess_mode="livesum",  # [server] workers > 1: the workers' added up
        )
        self.bytes = Counter(
            "streamhop_follower_bytes",
            "Bytes written to followers (HTTP body bytes, WebSocket frame text bytes).",
            ("route",),
            registry=registry,
        )

    def start(self, routes: Iterable[str]) -> None:
        """Create the series of ``routes`` (route prefixes) at 0."""
        for route in routes:
            self.open.labels(route)
            self.bytes.labels(route)

    def follower(self, route: str) -> Follower:
        """A follower opened on ``route`` (a route prefix): counted open until
        :meth:`Follower.close`."""
        return Follower(self, route)


_BY_REGISTRY: weakref.WeakKeyDictionary[CollectorRegistry, FollowerMetrics] = (
    weakref.WeakKeyDictionary()
)


def follower_metrics(registry: CollectorRegistry) -> FollowerMetrics:
    """The followers' families of ``registry``, registered on first use.

    Both edges (the HTTP proxy and each WebSocket session) reach them through the registry they
    already share: a registry refuses the same family twice, so there is one set per registry.
    """
    found = _BY_REGISTRY.get(registry)
    if found is None:
        found = _BY_REGISTRY[registry] = FollowerMetrics(registry)
    return found
