"""Requests to providers: keep-alive HTTP/1.1 connections (:mod:`.connection`), pooled per origin.

A request is encoded once (its head and body in one write) and sent on the most recently used
idle connection to its origin, or on a new one (:mod:`.dial`: directly or through the route's
HTTP proxy, TLS through the event loop with the route's trust, :mod:`.egress`). Bodies
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
from collections.abc import Sequence
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
from streamhop.sidecar.upstream.dial import DialError, dial
from streamhop.sidecar.upstream.egress import DEFAULT_PORTS, Egress, describe_tls_error

logger = logging.getLogger(__name__)

RETRY_BACKOFF_S: Final = 0.05
KEEPALIVE_TIMEOUT_S: Final = 30.0
"""An idle pooled connection older than this (seconds) is closed rather than reused."""
MAX_IDLE_PER_ORIGIN: Final = 1024
"""Idle connections kept per origin; more are closed (``max_streams`` bounds the busy ones)."""
_IDEMPOTENT: Final = frozenset(("GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"))
_BODY_METHODS: Final = frozenset(("POST", "PUT", "PATCH"))
PoolKey = tuple[str, str, int, int]
"""``(scheme, host, port, egress id)``: connections are shared by requests with the same origin
and the same way there (proxy, TLS context)."""
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


@dataclass(slots=True)
class UpstreamTiming:
    """``time.monotonic()`` seconds of one upstream request's phases; ``None`` until reached."""

    start: float = 0.0
    connected: float | None = None
    headers: float | None = None
    attempts: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def encode_request(
    method: str,
    url: URL,
    headers: list[tuple[str, str]],
    body: bytes,
    *,
    absolute: bool = False,
    extra: Sequence[tuple[bytes, bytes]] = (),
) -> bytes:
    """One HTTP/1.1 request (RFC 9112 §3): request line, ``Host`` (unless ``headers`` has one),
    ``headers`` in order, ``extra``, ``Content-Length`` when there is a body or the method
    defines one, then the body.

    Args:
        method: the request method.
        url: the upstream URL (its path and query are sent as encoded, :mod:`..admission.routing`).
        headers: ``(name, value)`` pairs; names as Latin-1, values as UTF-8 (the client's bytes,
            see :func:`~streamhop.sidecar.admission.headers.upstream_request_headers`).
        body: the request body, possibly empty.
        absolute: the request target in absolute form (``http://host:port/path``, RFC 9112
            §3.2.2), as a request to a forward proxy has it.
        extra: raw header lines added after ``headers`` (``Proxy-Authorization``).

    Raises:
        ValueError: a header name or value contains CR, LF or NUL (it would split the head).
    """
    target = url.raw_path_qs
    if absolute:
        target = f"{url.scheme}://{url.host_port_subcomponent}{target}"
    lines = [f"{method} {target} HTTP/1.1\r\n".encode("latin-1")]
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
    for raw_name, raw_value in extra:
        lines.append(b"%s: %s\r\n" % (raw_name, raw_value))
    if body or method in _BODY_METHODS:
        lines.append(b"content-length: %d\r\n" % len(body))
    lines.append(b"\r\n")
    if body:
        lines.append(body)
    return b"".join(lines)


def _client_certificate_hint(route: RouteConfig) -> str:
    """A new TLS connection closed before any answer: with TLS 1.3 the server checks the client
    certificate after the handshake, and Python's and uvloop's TLS report its alert as a plain
    close, so say what it most likely means."""
    if route.tls_client_cert:
        return (
            f"; right after the TLS handshake: it may have rejected the client certificate "
            f"{route.tls_client_cert!r}"
        )
    return (
        "; right after the TLS handshake: if it requires a client certificate, set "
        "tls_client_cert and tls_client_key"
    )


class UpstreamPool:
    """Owns the upstream connections; create inside the running loop, :meth:`close` at shutdown.

    Args:
        trust_env: honour the environment's proxy variables (``[server] trust_env``).
        keepalive_timeout_s: how long an idle connection may wait for reuse (seconds).
        max_idle_per_origin: idle connections kept per origin and egress.
    """

    def __init__(
        self,
        *,
        trust_env: bool = True,
        keepalive_timeout_s: float = KEEPALIVE_TIMEOUT_S,
        max_idle_per_origin: int = MAX_IDLE_PER_ORIGIN,
    ) -> None:
        self._trust_env = trust_env
        self._keepalive = keepalive_timeout_s
        self._max_idle = max_idle_per_origin
        self._idle: dict[PoolKey, list[UpstreamConnection]] = {}
        self._open: set[UpstreamConnection] = set()
        self._egress: dict[tuple[str, str], tuple[int, Egress]] = {}
        self._closed = False

    @property
    def open_connections(self) -> int:
        """Connections open now, busy or idle."""
        return len(self._open)

    @property
    def idle_connections(self) -> int:
        """Idle connections waiting for reuse."""
        return sum(len(idle) for idle in self._idle.values())

    def egress(self, route: RouteConfig) -> tuple[int, Egress]:
        """``route``'s proxy and TLS context (:class:`~.egress.Egress`, resolved on first use)
        and its id in pool keys.

        Raises:
            EgressError: the route's proxy or TLS files cannot be used (config load checks them
                first, so only a file changed since).
        """
        cache_key = (route.prefix, route.upstream)
        found = self._egress.get(cache_key)
        if found is None:
            found = (len(self._egress), Egress.for_route(route, trust_env=self._trust_env))
            self._egress[cache_key] = found
        return found

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
            egress_id, egress = self.egress(route)
            proxy = egress.proxy
            absolute = proxy is not None and egress.tls is None
            extra: tuple[tuple[bytes, bytes], ...] = ()
            if absolute and proxy is not None and proxy.authorization is not None:
                extra = ((b"proxy-authorization", proxy.authorization),)
            request = encode_request(method, url, headers, body, absolute=absolute, extra=extra)
        except ValueError as exc:  # EgressError is a ValueError too
            raise UpstreamConnectError(
                f"cannot send to upstream {route.upstream_display}: {exc}"
            ) from None
        host = url.raw_host or ""
        port = url.port or DEFAULT_PORTS.get(url.scheme, 80)
        key = (url.scheme, host, port, egress_id)
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
                        conn = await self._connect(route, key, egress)
                    timing.connected = time.monotonic()
                    response = conn.send(request, head_only=method == "HEAD")
                    ready = conn.headers_ready
                    assert ready is not None
                    await ready
                timing.headers = time.monotonic()
                return response
            except DialError as exc:
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
                reason = str(exc)
                if isinstance(exc.cause, ssl.SSLError):
                    # TLS 1.3: a rejected client certificate is only told after the handshake.
                    reason = describe_tls_error(exc.cause, route, egress.server_name)
                elif egress.tls is not None and not conn.reused and not response.body_started:
                    reason += _client_certificate_hint(route)
                raise UpstreamConnectError(
                    f"upstream {route.upstream_display} failed: {redact_url(reason)}"
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

    async def _connect(
        self, route: RouteConfig, key: PoolKey, egress: Egress
    ) -> UpstreamConnection:
        _, host, port, _ = key
        try:
            async with asyncio.timeout(route.connect_timeout_s) as scope:
                conn = await dial(lambda: UpstreamConnection(self, key), route, egress, host, port)
        except TimeoutError:
            if not scope.expired():
                raise
            via = "" if egress.proxy is None else f" through proxy {egress.proxy.display}"
            raise DialError(
                f"no connection{via} within connect_timeout_s={route.connect_timeout_s:g} s"
            ) from None
        self._open.add(conn)
        return conn

    def _take_idle(self, key: PoolKey) -> UpstreamConnection | None:
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
