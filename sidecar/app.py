"""The two Starlette apps of ``streamhop serve``: the proxy and the admin listener.

Admin endpoints: ``/healthz`` (200 while the process runs), ``/readyz`` (200 once serving, 503
while draining or before start), ``/metrics`` (Prometheus text format).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute

from streamhop.middleware.observe.metrics import Metrics
from streamhop.sidecar.config import Config
from streamhop.sidecar.http.proxy import Proxy
from streamhop.sidecar.observe.record import StreamRecord
from streamhop.sidecar.observe.tracing import Tracing
from streamhop.sidecar.resume import build_store
from streamhop.sidecar.upstream.opening import SidecarState
from streamhop.sidecar.upstream.pool import UpstreamPool

logger = logging.getLogger(__name__)


def build_proxy_app(
    config: Config,
    state: SidecarState,
    metrics: Metrics,
    on_finish: Callable[[StreamRecord], None] | None = None,
    tracing: Tracing | None = None,
) -> Starlette:
    """The proxying app: every method and path goes to :class:`~.proxy.Proxy`.

    The upstream pool and the resume store (``[resume] enabled``) are created in the app's
    lifespan (inside the server's loop) and closed at shutdown.
    """
    pool = UpstreamPool()
    proxy = Proxy(config, pool, state, metrics, on_finish, tracing)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if config.resume.enabled:
            store_name = config.resume.store
            for kind in ("write", "read", "log_full"):
                metrics.resume_errors.labels(store_name, kind)

            def on_error(kind: str) -> None:
                metrics.resume_errors.labels(store_name, kind).inc()

            proxy.resume = build_store(config.resume, on_error)
        state.ready = True
        try:
            yield
        finally:
            state.ready = False
            await pool.close()
            if proxy.resume is not None:
                await proxy.resume.aclose()
            if tracing is not None:
                tracing.shutdown()

    return Starlette(
        routes=[
            Route("/{path:path}", endpoint=proxy, methods=None),
            WebSocketRoute("/{path:path}", endpoint=proxy),
        ],
        lifespan=lifespan,
    )


def build_admin_app(state: SidecarState, registry: CollectorRegistry) -> Starlette:
    """The admin app: health, readiness and metrics."""

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        if state.ready and not state.draining:
            return JSONResponse({"status": "ready", "active_streams": state.active})
        reason = "draining" if state.draining else "starting"
        return JSONResponse({"status": reason}, status_code=503)

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics),
        ]
    )
