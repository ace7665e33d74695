"""How a route reaches its provider: directly or through an HTTP forward proxy, and with which
TLS trust.

**Proxy.** A route's ``proxy`` wins (``""``: go direct); else, with ``[server] trust_env``
(default), the environment's ``HTTPS_PROXY`` / ``HTTP_PROXY`` / ``ALL_PROXY`` (either case) for
the upstream's scheme, unless ``NO_PROXY`` names its host — read with the standard library's
``urllib.request.getproxies_environment`` and ``proxy_bypass_environment``, the rules
``requests`` and ``httpx`` follow too. Only ``http://`` proxy URLs are supported (the connection
to the proxy is plain; what crosses it is not, see below). Credentials in the proxy URL become a
``Proxy-Authorization: Basic`` header (RFC 9110 §11.7.1) sent to the proxy only; the URL is
shown redacted everywhere.

An ``https://`` upstream is reached through a ``CONNECT`` tunnel (RFC 9110 §9.3.6): the proxy
sees the provider's host and port, then TLS bytes only — the provider key travels inside the TLS
session with the provider. A plain ``http://`` upstream is sent to the proxy in absolute form
(RFC 9112 §3.2.2): the proxy reads the whole request, key included (docs/security.md).

**Trust.** Per route: ``tls_ca_file`` (a PEM bundle used *instead of* the system store; without
it the store is OpenSSL's default, which ``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` replace),
``tls_client_cert`` + ``tls_client_key`` (PEM, for providers or gateways that require mutual
TLS), ``tls_server_name`` (the name sent as SNI and verified in the certificate, when the URL's
host is not it), ``tls_verify = false`` (no verification at all; refused silently never: the
sidecar logs a warning at start for each such route).

The proxy URL parser, :class:`~streamhop.sidecar.config.route_egress.EgressError` and the TLS
context builder live in :mod:`streamhop.sidecar.config.route_egress` (the config loader checks
each route with them at start); this module picks a route's proxy and puts its connection
settings together.
"""

from __future__ import annotations

import ssl
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from yarl import URL

from streamhop.sidecar.config import RouteConfig
from streamhop.sidecar.config.route_egress import ProxyURL, parse_proxy, tls_context

DEFAULT_PORTS: Final = {"http": 80, "https": 443}


def route_proxy(
    route: RouteConfig, *, trust_env: bool, environ: Mapping[str, str] | None = None
) -> ProxyURL | None:
    """The proxy ``route`` goes through, or ``None`` for a direct connection.

    Args:
        route: its ``proxy`` (``None``: not set; ``""``: direct) and ``upstream``.
        trust_env: whether the environment's proxy variables apply (``[server] trust_env``).
        environ: the environment (default: the process's).

    Raises:
        EgressError: the proxy URL cannot be used.
    """
    if route.proxy is not None:
        return parse_proxy(route.proxy) if route.proxy else None
    if not trust_env:
        return None
    upstream = URL(route.upstream)
    proxies = _environment_proxies(environ)
    url = proxies.get(upstream.scheme) or proxies.get("all")
    if not url:
        return None
    host = upstream.raw_host or ""
    port = upstream.port or DEFAULT_PORTS.get(upstream.scheme, 80)
    if proxies.get("no") and (_bypass(host, proxies) or _bypass(f"{host}:{port}", proxies)):
        return None
    return parse_proxy(url)


def _bypass(host: str, proxies: dict[str, str]) -> bool:
    """``NO_PROXY`` matches ``host`` (``urllib.request.proxy_bypass_environment``: exact names,
    domain suffixes, ``*``; not in typeshed's stubs)."""
    return bool(urllib.request.proxy_bypass_environment(host, proxies))  # type: ignore[attr-defined]


def _environment_proxies(environ: Mapping[str, str] | None) -> dict[str, str]:
    if environ is None:
        return urllib.request.getproxies_environment()
    # The same scan as getproxies_environment, over a given mapping (lower case wins).
    proxies: dict[str, str] = {}
    for name, value in environ.items():
        lower = name.lower()
        if value and lower.endswith("_proxy"):
            scheme = lower[: -len("_proxy")]
            if name == lower or scheme not in proxies:
                proxies[scheme] = value
    return proxies


@dataclass(frozen=True, slots=True)
class Egress:
    """How one route connects.

    Attributes:
        proxy: the forward proxy, ``None`` for direct.
        tls: the TLS context for an ``https://`` upstream, else ``None``.
        server_name: the SNI and verification name (``tls_server_name``, else the host).
    """

    proxy: ProxyURL | None
    tls: ssl.SSLContext | None
    server_name: str | None

    @classmethod
    def for_route(
        cls, route: RouteConfig, *, trust_env: bool, environ: Mapping[str, str] | None = None
    ) -> Egress:
        """Resolve ``route``'s proxy and TLS context (once per route and process).

        Raises:
            EgressError: see :func:`route_proxy` and
                :func:`~streamhop.sidecar.config.route_egress.tls_context`.
        """
        upstream = URL(route.upstream)
        proxy = route_proxy(route, trust_env=trust_env, environ=environ)
        if upstream.scheme != "https":
            return cls(proxy, None, None)
        return cls(proxy, tls_context(route), route.tls_server_name or upstream.raw_host)


CLIENT_CERTIFICATE_ALERTS: Final = frozenset(
    (
        "TLSV13_ALERT_CERTIFICATE_REQUIRED",
        "SSLV3_ALERT_BAD_CERTIFICATE",
        "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
        "TLSV1_ALERT_UNKNOWN_CA",
        "SSLV3_ALERT_CERTIFICATE_EXPIRED",
        "SSLV3_ALERT_CERTIFICATE_REVOKED",
        "TLSV1_ALERT_ACCESS_DENIED",
    )
)
"""TLS alerts a server sends when it does not accept the client's certificate (or got none)."""


def describe_tls_error(exc: ssl.SSLError, route: RouteConfig, server_name: str | None) -> str:
    """One line saying which part of TLS failed, for a 502 and the log."""
    name = server_name or URL(route.upstream).raw_host
    if isinstance(exc, ssl.SSLCertVerificationError):
        what = exc.verify_message or exc.reason or "verification failed"
        store = f"tls_ca_file {route.tls_ca_file!r}" if route.tls_ca_file else "the CA store"
        return f"the certificate of {name} is not trusted ({what}; checked against {store})"
    if exc.reason in CLIENT_CERTIFICATE_ALERTS:
        if route.tls_client_cert:
            return (
                f"{name} rejected the client certificate {route.tls_client_cert!r} "
                f"(TLS alert {exc.reason})"
            )
        return f"{name} requires a client certificate (TLS alert {exc.reason}): set tls_client_cert"
    return f"TLS with {name} failed: {exc.reason or exc}"
