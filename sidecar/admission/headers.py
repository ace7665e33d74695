"""Which headers cross the proxy (the ``X-Streamhop-*`` control headers are read by
:mod:`streamhop.middleware.controls` and never forwarded).

Hop-by-hop headers are dropped in both directions, as RFC 9110 §7.6.1 requires of a proxy:
``Connection`` and every header it names, ``Proxy-Connection``, ``Keep-Alive``, ``TE``,
``Transfer-Encoding``, ``Upgrade``. ``Host`` and ``Content-Length`` are set anew by the client
library for the upstream request. Request headers starting with ``x-streamhop-`` are instructions
to streamhop and are never forwarded.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final

from streamhop.middleware.controls import Controls, is_control, parse_controls
from streamhop.middleware.errors import StreamHopError

HOP_BY_HOP: Final = frozenset(
    (
        b"connection",
        b"proxy-connection",
        b"keep-alive",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    )
)
_REQUEST_DROP: Final = HOP_BY_HOP | {b"host", b"content-length"}


class HeaderValueError(StreamHopError):
    """A request header value streamhop cannot forward byte for byte (answered with 400)."""


def _connection_tokens(headers: Iterable[tuple[bytes, bytes]]) -> set[bytes]:
    tokens: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b","))
    return tokens


def upstream_request_headers(
    raw: list[tuple[bytes, bytes]],
) -> tuple[list[tuple[str, str]], Controls]:
    """Split an ASGI request's headers into those to forward and the control headers.

    Args:
        raw: ASGI ``scope["headers"]`` (lower-case names, bytes).

    Returns:
        ``(forward, controls)``: ``forward`` as ``(name, value)`` strings, in order, duplicates
        kept. Values are decoded as UTF-8 because the client library (aiohttp) writes header
        values as UTF-8: what the provider receives is then exactly the bytes the client sent
        (RFC 9110 §5.5: field values are opaque octets; decoding them as Latin-1 would encode
        every non-ASCII byte twice).

    Raises:
        ControlHeaderError: a control header with an invalid value.
        HeaderValueError: a value that is not UTF-8 (it could not be forwarded unchanged).
    """
    drop = _REQUEST_DROP | _connection_tokens(raw)
    forward: list[tuple[str, str]] = []
    for name, value in raw:
        if name in drop or is_control(name):
            continue
        if value.isascii():
            forward.append((name.decode("latin-1"), value.decode("ascii")))
            continue
        try:
            forward.append((name.decode("latin-1"), value.decode("utf-8")))
        except UnicodeDecodeError:
            raise HeaderValueError(
                f"the value of header {name.decode('latin-1')!r} is not UTF-8; streamhop "
                "forwards header values byte for byte and cannot forward these bytes"
            ) from None
    return forward, parse_controls(raw)


def response_headers(
    upstream: Iterable[tuple[bytes, bytes]], drop: frozenset[bytes] = frozenset()
) -> list[tuple[bytes, bytes]]:
    """Filter upstream response headers (raw, any case) for the ASGI response.

    ``Access-Control-*`` headers are always dropped: which browser origins may read an answer
    is streamhop's decision (:mod:`.guard`), never the provider's.

    Args:
        upstream: the provider's raw response headers.
        drop: further lower-case names to drop (``content-length`` for re-chunked bodies).
    """
    items = list(upstream)
    skip = HOP_BY_HOP | drop | _connection_tokens(items)
    out: list[tuple[bytes, bytes]] = []
    for name, value in items:
        lower = name.lower()
        if lower not in skip and not lower.startswith(b"access-control-"):
            out.append((lower, value))
    return out


def merge_route_headers(
    forward: list[tuple[str, str]], route_headers: Mapping[str, str]
) -> list[tuple[str, str]]:
    """Client headers, with the route's configured headers replacing same-named ones."""
    if not route_headers:
        return forward
    override = {name.lower() for name in route_headers}
    merged = [(n, v) for n, v in forward if n.lower() not in override]
    merged.extend(route_headers.items())
    return merged
