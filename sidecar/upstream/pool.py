"""Requests to providers: one pooled aiohttp ``ClientSession`` per upstream, keep-alive.

Bodies are never decompressed here (``auto_decompress=False``) and no default headers are added
(``User-Agent``/``Accept-Encoding`` are the client's), so a non-streamed answer reaches the client
byte for byte. Connect errors before any byte was sent upstream are retried with exponential
backoff (``retries`` per route); a provider that sends no response headers in time is a
:class:`UpstreamTimeoutError`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import aiohttp
from yarl import URL

from streamhop.middleware.errors import StreamHopError
from streamhop.sidecar.config import RouteConfig, redact_url

logger = logging.getLogger(__name__)

RETRY_BACKOFF_S = 0.05


class UpstreamError(StreamHopError):
    """The provider could not be reached or did not answer; ``kind`` labels metrics."""

    kind = "upstream"


class UpstreamConnectError(UpstreamError):
    """Connection refused, reset, DNS or TLS failure before any response (answered with 502)."""

    kind = "connect"


class UpstreamTimeoutError(UpstreamError):
    """No response headers within the allowed time (answered with 504)."""

    kind = "headers_timeout"


@dataclass(slots=True)
class UpstreamTiming:
    """``time.monotonic()`` seconds of one upstream request's phases; ``None`` until reached."""

    start: float = 0.0
    connected: float | None = None
    headers: float | None = None
    attempts: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


async def _on_request_start(
    session: aiohttp.ClientSession, ctx: SimpleNamespace, params: Any
) -> None:
    timing = ctx.trace_request_ctx
    if isinstance(timing, UpstreamTiming):
        timing.attempts += 1


async def _on_connected(session: aiohttp.ClientSession, ctx: SimpleNamespace, params: Any) -> None:
    timing = ctx.trace_request_ctx
    if isinstance(timing, UpstreamTiming):
        timing.connected = time.monotonic()


class UpstreamPool:
    """Owns the client sessions; create inside the running loop, :meth:`close` at shutdown."""

    def __init__(self) -> None:
        self._sessions: dict[str, aiohttp.ClientSession] = {}
        trace = aiohttp.TraceConfig()
        trace.on_request_start.append(_on_request_start)
        trace.on_connection_create_end.append(_on_connected)
        trace.on_connection_reuseconn.append(_on_connected)
        self._trace = trace

    def session(self, route: RouteConfig) -> aiohttp.ClientSession:
        """The pooled session for ``route.upstream`` (made on first use)."""
        session = self._sessions.get(route.upstream)
        if session is None or session.closed:
            connector = aiohttp.TCPConnector(
                limit=0,  # streamhop's own max_streams bounds concurrency
                keepalive_timeout=30.0,
                ttl_dns_cache=60,
            )
            session = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=False,
                skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
                timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=route.connect_timeout_s, sock_read=None
                ),
                trace_configs=[self._trace],
                read_bufsize=2**16,
            )
            self._sessions[route.upstream] = session
        return session

    async def request(
        self,
        route: RouteConfig,
        method: str,
        url: URL,
        headers: list[tuple[str, str]],
        body: bytes,
        timing: UpstreamTiming,
        headers_timeout: float | None,
    ) -> aiohttp.ClientResponse:
        """Send one request upstream and return once its response headers arrived.

        Args:
            route: the route (its ``retries``, ``connect_timeout_s``).
            method, url, headers, body: the request; ``url`` as
                :meth:`~.routing.RouteTable.upstream_url` built it.
            timing: filled with phase times (loop seconds).
            headers_timeout: seconds to wait for response headers, ``None`` for no bound.

        Raises:
            UpstreamConnectError: every attempt failed to connect.
            UpstreamTimeoutError: no headers within ``headers_timeout``.
        """
        session = self.session(route)
        timing.start = time.monotonic()
        target = url
        attempt = 0
        while True:
            try:
                async with asyncio.timeout(headers_timeout):
                    response = await session.request(
                        method,
                        target,
                        headers=headers,
                        data=body or None,
                        allow_redirects=False,
                        trace_request_ctx=timing,
                    )
                timing.headers = time.monotonic()
                return response
            except aiohttp.ClientConnectorError as exc:
                # Nothing reached the provider: retrying cannot run a generation twice.
                if attempt >= route.retries:
                    reason = redact_url(str(exc.os_error or exc))
                    raise UpstreamConnectError(
                        f"cannot connect to upstream {route.upstream_display}: {reason}"
                    ) from exc
            except TimeoutError as exc:
                raise UpstreamTimeoutError(
                    f"upstream {route.upstream_display} sent no response headers within "
                    f"{headers_timeout:g} s"
                ) from exc
            except aiohttp.ClientError as exc:
                raise UpstreamConnectError(
                    f"upstream {route.upstream_display} failed: {redact_url(str(exc))}"
                ) from exc
            attempt += 1
            delay = RETRY_BACKOFF_S * 2 ** (attempt - 1)
            logger.warning(
                "upstream %s: connect failed, retry %d/%d in %.0f ms",
                route.upstream_display,
                attempt,
                route.retries,
                delay * 1000,
            )
            await asyncio.sleep(delay)

    async def close(self) -> None:
        """Close every session and its pooled connections."""
        sessions = list(self._sessions.values())
        self._sessions.clear()
        for session in sessions:
            await session.close()
