"""The two apps of ``streamhop serve``: the proxy (plain ASGI) and the admin listener
(Starlette).

Admin endpoints: ``/healthz`` (200 while the process runs), ``/readyz`` (200 once serving, 503
while draining or before start), ``/metrics`` (Prometheus text format); a request whose ``Host``
the admin listener does not serve gets 421 first (:class:`AdminHostCheck`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from streamhop.middleware.observe.metrics import Metrics
from streamhop.sidecar.admission.guard import host_allowed, host_error
from streamhop.sidecar.asgi import Receive, Scope, Send, json_error
from streamhop.sidecar.config import Config, ServerConfig
from streamhop.sidecar.http.proxy import Proxy
from streamhop.sidecar.observe.record import StreamRecord
from streamhop.sidecar.observe.tracing import Tracing
from streamhop.sidecar.recording import Recordings
from streamhop.sidecar.resume import build_store
from streamhop.sidecar.resume.memory import EVICTION_REASONS, MemoryStore
from streamhop.sidecar.upstream.edge import EdgeContext
from streamhop.sidecar.upstream.pool import UpstreamPool
from streamhop.sidecar.upstream.registry import SidecarState

logger = logging.getLogger(__name__)


class ProxyApp:
    """The proxying ASGI app: ``lifespan`` handled here, every ``http`` and ``websocket`` scope
    handed straight to :class:`~.http.proxy.Proxy`.

    A plain ASGI callable rather than a Starlette app: every downstream body write of a stream
    would otherwise pass through Starlette's error and exception middlewares' ``send`` wrappers
    (two extra awaits per write, ~14% of the sidecar's CPU under load). Unhandled errors still
    get a 500 from uvicorn.
    """

    def __init__(
        self,
        proxy: Proxy,
        startup: Callable[[], Awaitable[None]],
        shutdown: Callable[[], Awaitable[None]],
    ) -> None:
        self.proxy = proxy
        self._startup = startup
        self._shutdown = shutdown

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.proxy(scope, receive, send)
            return
        # ASGI lifespan protocol: startup, then shutdown, each answered complete or failed.
        for step, hook in (("startup", self._startup), ("shutdown", self._shutdown)):
            message = await receive()
            if message["type"] != f"lifespan.{step}":
                return
            try:
                await hook()
            except Exception as exc:
                logger.exception("lifespan %s failed", step)
                await send({"type": f"lifespan.{step}.failed", "message": repr(exc)})
                return
            await send({"type": f"lifespan.{step}.complete"})


def build_proxy_app(
    config: Config,
    state: SidecarState,
    metrics: Metrics,
    on_finish: Callable[[StreamRecord], None] | None = None,
    tracing: Tracing | None = None,
) -> ProxyApp:
    """The proxying app: every method and path goes to :class:`~.http.proxy.Proxy`.

    The upstream pool and the resume store (``[resume] enabled``) are created at startup
    (inside the server's loop) and closed at shutdown. The recordings directory (``[record]
    dir``) is created here; pending recordings are written before shutdown ends.

    Raises:
        ConfigError: ``[record] dir`` cannot be created or read.
    """
    pool = UpstreamPool(trust_env=config.server.trust_env)
    edge = EdgeContext.build(config, pool, state, metrics, on_finish, tracing)
    edge.recordings = recordings = Recordings.from_config(
        config.record, metrics.registry, config.resume.binding_headers
    )
    proxy = Proxy(edge)

    async def startup() -> None:
        if config.resume.enabled:
            store_name = config.resume.store
            for kind in ("write", "read", "log_full", "stop_forged"):
                metrics.resume_errors.labels(store_name, kind)

            def on_error(kind: str) -> None:
                metrics.resume_errors.labels(store_name, kind).inc()

            def on_evict(reason: str) -> None:
                metrics.resume_evictions.labels(reason).inc()

            store = build_store(config.resume, on_error, on_evict)
            if isinstance(store, MemoryStore):
                for reason in EVICTION_REASONS:
                    metrics.resume_evictions.labels(reason)
                memory = store  # read at scrape time only: nothing per event
                metrics.resume_memory_bytes.set_function(lambda: memory.bytes_held)
            proxy.attach_resume(store)
        state.ready = True

    async def shutdown() -> None:
        state.ready = False
        await pool.close()
        if proxy.resume is not None:
            await proxy.resume.aclose()
        if tracing is not None:
            tracing.shutdown()
        if recordings is not None:
            await recordings.aclose()

    return ProxyApp(proxy, startup, shutdown)


class AdminHostCheck:
    """Pure ASGI middleware of the admin app: ``421 misdirected_request`` for a ``Host`` the
    admin listener does not serve (:func:`~.admission.guard.host_allowed` with ``admin=True``),
    so a DNS-rebinding page cannot read ``/metrics``; ``400 bad_host`` first for a missing (on
    HTTP/1.1), repeated or malformed ``Host`` (:func:`~.admission.guard.host_error`)."""

    def __init__(
        self, app: Callable[[Scope, Receive, Send], Awaitable[None]], server: ServerConfig
    ) -> None:
        self.app = app
        self.server = server

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        problem = None
        if scope["type"] == "http":
            problem = host_error(scope["headers"], scope["http_version"])
        if problem is not None:
            await json_error(
                send, 400, None, "bad_host", problem, extra_headers=[(b"connection", b"close")]
            )
            return
        if scope["type"] == "http" and not host_allowed(self.server, scope["headers"], admin=True):
            await json_error(
                send,
                421,
                None,
                "misdirected_request",
                "this Host is not served here (see [server] allowed_hosts)",
            )
            return
        await self.app(scope, receive, send)


def build_admin_app(
    state: SidecarState, registry: CollectorRegistry, server: ServerConfig
) -> Starlette:
    """The admin app: health, readiness and metrics, behind the ``Host`` check for ``server``."""

    async def readyz(request: Request) -> Response:
        if state.ready and not state.draining:
            return JSONResponse({"status": "ready", "active_streams": state.active})
        reason = "draining" if state.draining else "starting"
        return JSONResponse({"status": reason}, status_code=503)

    return admin_app(readyz, registry, server)


def admin_app(
    readyz: Callable[[Request], Awaitable[Response]],
    registry: CollectorRegistry,
    server: ServerConfig,
) -> Starlette:
    """An admin listener's app: ``/healthz`` (200 while the process runs), ``readyz`` at
    ``/readyz``, ``/metrics`` from ``registry``, behind the ``Host`` check for ``server``
    (this process's, or a supervisor's of ``[server] workers > 1``)."""

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics),
        ],
        middleware=[Middleware(AdminHostCheck, server=server)],
    )
