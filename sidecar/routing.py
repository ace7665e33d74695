"""Route table: the longest ``[[routes]].prefix`` that matches a request path wins."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .config import RouteConfig


class RouteTable:
    """Finds the route of a request path and builds its upstream URL.

    A prefix matches a path equal to it or continuing it at a ``/`` boundary: ``/openai``
    matches ``/openai`` and ``/openai/v1/x`` but not ``/openaix``; ``/`` matches every path.
    """

    def __init__(self, routes: Sequence[RouteConfig]) -> None:
        # Longest first, so the first match is the longest one.
        self._routes = sorted(routes, key=lambda r: len(r.prefix.rstrip("/")), reverse=True)

    def match(self, path: str) -> RouteConfig | None:
        """Return the route for ``path`` or ``None`` when no prefix matches."""
        for route in self._routes:
            prefix = route.prefix.rstrip("/")
            if not prefix or path == prefix or path.startswith(prefix + "/"):
                return route
        return None

    @staticmethod
    def upstream_url(route: RouteConfig, raw_path: str, query: bytes) -> str:
        """The URL to request upstream, still percent-encoded as the client sent it.

        Args:
            route: the matched route (its ``upstream`` has no trailing ``/``).
            raw_path: the request path as sent (percent-encoded), from ASGI ``raw_path``.
            query: the raw query string, without ``?``.
        """
        rest = raw_path[len(route.prefix.rstrip("/")) :]
        url = route.upstream + rest
        if query:
            url += "?" + query.decode("latin-1")
        return url


def raw_path(scope: Mapping[str, Any]) -> str:
    """The request path as the client sent it (ASGI ``raw_path``, else ``path``)."""
    raw = scope.get("raw_path")
    if raw:
        return bytes(raw).decode("latin-1")
    return str(scope["path"])
