"""Who may use the sidecar: the checks every request passes before a route sees it.

The sidecar holds provider keys, so a request must not be able to choose where a key goes or
use it from a web page (docs/security.md has the threat model). In order:

1. **Host** (DNS rebinding): an ambiguous head gets ``400`` (:func:`host_error`, RFC 9112
   §3.2): an HTTP/1.1 request without ``Host``, with two, or with a value that is not a host
   name or ``[IPv6]`` literal and an optional ``:port`` (``127.0.0.1:1@evil``,
   ``[::1]evil``): a guard must not read one host where another parser reads a different one.
   A ``Host`` whose name is not in the allowed set gets ``421``
   (RFC 9110 §15.5.20 "Misdirected Request"). The set is
   :func:`~.config.effective_allowed_hosts`: loopback names when bound to loopback, any when
   bound to another address, or ``[server] allowed_hosts``. The admin listener applies the same
   check (``admin=True``) and also lets an IP-address ``Host`` through: kubelet probes and
   Prometheus reach a pod by IP, and a rebinding page can only send a DNS name.
2. **Path**: :func:`normalise_path` decodes and removes dot segments once (RFC 3986 §5.2.4);
   routing matches and strips the prefix on that one result. An encoded ``/`` or ``\\`` and a
   ``..`` above the root get ``400``.
3. **Origin** (browsers): a request carrying ``Origin`` (every cross-origin ``fetch``, form post
   and WebSocket handshake) is refused with ``403`` unless the origin is in ``[server]`` or the
   route's ``allowed_origins``; a request without ``Origin`` but with
   ``Sec-Fetch-Site: cross-site``/``same-site`` (a navigation or ``no-cors`` load from another
   site) too, and so does a request with two ``Origin`` or two ``Sec-Fetch-Site`` fields
   (which one a browser meant cannot be known). CORS preflights (``OPTIONS`` with
   ``Access-Control-Request-Method``) are answered here and never forwarded; upstream
   ``Access-Control-*`` headers never reach the client (:func:`~.headers.response_headers`),
   only the ones set here.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final
from urllib.parse import unquote

from streamhop.middleware.errors import StreamHopError
from streamhop.sidecar.config import RouteConfig, ServerConfig, effective_allowed_hosts

PREFLIGHT_MAX_AGE_S: Final = 600
EXPOSED_HEADERS: Final = b"x-streamhop-stream-id, server-timing, retry-after"
_TOKEN_LIST: Final = re.compile(rb"^[!#$%&'*+.^_`|~0-9A-Za-z, \t-]*$")
# RFC 9110 §7.2 Host = uri-host [ ":" port ], narrowed to what a client sends: a DNS name or
# IPv4 address, or an IPv6 address in brackets (checked by ipaddress); a port of digits.
_HOST: Final = re.compile(
    r"(?:\[(?P<literal>[0-9a-f:.]+)\]|(?P<name>[a-z0-9._-]+))(?::[0-9]{1,5})?", re.ASCII
)


class PathError(StreamHopError):
    """A request path that cannot be routed safely (answered with 400)."""


@dataclass(frozen=True, slots=True)
class RequestPath:
    """A request path after :func:`normalise_path`.

    Attributes:
        decoded: percent-decoded segments (invalid UTF-8 kept as surrogate escapes), dot
            segments removed; what routes match on.
        raw: the same segments as the client encoded them (for the upstream URL).
    """

    decoded: tuple[str, ...]
    raw: tuple[str, ...]

    @property
    def text(self) -> str:
        """The decoded path, ``/``-joined (for logs, metrics and format detection)."""
        return "/" + "/".join(self.decoded)


def normalise_path(raw_path: str) -> RequestPath:
    """Split, decode and remove dot segments from a request target's path (RFC 3986 §5.2.4).

    Args:
        raw_path: the path as sent (percent-encoded, ASGI ``raw_path`` decoded as Latin-1),
            starting with ``/``.

    Returns:
        The path's segments, decoded and raw. A ``.`` or ``..`` segment, literal or encoded
        (``%2e``), is removed as the RFC says; a trailing one leaves an empty last segment
        (``/a/b/..`` is ``/a/``).

    Raises:
        PathError: the path does not start with ``/``; a segment holds an encoded ``/`` or
            ``\\`` (``%2F``, ``%5C``: servers disagree whether it separates segments); ``..``
            would climb above the root.
    """
    if not raw_path.startswith("/"):
        raise PathError(f"the request path must start with '/', got {raw_path[:80]!r}")
    parts = raw_path[1:].split("/")
    decoded: list[str] = []
    raw: list[str] = []
    last = len(parts) - 1
    for i, part in enumerate(parts):
        text = (
            unquote(
                part.encode("latin-1").decode("utf-8", "surrogateescape"), errors="surrogateescape"
            )
            if "%" in part
            else _utf8(part)
        )
        if "/" in text or "\\" in text:
            raise PathError(f"encoded '/' or '\\' in path segment {part[:80]!r} is not accepted")
        if text in (".", ".."):
            if text == "..":
                if not decoded:
                    raise PathError("'..' in the path climbs above the root")
                decoded.pop()
                raw.pop()
            if i == last:
                decoded.append("")
                raw.append("")
            continue
        decoded.append(text)
        raw.append(part)
    return RequestPath(tuple(decoded), tuple(raw))


def _utf8(part: str) -> str:
    if part.isascii():
        return part
    return part.encode("latin-1").decode("utf-8", "surrogateescape")


def host_error(headers: Iterable[tuple[bytes, bytes]], http_version: str) -> str | None:
    """Why the request's ``Host`` makes its head ambiguous (answer ``400``), or ``None``.

    RFC 9112 §3.2: a server must answer 400 to an HTTP/1.1 request that lacks ``Host``, has more
    than one, or has an invalid one. A lenient reading is a DNS-rebinding bypass when it differs
    from another parser's (``127.0.0.1:1@evil`` read as ``127.0.0.1`` here, as ``evil`` by a
    proxy in front), so the value must be exactly a host and an optional port.

    Args:
        headers: the request's headers (ASGI: lower-case names).
        http_version: ASGI ``http_version`` (``"1.0"``, ``"1.1"``): only HTTP/1.0 may omit
            ``Host``.

    Returns:
        A message for the client, or ``None`` when there is exactly one well-formed ``Host``
        (or none on HTTP/1.0).
    """
    values = [value for name, value in headers if name == b"host"]
    if not values:
        return None if http_version == "1.0" else "an HTTP/1.1 request must have a Host header"
    if len(values) > 1:
        return "more than one Host header"
    if _host_name(values[0]) is None:
        return (
            f"malformed Host {values[0][:80].decode('latin-1')!r}: expected a host name, an "
            "IPv4 address or a [bracketed] IPv6 address, and an optional :port"
        )
    return None


def host_allowed(
    server: ServerConfig, headers: Iterable[tuple[bytes, bytes]], *, admin: bool = False
) -> bool:
    """True when the request's ``Host`` (port ignored) is one the listener answers to.

    A request without ``Host`` (HTTP/1.0) passes: a browser always sends one. Two ``Host``
    fields or a malformed one (:func:`host_error`, checked first by the callers) never pass.

    Args:
        server: the ``[server]`` table.
        headers: the request's headers (ASGI: lower-case names).
        admin: the request came to the admin listener: the default set follows
            ``admin_listen``, and a ``Host`` that is an IP address passes even when
            ``allowed_hosts`` is set. A DNS-rebinding page sends its own DNS name; a page whose
            origin is an IP address is served by that address, so it is no rebinding; kubelet
            probes send ``Host: <podIP>:<port>`` and must not get 421.
    """
    values = [value for name, value in headers if name == b"host"]
    if not values:
        return True
    host = _host_name(values[0]) if len(values) == 1 else None
    if host is None:
        return False
    allowed = effective_allowed_hosts(server, admin=admin)
    return allowed is None or host in allowed or (admin and _is_ip_address(host))


def _is_ip_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _host_name(value: bytes) -> str | None:
    """The host of a ``Host`` value, lower-case, without brackets and port; ``None`` when the
    value is not exactly a host and an optional port (see ``_HOST``)."""
    match = _HOST.fullmatch(value.decode("latin-1").strip().lower())
    if match is None:
        return None
    literal = match["literal"]
    if literal is None:
        return str(match["name"])
    try:
        ipaddress.IPv6Address(literal)
    except ValueError:
        return None
    return str(literal)


@dataclass(frozen=True, slots=True)
class BrowserCheck:
    """What :func:`check_browser` found.

    Attributes:
        refused: a reason when the request must get 403, else ``None``.
        origin: the request's ``Origin`` when it is allowed (CORS headers are then due).
        preflight: the request is a CORS preflight to answer here.
        request_method: ``Access-Control-Request-Method`` of a preflight.
        request_headers: ``Access-Control-Request-Headers`` of a preflight.
    """

    refused: str | None = None
    origin: bytes | None = None
    preflight: bool = False
    request_method: bytes = b""
    request_headers: bytes = b""


NO_BROWSER: Final = BrowserCheck()


def check_browser(
    server: ServerConfig,
    route: RouteConfig,
    method: str,
    headers: Sequence[tuple[bytes, bytes]],
) -> BrowserCheck:
    """Apply the origin rules to one request (HTTP or WebSocket handshake).

    Two ``Origin`` or two ``Sec-Fetch-Site`` fields are refused: reading either one would let
    the other decide (a foreign origin behind an allowed one).
    """
    origin = fetch_site = None
    preflight_method: bytes | None = None
    request_headers = b""
    for name, value in headers:
        if name == b"origin":
            if origin is not None:
                return BrowserCheck(refused="more than one Origin header")
            origin = value
        elif name == b"sec-fetch-site":
            if fetch_site is not None:
                return BrowserCheck(refused="more than one Sec-Fetch-Site header")
            fetch_site = value
        elif name == b"access-control-request-method":
            preflight_method = value.strip()
        elif name == b"access-control-request-headers":
            request_headers = value
    if origin is None:
        if fetch_site is not None and fetch_site.strip().lower() in (b"cross-site", b"same-site"):
            return BrowserCheck(
                refused="a request from another site (Sec-Fetch-Site) without an allowed Origin"
            )
        return NO_BROWSER
    text = origin.decode("latin-1").strip().lower()
    if text not in server.allowed_origins and text not in route.allowed_origins:
        return BrowserCheck(refused=f"origin {text[:200]!r} is not in allowed_origins")
    preflight = method == "OPTIONS" and preflight_method is not None
    if preflight and not (
        _TOKEN_LIST.match(request_headers) and _TOKEN_LIST.match(preflight_method or b"")
    ):
        return BrowserCheck(refused="invalid Access-Control-Request-Method or -Headers")
    return BrowserCheck(
        origin=origin,
        preflight=preflight,
        request_method=preflight_method or b"",
        request_headers=request_headers,
    )


def cors_headers(check: BrowserCheck) -> list[tuple[bytes, bytes]]:
    """Response headers for an allowed origin's actual request (Fetch standard, "CORS protocol")."""
    assert check.origin is not None
    return [
        (b"access-control-allow-origin", check.origin),
        (b"access-control-expose-headers", EXPOSED_HEADERS),
        (b"vary", b"Origin"),
    ]


def preflight_headers(check: BrowserCheck) -> list[tuple[bytes, bytes]]:
    """Headers of the ``204`` answer to an allowed origin's preflight."""
    assert check.origin is not None
    headers = [
        (b"access-control-allow-origin", check.origin),
        (b"access-control-allow-methods", check.request_method or b"POST"),
        (b"access-control-max-age", str(PREFLIGHT_MAX_AGE_S).encode()),
        (b"vary", b"Origin, Access-Control-Request-Method, Access-Control-Request-Headers"),
        (b"content-length", b"0"),
    ]
    if check.request_headers.strip():
        headers.append((b"access-control-allow-headers", check.request_headers))
    return headers
