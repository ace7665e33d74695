"""What the two edges (the HTTP proxy, the WebSocket bridge) share, and the one way they start
a stream.

One :class:`EdgeContext` per process: the config, the upstream pool, the open-stream registry,
the metrics, the route table, the resume binding and store, tracing and the log line's
callback. :meth:`EdgeContext.open` is the stream start both edges run once a request is
admitted (:mod:`~streamhop.sidecar.admission.admit`): the record, metrics, span and upstream
headers (:class:`~.opening.OpenStream`) and the :class:`~.driver.StreamRequest` for the driver.
:meth:`EdgeContext.handoffs` is the drain handoff both edges use.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from streamhop.middleware.controls import Controls
from streamhop.middleware.observe.metrics import Metrics
from streamhop.sidecar.admission.guard import RequestPath
from streamhop.sidecar.admission.headers import merge_route_headers
from streamhop.sidecar.admission.routing import RouteTable
from streamhop.sidecar.config import Config, RouteConfig
from streamhop.sidecar.observe.record import StreamRecord
from streamhop.sidecar.observe.tracing import Tracing
from streamhop.sidecar.recording import Recordings
from streamhop.sidecar.resume import ResumeError, ResumeStore
from streamhop.sidecar.resume.binding import ResumeBinding
from streamhop.sidecar.upstream.driver import StreamRequest
from streamhop.sidecar.upstream.opening import OpenStream
from streamhop.sidecar.upstream.pool import UpstreamPool
from streamhop.sidecar.upstream.registry import SidecarState

logger = logging.getLogger(__name__)

RECENT_RESUMES: Final = 4096
"""How many resumed log keys a process remembers (oldest forgotten first): a resume that
arrives before the sidecar noticed the old connection drop still counts for the grace."""
_TRACE_HEADERS: Final = frozenset(("traceparent", "tracestate"))

Handoff = Callable[[int], Coroutine[Any, Any, Any]]
"""Tells one client to reconnect elsewhere after ``retry_ms`` (its argument)."""


@dataclass(slots=True, eq=False)
class EdgeContext:
    """The process-wide parts an edge needs to admit, start, resume and stop streams.

    Attributes:
        config: the sidecar config.
        pool: the upstream connection pool.
        state: the registry of open streams (draining, ``max_streams``, the stop index).
        metrics: the metric families.
        table: the route table (built from ``config.routes``).
        binding: the resume binding: HTTP and WebSocket must agree on a log's key.
        on_finish: called with each stream's record once it ended (the JSON log line).
        tracing: a span per stream, or ``None``.
        resume: the resume store, set at startup when ``[resume]`` is on.
        recordings: ``[record]``, set at startup when its ``dir`` is; decides per stream.
        graced: generations waiting out their disconnect grace here, by log key; the event is
            set when a client resumes that log (:meth:`resuming`).
    """

    config: Config
    pool: UpstreamPool
    state: SidecarState
    metrics: Metrics
    table: RouteTable
    binding: ResumeBinding
    on_finish: Callable[[StreamRecord], None] | None = None
    tracing: Tracing | None = None
    resume: ResumeStore | None = None
    recordings: Recordings | None = None
    graced: dict[str, asyncio.Event] = field(default_factory=dict)
    _resumed: dict[str, None] = field(default_factory=dict)
    _signals: set[asyncio.Task[None]] = field(default_factory=set)

    @classmethod
    def build(
        cls,
        config: Config,
        pool: UpstreamPool,
        state: SidecarState,
        metrics: Metrics,
        on_finish: Callable[[StreamRecord], None] | None = None,
        tracing: Tracing | None = None,
    ) -> EdgeContext:
        """The context for ``config``: its route table and resume binding."""
        table = RouteTable(config.routes)
        binding = ResumeBinding.from_config(config.resume)
        return cls(config, pool, state, metrics, table, binding, on_finish, tracing)

    def log_key(
        self, route: RouteConfig, stream_id: str, headers: list[tuple[bytes, bytes]]
    ) -> str:
        """The resume log's key of ``stream_id`` on ``route`` for the caller with ``headers``
        (:meth:`~streamhop.sidecar.resume.binding.ResumeBinding.log_key`)."""
        return self.binding.log_key(route.prefix, stream_id, headers)

    def open(
        self,
        *,
        route: RouteConfig,
        path: RequestPath,
        method: str,
        query: bytes,
        body: bytes,
        model: str | None,
        streaming: bool,
        client_headers: list[tuple[bytes, bytes]],
        forward: list[tuple[str, str]],
        controls: Controls,
        format_hint: str | None,
    ) -> tuple[OpenStream, StreamRequest]:
        """Start one stream's bookkeeping (:class:`~.opening.OpenStream`: a record with a new
        random stream id, bound metrics, a span) and the request the driver sends upstream:
        the route's headers over the client's ``forward``, our trace context instead of the
        client's. ``query`` is the raw query string; ``client_headers`` the raw ones (for the
        trace context); ``format_hint`` the format errors take before the answer's is known."""
        record = StreamRecord(
            stream_id=secrets.token_hex(8),
            route=route.prefix,
            method=method,
            path=path.text,
            received_at=time.monotonic(),
        )
        record.model = model
        record.streaming_request = streaming
        timeout_s = controls.deadline_s(route.timeout_s)
        headers = merge_route_headers(forward, route.upstream_headers)
        traced = None
        if self.tracing is not None:
            traced = self.tracing.start(record, route, client_headers)
            # The provider continues our upstream span, not the client's.
            headers = [(n, v) for n, v in headers if n.lower() not in _TRACE_HEADERS]
            headers.extend(traced.upstream_headers(record).items())
        opened = OpenStream(
            record=record,
            observed=self.metrics.stream(route.prefix, model),
            headers=headers,
            deadline=None if timeout_s is None else record.received_at + timeout_s,
            traced=traced,
            registry=self.state,
            on_finish=self.on_finish,
        )
        if self.recordings is not None:
            opened.recorder = self.recordings.start(route, controls, opened.headers, body)
        request = StreamRequest(
            config=self.config,
            pool=self.pool,
            route=route,
            method=method,
            url=self.table.upstream_url(route, path, query),
            headers=opened.headers,
            body=body,
            controls=controls,
            record=opened.record,
            observed=opened.observed,
            deadline=opened.deadline,
            format_hint=format_hint,
            recorder=opened.recorder,
        )
        return opened, request

    def handoffs(self, targets: Iterable[Handoff]) -> list[Coroutine[Any, Any, Any]]:
        """Draining with a shared (redis) resume store: each target's handoff, after a random
        delay in ``[0, handoff_jitter_ms]`` so the clients do not all reconnect at once;
        nothing with another store (no other replica could resume the stream)."""
        if self.resume is None or self.config.resume.store != "redis":
            return []
        jitter = self.config.resume.handoff_jitter_ms
        return [handoff(int(random.uniform(0, jitter))) for handoff in targets]

    async def grace(self, key: str, work: asyncio.Future[None], grace_s: float) -> bool:
        """Wait out a disconnect grace (``on_disconnect = "grace"``): until ``work`` ends, a
        client resumes the log under ``key`` (here, or on a replica sharing the store), or
        ``grace_s`` seconds pass. True when a resume came (before or during the wait)."""
        if key in self._resumed:
            return True
        resumed = self.graced[key] = asyncio.Event()
        waiter = asyncio.ensure_future(resumed.wait())
        try:
            await asyncio.wait((work, waiter), timeout=grace_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            del self.graced[key]
        return resumed.is_set()

    def resuming(self, key: str) -> None:
        """A client resumes the log under ``key`` (``Last-Event-ID`` or a WebSocket ``resume``,
        bound to the caller): a generation waiting out its grace here goes on; with a shared
        store the other replicas are told, since the generation may run on one of them."""
        here = key in self.graced  # the generation runs here: no other replica needs telling
        self.resumed_elsewhere(key)
        store = self.resume
        if not here and store is not None and store.name == "redis":
            task = asyncio.get_running_loop().create_task(self._publish_resumed(store, key))
            self._signals.add(task)
            task.add_done_callback(self._signals.discard)

    def resumed_elsewhere(self, key: str) -> None:
        """Note that the log under ``key`` was resumed (here, or on another replica: the
        store's :meth:`~streamhop.sidecar.resume.store.ResumeStore.listen_resumes`)."""
        resumed = self._resumed
        resumed[key] = None
        if len(resumed) > RECENT_RESUMES:
            del resumed[next(iter(resumed))]
        waiting = self.graced.get(key)
        if waiting is not None:
            waiting.set()

    @staticmethod
    async def _publish_resumed(store: ResumeStore, key: str) -> None:
        try:
            await store.publish_resumed(key)
        except ResumeError as exc:  # counted by the store; the generation's grace decides
            logger.warning("resume: telling the other replicas failed: %s", exc)
