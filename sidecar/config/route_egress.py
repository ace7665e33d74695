"""A route's ``proxy`` URL and TLS files made usable: parsed and loaded, or refused with why.

The config loader calls :func:`check_route_egress` so that a bad proxy URL or an unreadable
certificate fails at start with its dotted key; the upstream client
(``sidecar/upstream/egress.py``) builds its connections from the same
:func:`parse_proxy` and :func:`tls_context`, so what was checked is what is used. Which proxy a
route takes (its own or the environment's) is decided there, not here.
"""

from __future__ import annotations

import base64
import ssl
from dataclasses import dataclass
from typing import Final
from urllib.parse import unquote

from yarl import URL

from streamhop.middleware.errors import ConfigError
from streamhop.sidecar.config.model import RouteConfig, redact_url

_TLS_KEYS: Final = ("tls_ca_file", "tls_client_cert", "tls_client_key", "tls_server_name")


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


def check_route_egress(key: str, route: RouteConfig) -> None:
    """Check ``route``'s proxy URL and TLS settings at load, as the upstream client will use them.

    Args:
        key: the route's dotted name (``routes[0]``); errors name ``{key}.proxy``,
            ``{key}.tls_ca_file`` and so on.
        route: the route, otherwise validated.

    Raises:
        ConfigError: the proxy URL cannot be parsed; a TLS key on an ``http://`` upstream;
            ``tls_client_key`` without ``tls_client_cert``; a TLS file that does not load.
    """
    if route.proxy:
        try:
            parse_proxy(route.proxy)
        except EgressError as exc:
            raise ConfigError(f"{key}.proxy", str(exc)) from None
    tls_keys = [name for name in _TLS_KEYS if getattr(route, name)]
    if not route.upstream.lower().startswith("https://"):
        if tls_keys or not route.tls_verify:
            name = tls_keys[0] if tls_keys else "tls_verify"
            raise ConfigError(f"{key}.{name}", "applies to an https:// upstream only")
        return
    if route.tls_client_key and not route.tls_client_cert:
        raise ConfigError(f"{key}.tls_client_key", "set tls_client_cert too")
    try:
        tls_context(route)
    except EgressError as exc:
        name = "tls_ca_file" if "tls_ca_file" in str(exc) else "tls_client_cert"
        raise ConfigError(f"{key}.{name}", str(exc)) from None
