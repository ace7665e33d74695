"""The admission step both edges run before anything reaches a provider, sans-IO.

:func:`admit` applies :mod:`.guard` and the route table to a request head (an HTTP request or a
WebSocket handshake) in one order: an ambiguous ``Host`` (400), a ``Host`` not served here
(421), a path that could steer a route (400), no route (404), a browser from a foreign
``Origin`` (403). :func:`capacity` is the ``503`` while draining or at ``max_streams``, and
:func:`forwarded_headers` the ``400`` for an invalid ``X-Streamhop-*`` or header value. Each
returns a :class:`Refusal` instead of answering: the HTTP edge turns it into a JSON error in
the provider's shape (:func:`~streamhop.sidecar.asgi.json_error`), the WebSocket edge into a
refused handshake or a close code.
"""

from __future__ import annotations

from dataclasses import dataclass

from streamhop.middleware.controls import ControlHeaderError, Controls
from streamhop.middleware.rechunk.formats import format_for_path
from streamhop.sidecar.admission.guard import (
    BrowserCheck,
    PathError,
    RequestPath,
    check_browser,
    host_allowed,
    host_error,
    normalise_path,
)
from streamhop.sidecar.admission.headers import HeaderValueError, upstream_request_headers
from streamhop.sidecar.admission.routing import RouteTable, raw_path
from streamhop.sidecar.asgi import Scope
from streamhop.sidecar.config import RouteConfig, ServerConfig

CLOSE: tuple[tuple[bytes, bytes], ...] = ((b"connection", b"close"),)
"""An ambiguous head (RFC 9112 §3.2) is answered, then its connection closed."""


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request is refused, before any provider is contacted.

    Attributes:
        status: the HTTP status (400, 403, 404, 408, 413, 421, 503).
        code: the error code in the body (``bad_host``, ``no_route``, ``draining``, …;
            docs/observability.md lists them).
        message: what the client reads.
        fmt: the provider format the error body takes (``None``: OpenAI's shape).
        extra_headers: added to the response (``Connection: close``).
        retry_after: a ``Retry-After: 1`` header (503).
    """

    status: int
    code: str
    message: str
    fmt: str | None
    extra_headers: tuple[tuple[bytes, bytes], ...] = ()
    retry_after: bool = False


@dataclass(frozen=True, slots=True)
class Admitted:
    """A request head that passed :func:`admit`: its route, normalised path, the format its
    errors take (the route's, else guessed from the path) and the browser check (an allowed
    ``Origin`` gets CORS headers; a preflight is answered by the edge)."""

    route: RouteConfig
    path: RequestPath
    fmt: str | None
    browser: BrowserCheck


def admit(server: ServerConfig, table: RouteTable, scope: Scope, method: str) -> Admitted | Refusal:
    """Check a request head (``scope``: an ASGI ``http`` or ``websocket`` scope) against
    ``[server]`` and the routes; ``method`` is the request's (``GET`` for a handshake)."""
    headers = scope["headers"]
    path_fmt = format_for_path(scope["path"])
    problem = host_error(headers, scope.get("http_version", "1.1"))
    if problem is not None:
        return Refusal(400, "bad_host", problem, path_fmt, CLOSE)
    if not host_allowed(server, headers):
        message = "this Host is not served here (see [server] allowed_hosts)"
        return Refusal(421, "misdirected_request", message, path_fmt)
    try:
        path = normalise_path(raw_path(scope))
    except PathError as exc:
        return Refusal(400, "bad_path", str(exc), path_fmt)
    fmt = format_for_path(path.text)
    route = table.match(path)
    if route is None:
        return Refusal(404, "no_route", f"no route for path {path.text!r}", fmt)
    if route.format != "auto":
        fmt = route.format
    browser = check_browser(server, route, method, headers)
    if browser.refused is not None:
        return Refusal(403, "origin_not_allowed", browser.refused, fmt)
    return Admitted(route, path, fmt, browser)


def capacity(
    server: ServerConfig, fmt: str | None, *, draining: bool, active: int
) -> Refusal | None:
    """``503`` (with ``Retry-After``) while the process drains or ``active`` streams (those
    still sending their body included) reach ``[server] max_streams``; else ``None``."""
    if draining:
        return Refusal(503, "draining", "streamhop is shutting down", fmt, retry_after=True)
    if active >= server.max_streams:
        message = f"streamhop is at max_streams={server.max_streams}"
        return Refusal(503, "too_many_streams", message, fmt, retry_after=True)
    return None


def forwarded_headers(
    headers: list[tuple[bytes, bytes]], fmt: str | None
) -> tuple[list[tuple[str, str]], Controls] | Refusal:
    """The headers to forward and the request's ``X-Streamhop-*`` values
    (:func:`~.headers.upstream_request_headers`), or a ``400`` naming the invalid header."""
    try:
        return upstream_request_headers(headers)
    except ControlHeaderError as exc:
        return Refusal(400, "bad_control_header", str(exc), fmt)
    except HeaderValueError as exc:
        return Refusal(400, "bad_header", str(exc), fmt)
