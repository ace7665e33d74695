"""The bookkeeping around one stream that the HTTP proxy and the WebSocket bridge share.

:func:`open_stream` makes the request's record (a new random stream id), its bound metrics, its
trace span, and the headers to send upstream (the route's headers over the client's; our trace
context instead of the client's). :meth:`OpenStream.register` counts the stream in the process's
:class:`SidecarState` (what ``max_streams`` counts and shutdown stops);
:meth:`OpenStream.close` unregisters it, observes its metrics, ends its span and writes its log
line.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from streamhop.middleware.controls import Controls
from streamhop.middleware.observe.metrics import Metrics, StreamMetrics
from streamhop.sidecar.admission.headers import merge_route_headers
from streamhop.sidecar.config import RouteConfig
from streamhop.sidecar.observe.record import StreamRecord, observe_end
from streamhop.sidecar.observe.tracing import RequestTrace, Tracing

_TRACE_HEADERS: Final = frozenset(("traceparent", "tracestate"))


class Stoppable(Protocol):
    """An open stream that shutdown can end."""

    def stop(self, reason: str) -> None: ...


@dataclass(slots=True)
class SidecarState:
    """Process-wide state the endpoints share: readiness, draining, the open streams (what
    shutdown stops)."""

    ready: bool = False
    draining: bool = False
    streams: set[Stoppable] = field(default_factory=set)
    running: dict[
        tuple[str, str], tuple[asyncio.Task[None], Stoppable, list[tuple[bytes, bytes]]]
    ] = field(default_factory=dict)
    """HTTP streams and WebSocket generations by ``(route prefix, stream id)``, with their task
    and the caller's headers (for the stop endpoint's credential check)."""
    on_drain: list[Callable[[], list[Coroutine[Any, Any, Any]]]] = field(default_factory=list)
    """Called once when draining starts (the resume handoffs of HTTP and WebSocket streams);
    each returns its handoffs, which the server runs and lets finish before it closes
    connections."""
    receiving: int = 0
    """Requests whose body is being read (they count toward ``max_streams`` too)."""

    @property
    def active(self) -> int:
        """Requests in flight, those still sending their body included."""
        return len(self.streams) + self.receiving

    def stop_all(self, reason: str) -> int:
        """End every open stream with a terminal error (``shutdown``); returns how many."""
        streams = list(self.streams)
        for stream in streams:
            stream.stop(reason)
        return len(streams)


@dataclass(slots=True)
class OpenStream:
    """A stream's bookkeeping from :func:`open_stream` until :meth:`close`."""

    record: StreamRecord
    observed: StreamMetrics
    headers: list[tuple[str, str]]
    deadline: float | None
    traced: RequestTrace | None
    registry: SidecarState
    on_finish: Callable[[StreamRecord], None] | None
    member: Stoppable | None = None

    def register(self, member: Stoppable) -> None:
        """Count ``member`` as open (shutdown stops it) until :meth:`close`."""
        self.member = member
        self.registry.streams.add(member)
        self.observed.active.inc()

    def close(self) -> None:
        """The stream is over: unregister, observe its metrics, end its span, log it."""
        record = self.record
        if self.member is not None:
            self.registry.streams.discard(self.member)
            self.observed.active.dec()
        record.finished_at = time.monotonic()
        observe_end(self.observed, record)
        if self.traced is not None:
            self.traced.finish(record)
        if self.on_finish is not None:
            self.on_finish(record)


def open_stream(
    *,
    route: RouteConfig,
    method: str,
    path: str,
    model: str | None,
    streaming: bool,
    client_headers: list[tuple[bytes, bytes]],
    forward: list[tuple[str, str]],
    controls: Controls,
    metrics: Metrics,
    tracing: Tracing | None,
    registry: SidecarState,
    on_finish: Callable[[StreamRecord], None] | None,
) -> OpenStream:
    """Start the bookkeeping of one stream (HTTP request or WebSocket generation).

    Args:
        route: the matched route.
        method, path: the request's method and normalised path.
        model, streaming: what the request body says (``model``, ``"stream": true``).
        client_headers: the client's raw headers (for the trace context).
        forward: the headers to forward (control and hop-by-hop ones removed).
        controls: the request's ``X-Streamhop-*`` values (its deadline).

    Returns:
        The record (a new random stream id), bound metrics, the upstream headers (route headers
        over the client's; our trace context instead of the client's), and the deadline.
    """
    record = StreamRecord(
        stream_id=secrets.token_hex(8),
        route=route.prefix,
        method=method,
        path=path,
        received_at=time.monotonic(),
    )
    record.model = model
    record.streaming_request = streaming
    observed = metrics.stream(route.prefix, model)
    timeout_s = controls.deadline_s(route.timeout_s)
    headers = merge_route_headers(forward, route.upstream_headers)
    traced = None
    if tracing is not None:
        traced = tracing.start(record, route, client_headers)
        # The provider continues our upstream span, not the client's.
        headers = [(n, v) for n, v in headers if n.lower() not in _TRACE_HEADERS]
        headers.extend(traced.upstream_headers(record).items())
    return OpenStream(
        record=record,
        observed=observed,
        headers=headers,
        deadline=None if timeout_s is None else record.received_at + timeout_s,
        traced=traced,
        registry=registry,
        on_finish=on_finish,
    )
