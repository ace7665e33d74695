"""The supervisor's admin listener (``[server] workers > 1``): the single process's admin app
(:func:`~streamhop.sidecar.app.admin_app`: ``/healthz``, the ``Host`` check) with its own
readiness and metrics.

``/readyz``: 200 when every worker of the current set has said it serves (a worker that died
counts as not ready until its replacement is), 503 while starting, while a worker is being
replaced, and once draining. ``/metrics``: every worker's families, merged from the files
prometheus-client writes in multiprocess mode (counters and histograms summed, dead workers'
included; the live gauges summed over the live workers), plus the supervisor's own
(:mod:`.metrics`).
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from streamhop.sidecar.app import admin_app
from streamhop.sidecar.config import ServerConfig


def build_supervisor_admin_app(
    readiness: Callable[[], tuple[bool, str, int]],
    registry: CollectorRegistry,
    server: ServerConfig,
) -> Starlette:
    """The supervisor's admin app.

    Args:
        readiness: ``(ready, status, workers ready)``, read per request (``status``:
            ``ready``, ``starting``, ``draining``).
        registry: holds a ``MultiProcessCollector`` over the workers' files and the
            supervisor's families.
        server: for the ``Host`` check.
    """

    async def readyz(request: Request) -> Response:
        ready, status, count = readiness()
        return JSONResponse(
            {"status": status, "workers_ready": count}, status_code=200 if ready else 503
        )

    return admin_app(readyz, registry, server)
