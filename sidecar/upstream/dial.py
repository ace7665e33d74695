"""Opening one connection to a provider: TCP, directly or through an HTTP proxy (a ``CONNECT``
tunnel for an ``https://`` upstream, RFC 9110 §9.3.6), then TLS (:mod:`.egress` says which
proxy and trust). Every failure is a :class:`DialError` whose message says which part failed:
the proxy unreachable, the proxy refusing ``CONNECT`` (its status), the provider unreachable,
its certificate not trusted (subject and issuer), the client certificate rejected.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Callable
from typing import TypeVar

import httptools

from streamhop.sidecar.config import RouteConfig
from streamhop.sidecar.config.route_egress import ProxyURL
from streamhop.sidecar.upstream.egress import Egress, describe_tls_error

P = TypeVar("P", bound=asyncio.Protocol)


class DialError(Exception):
    """No connection could be made; nothing reached the provider (safe to retry)."""


class _ConnectAnswer(asyncio.Protocol):
    """Reads the proxy's answer to ``CONNECT`` (its status line and headers)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.answer: asyncio.Future[tuple[int, str]] = loop.create_future()
        self._parser = httptools.HttpResponseParser(self)
        self._reason = b""

    def data_received(self, data: bytes) -> None:
        if self.answer.done():
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.answer.set_exception(
                DialError(f"the proxy sent a malformed answer to CONNECT ({exc})")
            )

    def on_status(self, status: bytes) -> None:
        self._reason += status

    def on_headers_complete(self) -> None:
        if not self.answer.done():
            status = self._parser.get_status_code()
            self.answer.set_result((status, self._reason.decode("latin-1")))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.answer.done():
            self.answer.set_exception(
                DialError("the proxy closed the connection before answering CONNECT")
            )


def connect_request(host: str, port: int, proxy: ProxyURL) -> bytes:
    """``CONNECT host:port`` in authority form (RFC 9112 §3.2.3), with the proxy's
    credentials when its URL has some."""
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    lines = [f"CONNECT {authority} HTTP/1.1\r\nhost: {authority}\r\n".encode("ascii")]
    if proxy.authorization is not None:
        lines.append(b"proxy-authorization: %s\r\n" % proxy.authorization)
    lines.append(b"\r\n")
    return b"".join(lines)


async def dial(
    factory: Callable[[], P], route: RouteConfig, egress: Egress, host: str, port: int
) -> P:
    """Open a connection to ``host:port`` for ``route`` and return its protocol (made by
    ``factory``, already connected). The caller bounds the time (``connect_timeout_s``).

    Raises:
        DialError: see the module docstring.
    """
    loop = asyncio.get_running_loop()
    proxy = egress.proxy
    tls = egress.tls
    if proxy is None or tls is None:
        # Direct, or a plain-HTTP upstream through a proxy (the request goes in absolute form).
        target = (host, port) if proxy is None else (proxy.host, proxy.port)
        try:
            _, protocol = await loop.create_connection(
                factory, *target, ssl=tls, server_hostname=egress.server_name if tls else None
            )
        except ssl.SSLError as exc:
            raise DialError(await _tls_failure(exc, route, egress, host, port)) from None
        except OSError as exc:
            where = "" if proxy is None else f"proxy {proxy.display} unreachable: "
            raise DialError(where + (str(exc) or type(exc).__name__)) from None
        return protocol
    transport = await _tunnel(proxy, host, port)
    protocol = factory()
    try:
        tls_transport = await loop.start_tls(
            transport, protocol, tls, server_hostname=egress.server_name
        )
    except ssl.SSLError as exc:
        transport.abort()
        raise DialError(await _tls_failure(exc, route, egress, host, port)) from None
    except (OSError, ConnectionError) as exc:
        transport.abort()
        raise DialError(f"TLS through proxy {proxy.display} failed: {exc}") from None
    except BaseException:
        transport.abort()
        raise
    if tls_transport is None:  # the loop closed the transport (it was closing)
        raise DialError(f"proxy {proxy.display} closed the tunnel")
    protocol.connection_made(tls_transport)
    return protocol


async def _tunnel(proxy: ProxyURL, host: str, port: int) -> asyncio.Transport:
    """A TCP connection to ``proxy`` on which ``CONNECT host:port`` was answered 2xx."""
    loop = asyncio.get_running_loop()
    try:
        transport, answer = await loop.create_connection(
            lambda: _ConnectAnswer(loop), proxy.host, proxy.port
        )
    except OSError as exc:
        raise DialError(f"proxy {proxy.display} unreachable: {exc}") from None
    try:
        transport.write(connect_request(host, port, proxy))
        status, reason = await answer.answer
    except BaseException:
        transport.abort()
        raise
    if not 200 <= status < 300:
        transport.abort()
        raise DialError(
            f"proxy {proxy.display} refused CONNECT to {host}:{port} (HTTP {status} {reason})"
        )
    return transport


async def _tls_failure(
    exc: ssl.SSLError, route: RouteConfig, egress: Egress, host: str, port: int
) -> str:
    """The message for a failed handshake; an untrusted certificate is named by its subject
    and issuer (read by a second handshake that does not verify, bounded by 2 s)."""
    message = describe_tls_error(exc, route, egress.server_name)
    if not isinstance(exc, ssl.SSLCertVerificationError):
        return message
    names = None
    with contextlib.suppress(Exception):
        async with asyncio.timeout(2.0):
            names = await _peer_names(egress, host, port)
    return message if names is None else f"{message}: {names}"


async def _peer_names(egress: Egress, host: str, port: int) -> str | None:
    """``subject ..., issuer ...`` of the certificate the upstream presents, unverified."""
    from cryptography import x509

    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    loop = asyncio.get_running_loop()
    if egress.proxy is None:
        transport, _ = await loop.create_connection(
            asyncio.Protocol, host, port, ssl=context, server_hostname=egress.server_name
        )
    else:
        plain = await _tunnel(egress.proxy, host, port)
        started = await loop.start_tls(
            plain, asyncio.Protocol(), context, server_hostname=egress.server_name
        )
        if started is None:
            return None
        transport = started
    try:
        ssl_object = transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    finally:
        transport.abort()
    if not der:
        return None
    certificate = x509.load_der_x509_certificate(der)
    return (
        f"subject {certificate.subject.rfc4514_string()}, "
        f"issuer {certificate.issuer.rfc4514_string()}"
    )
