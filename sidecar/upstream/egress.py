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
"""

from __future__ import annotations

import base64
import ssl
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final
from urllib.parse import unquote

from yarl import URL

from streamhop.sidecar.config import RouteConfig, redact_url

DEFAULT_PORTS: Final = {"http": 80, "https": 443}


class EgressError(ValueError):
    """A proxy URL or TLS file that cannot be used (the message says which and why)."""


@dataclass(frozen=True, slots=True)
class ProxyURL:
    """An HTTP forward proxy.

    Attributes:
        host, port: where to connect.
        authorization: the ``Proxy-Authorization`` header value, from the URL's userinfo.
        display: the URL with its userinfo redacted (for errors and logs).
    """

    host: str
    port: int
    authorization: bytes | None
    display: str


def parse_proxy(url: str) -> ProxyURL:
    """Parse a proxy URL: ``http://[user:password@]host[:port]`` (port 80 by default).

    Raises:
        EgressError: not an ``http://`` URL with a host.
    """
    display = redact_url(url)
    try:
        parsed = URL(url if "://" in url else f"http://{url}")
    except ValueError as exc:
        raise EgressError(f"proxy URL {display!r} is not a URL: {exc}") from None
    if parsed.scheme != "http":
        raise EgressError(
            f"proxy URL {display!r}: only http:// proxies are supported (the tunnel to an "
            "https:// provider is TLS end to end either way)"
        )
    if not parsed.raw_host:
        raise EgressError(f"proxy URL {display!r} has no host")
    authorization = None
    if parsed.raw_user is not None:
        user = unquote(parsed.raw_user)
        password = unquote(parsed.raw_password or "")
        token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        authorization = f"Basic {token}".encode("ascii")
    return ProxyURL(parsed.raw_host, parsed.port or 80, authorization, display)


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


def tls_context(route: RouteConfig) -> ssl.SSLContext:
    """The client TLS context of ``route``: its CA bundle (else the default store), its client
    certificate, verification on unless ``tls_verify = false``; ALPN ``http/1.1``.

    Raises:
        EgressError: a file is missing, unreadable or not PEM of the expected kind.
    """
    try:
        if route.tls_ca_file:
            context = ssl.create_default_context(cafile=route.tls_ca_file)
        else:
            context = ssl.create_default_context()
    except (OSError, ssl.SSLError) as exc:
        raise EgressError(f"tls_ca_file {route.tls_ca_file!r}: {_reason(exc)}") from None
    if not route.tls_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if route.tls_client_cert:
        try:
            context.load_cert_chain(route.tls_client_cert, route.tls_client_key or None)
        except (OSError, ssl.SSLError) as exc:
            raise EgressError(
                f"tls_client_cert {route.tls_client_cert!r} / tls_client_key "
                f"{route.tls_client_key!r}: {_reason(exc)}"
            ) from None
    context.set_alpn_protocols(["http/1.1"])
    return context


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return f"{exc.reason} ({exc.library or 'ssl'})"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


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
            EgressError: see :func:`route_proxy` and :func:`tls_context`.
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
