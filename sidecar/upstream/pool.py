"""Requests to providers: keep-alive HTTP/1.1 connections (:mod:`.connection`), pooled per origin.

A request is encoded once (its head and body in one write) and sent on the most recently used
idle connection to its origin, or on a new one (TLS through the event loop, verified against the
system CA store, which ``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` replace as OpenSSL reads them). Bodies
are never decompressed here and no header is added but ``Host`` and ``Content-Length``: the
client's ``User-Agent``/``Accept-Encoding`` go as sent, so a non-streamed answer reaches the client
byte for byte.

Retries happen only before anything could have reached the provider: a failed connect is retried
with exponential backoff (``retries`` per route); a kept-alive connection that the provider had
closed when the request was written (no byte of an answer came back) is retried once on a new
connection when the method is idempotent (RFC 9110 §9.2.2), as aiohttp and Go's ``net/http`` do;
a ``POST`` on it is a 502, never sent twice. A provider that sends no response headers in time is
an :class:`UpstreamTimeoutError`.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from dataclasses import dataclass, field
from typing import Any, Final

from yarl import URL

from streamhop.middleware.errors import StreamHopError
from streamhop.sidecar.config import RouteConfig, redact_url
from streamhop.sidecar.upstream.connection import (
    UpstreamBodyError,
    UpstreamConnection,
    UpstreamResponse,
)

logger = logging.getLogger(__name__)

RETRY_BACKOFF_S: Final = 0.05
KEEPALIVE_TIMEOUT_S: Final = 30.0
"""An idle pooled connection older than this (seconds) is closed rather than reused."""
MAX_IDLE_PER_ORIGIN: Final = 1024
"""Idle connections kept per origin; more are closed (``max_streams`` bounds the busy ones)."""
_IDEMPOTENT: Final = frozenset(("GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"))
_BODY_METHODS: Final = frozenset(("POST", "PUT", "PATCH"))
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
_FORBIDDEN: Final = (b"\r", b"\n", b"\x00")

__all__ = [
    "UpstreamBodyError",
    "UpstreamConnectError",
    "UpstreamError",
    "UpstreamPool",
    "UpstreamResponse",
    "UpstreamTimeoutError",
    "UpstreamTiming",
    "encode_request",
]


class UpstreamError(StreamHopError):
    """The provider could not be reached or did not answer; ``kind`` labels metrics."""

    kind = "upstream"


class UpstreamConnectError(UpstreamError):
    """Connection refused, reset, DNS or TLS failure before any response (answered with 502)."""

    kind = "connect"


class UpstreamTimeoutError(UpstreamError):
    """No response headers within the allowed time (answered with 504)."""

    kind = "headers_timeout"


class _ConnectFailed(Exception):
    """A new connection could not be made (the reason is the message); retryable."""


@dataclass(slots=True)
class UpstreamTiming:
    """``time.monotonic()`` seconds of one upstream request's phases; ``None`` until reached."""

    start: float = 0.0
    connected: float | None = None
    headers: float | None = None
    attempts: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def encode_request(method: str, url: URL, headers: list[tuple[str, str]], body: bytes) -> bytes:
    """One HTTP/1.1 request (RFC 9112 §3): request line, ``Host`` (unless ``headers`` has one),
    ``headers`` in order, ``Content-Length`` when there is a body or the method defines one,
    then the body.

    Args:
        method: the request method.
        url: the upstream URL (its path and query are sent as encoded, :mod:`..admission.routing`).
        headers: ``(name, value)`` pairs; names as Latin-1, values as UTF-8 (the client's bytes,
            see :func:`~streamhop.sidecar.admission.headers.upstream_request_headers`).
        body: the request body, possibly empty.

    Raises:
        ValueError: a header name or value contains CR, LF or NUL (it would split the head).
    """
    lines = [f"{method} {url.raw_path_qs} HTTP/1.1\r\n".encode("latin-1")]
    has_host = False
    for name, value in headers:
        raw_name = name.encode("latin-1")
        raw_value = value.encode("utf-8") if not value.isascii() else value.encode("ascii")
        for bad in _FORBIDDEN:
            if bad in raw_value or bad in raw_name:
                raise ValueError(f"header {name!r} contains a CR, LF or NUL byte")
        if not has_host and raw_name.lower() == b"host":
            has_host = True
        lines.append(b"%s: %s\r\n" % (raw_name, raw_value))
    if not has_host:
        lines.insert(1, b"host: %s\r\n" % (url.host_port_subcomponent or "").encode("ascii"))
    if body or method in _BODY_METHODS:
        lines.append(b"content-length: %d\r\n" % len(body))
    lines.append(b"\r\n")
    if body:
        lines.append(body)
    return b"".join(lines)


class UpstreamPool:
    """Owns the upstream connections; create inside the running loop, :meth:`close` at shutdown.

    Args:
        keepalive_timeout_s: how long an idle connection may wait for reuse (seconds).
        max_idle_per_origin: idle connections kept per ``(scheme, host, port)``.
    """

    def __init__(
        self,
        *,
        keepalive_timeout_s: float = KEEPALIVE_TIMEOUT_S,
        max_idle_per_origin: int = MAX_IDLE_PER_ORIGIN,
    ) -> None:
        self._keepalive = keepalive_timeout_s
        self._max_idle = max_idle_per_origin
        self._idle: dict[tuple[str, str, int], list[UpstreamConnection]] = {}
        self._open: set[UpstreamConnection] = set()
        self._tls: ssl.SSLContext | None = None
        self._closed = False

    @property
    def open_connections(self) -> int:
        """Connections open now, busy or idle."""
        return len(self._open)

    @property
    def idle_connections(self) -> int:
        """Idle connections waiting for reuse."""
        return sum(len(idle) for idle in self._idle.values())

    def tls_context(self) -> ssl.SSLContext:
        """The client TLS context: certificate and host name verified against the default CA
        store (``ssl.create_default_context``), ALPN ``http/1.1``."""
        context = self._tls
        if context is None:
            context = ssl.create_default_context()
            context.set_alpn_protocols(["http/1.1"])
            self._tls = context
        return context

    async def request(
        self,
        route: RouteConfig,
        method: str,
        url: URL,
        headers: list[tuple[str, str]],
        body: bytes,
        timing: UpstreamTiming,
        headers_timeout: float | None,
    ) -> UpstreamResponse:
        """Send one request upstream and return once its response headers arrived.

        Args:
            route: the route (its ``retries``, ``connect_timeout_s``).
            method, url, headers, body: the request; ``url`` as
                :meth:`~.routing.RouteTable.upstream_url` built it.
            timing: filled with phase times (``time.monotonic()`` seconds).
            headers_timeout: seconds to wait for response headers (each attempt), ``None`` for
                no bound.

        Returns:
            The response, its body not read yet: the caller must :meth:`~UpstreamResponse.close`
            it (a response read to its end returns its connection to the pool by itself).

        Raises:
            UpstreamConnectError: every attempt failed to connect, the request could not be
                encoded, or the connection failed before an answer.
            UpstreamTimeoutError: no headers within ``headers_timeout``.
        """
        try:
            request = encode_request(method, url, headers, body)
        except ValueError as exc:
            raise UpstreamConnectError(
                f"cannot send to upstream {route.upstream_display}: {exc}"
            ) from None
        key = (url.scheme, url.raw_host or "", url.port or _DEFAULT_PORTS.get(url.scheme, 80))
        timing.start = time.monotonic()
        attempt = 0
        stale_retry = method in _IDEMPOTENT
        while True:
            conn: UpstreamConnection | None = None
            response: UpstreamResponse | None = None
            try:
                async with asyncio.timeout(headers_timeout):
                    timing.attempts += 1
                    conn = self._take_idle(key)
                    if conn is None:
                        conn = await self._connect(route, key)
                    timing.connected = time.monotonic()
                    response = conn.send(request, head_only=method == "HEAD")
                    ready = conn.headers_ready
                    assert ready is not None
                    await ready
                timing.headers = time.monotonic()
                return response
            except _ConnectFailed as exc:
                # Nothing reached the provider: retrying cannot run a generation twice.
                if attempt >= route.retries:
                    raise UpstreamConnectError(
                        f"cannot connect to upstream {route.upstream_display}: "
                        f"{redact_url(str(exc))}"
                    ) from None
            except UpstreamBodyError as exc:
                assert conn is not None and response is not None
                if conn.reused and not response.body_started and stale_retry:
                    stale_retry = False
                    continue  # the provider had closed the idle connection: a new one
                raise UpstreamConnectError(
                    f"upstream {route.upstream_display} failed: {redact_url(str(exc))}"
                ) from None
            except TimeoutError:
                if conn is not None:
                    conn.abort()
                raise UpstreamTimeoutError(
                    f"upstream {route.upstream_display} sent no response headers within "
                    f"{headers_timeout:g} s"
                ) from None
            except BaseException:
                if conn is not None:
                    conn.abort()  # cancelled (the client left): the provider sees the close
                raise
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

    async def _connect(self, route: RouteConfig, key: tuple[str, str, int]) -> UpstreamConnection:
        scheme, host, port = key
        loop = asyncio.get_running_loop()
        tls = self.tls_context() if scheme == "https" else None
        try:
            async with asyncio.timeout(route.connect_timeout_s) as scope:
                _, conn = await loop.create_connection(
                    lambda: UpstreamConnection(self, key),
                    host,
                    port,
                    ssl=tls,
                    server_hostname=host if tls is not None else None,
                )
        except TimeoutError:
            if not scope.expired():
                raise
            raise _ConnectFailed(
                f"no connection within connect_timeout_s={route.connect_timeout_s:g} s"
            ) from None
        except OSError as exc:  # refused, reset, DNS, TLS (ssl.SSLError is an OSError)
            raise _ConnectFailed(str(exc) or type(exc).__name__) from None
        self._open.add(conn)
        return conn

    def _take_idle(self, key: tuple[str, str, int]) -> UpstreamConnection | None:
        idle = self._idle.get(key)
        if not idle:
            return None
        now = time.monotonic()
        while idle and now - idle[0].idle_since > self._keepalive:
            idle.pop(0).abort()
        while idle:
            conn = idle.pop()
            transport = conn.transport
            if conn.closed or transport is None or transport.is_closing():
                continue
            return conn
        return None

    def release(self, conn: UpstreamConnection) -> None:
        """A connection whose response was read to its end, keep-alive on both sides."""
        if self._closed or conn.closed:
            conn.abort()
            return
        idle = self._idle.setdefault(conn.key, [])
        if len(idle) >= self._max_idle:
            conn.abort()
            return
        conn.reused = True
        conn.idle_since = time.monotonic()
        conn.resume_reading()  # so a close by the provider is noticed while idle
        idle.append(conn)

    def forget(self, conn: UpstreamConnection) -> None:
        """A connection closed (by either side)."""
        self._open.discard(conn)
        idle = self._idle.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)

    async def close(self) -> None:
        """Close every connection, idle or busy."""
        self._closed = True
        self._idle.clear()
        for conn in list(self._open):
            conn.abort()
        self._open.clear()
