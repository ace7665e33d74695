"""Route table: the longest ``[[routes]].prefix`` that matches a request path wins.

Matching and stripping happen on one value, the normalised path
(:func:`~.guard.normalise_path`), segment by segment: what a route matched is exactly what is
cut off. The upstream URL is the route's configured base URL (scheme, host, port and path from
config only) joined with the rest of the path, so no request can choose where a route's key goes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from yarl import URL

from streamhop.sidecar.admission.guard import RequestPath
from streamhop.sidecar.config import RouteConfig

# RFC 3986 §3.3 pchar, plus "%" (a client's own escapes are kept as sent).
_PCHAR = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;=:@%"
)


class RouteTable:
    """Finds the route of a request path and builds its upstream URL.

    A prefix matches a path equal to it or continuing it at a ``/`` boundary: ``/openai``
    matches ``/openai`` and ``/openai/v1/x`` but not ``/openaix``; ``/`` matches every path.
    """

    def __init__(self, routes: Sequence[RouteConfig]) -> None:
        # Longest first, so the first match is the longest one.
        ordered = sorted(routes, key=lambda r: len(_segments(r.prefix)), reverse=True)
        self._routes = [(route, _segments(route.prefix)) for route in ordered]
        self._bases = {route.prefix: URL(route.upstream) for route in routes}

    def match(self, path: RequestPath) -> RouteConfig | None:
        """Return the route for ``path`` or ``None`` when no prefix matches."""
        decoded = path.decoded
        for route, segments in self._routes:
            if decoded[: len(segments)] == segments:
                return route
        return None

    def upstream_url(self, route: RouteConfig, path: RequestPath, query: bytes) -> URL:
        """The URL to request upstream: the route's base URL, then the path after the prefix
        (segments as the client encoded them), then the query as sent.

        Args:
            route: the route :meth:`match` returned for ``path``.
            path: the normalised request path.
            query: the raw query string, without ``?``.
        """
        base = self._bases[route.prefix]
        rest = path.raw[len(_segments(route.prefix)) :]
        tail = ("/" + "/".join(_escape(s) for s in rest)) if rest else ""
        # No userinfo: it goes as the route's Authorization header
        # (:attr:`~streamhop.sidecar.config.RouteConfig.upstream_headers`). In the URL, aiohttp
        # raises on every request that also carries a client's Authorization.
        return URL.build(
            scheme=base.scheme,
            host=base.raw_host or "",
            port=base.explicit_port,
            path=base.raw_path.rstrip("/") + tail,
            query_string=_escape_query(query) if query else "",
            encoded=True,
        )

    def control_stream_id(self, route: RouteConfig, path: RequestPath) -> str | None:
        """The ``<stream-id>`` of a ``<route prefix>/streamhop/v1/streams/<stream-id>`` path
        (streamhop's own control endpoint, never proxied), else ``None``."""
        rest = path.decoded[len(_segments(route.prefix)) :]
        if len(rest) == 4 and rest[:3] == CONTROL_SEGMENTS and rest[3]:
            return rest[3]
        return None


CONTROL_SEGMENTS = ("streamhop", "v1", "streams")
"""Path segments (after a route's prefix) of streamhop's stream control endpoint."""
CONTROL_METHODS = ("GET", "DELETE")
"""The methods the stream control path serves, whatever a route's ``methods`` forwards: ``GET``
follows the stream (docs/resume.md, "Followers"), ``DELETE`` stops it; others get ``405``."""


def _segments(prefix: str) -> tuple[str, ...]:
    stripped = prefix.strip("/")
    return tuple(stripped.split("/")) if stripped else ()


def _escape(segment: str) -> str:
    """A raw path segment with anything outside ``pchar`` percent-encoded (its bytes)."""
    if all(c in _PCHAR for c in segment):
        return segment
    return "".join(
        c if c in _PCHAR else "".join(f"%{b:02X}" for b in c.encode("latin-1")) for c in segment
    )


def _escape_query(query: bytes) -> str:
    """The raw query, with ``#`` and bytes outside printable ASCII percent-encoded."""
    return "".join(chr(b) if 0x21 <= b <= 0x7E and b != 0x23 else f"%{b:02X}" for b in query)


def raw_path(scope: Mapping[str, Any]) -> str:
    """The request path as the client sent it (ASGI ``raw_path``, else ``path``), as Latin-1."""
    raw = scope.get("raw_path")
    if raw:
        return bytes(raw).decode("latin-1")
    return str(scope["path"])
