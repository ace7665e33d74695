"""Which headers cross the proxy, and the ``X-Streamhop-*`` control headers.

Hop-by-hop headers are dropped in both directions, as RFC 9110 §7.6.1 requires of a proxy:
``Connection`` and every header it names, ``Proxy-Connection``, ``Keep-Alive``, ``TE``,
``Transfer-Encoding``, ``Upgrade``. ``Host`` and ``Content-Length`` are set anew by the client
library for the upstream request. Request headers starting with ``x-streamhop-`` are instructions
to streamhop and are never forwarded.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from streamhop.middleware.errors import StreamHopError
from streamhop.sidecar.config import RouteConfig

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
CONTROL_PREFIX: Final = b"x-streamhop-"
MAX_TIMEOUT_MS: Final = 86_400_000
"""Largest ``X-Streamhop-Timeout-Ms`` accepted (one day)."""


class ControlHeaderError(StreamHopError):
    """An ``X-Streamhop-*`` header has a value streamhop cannot use (answered with 400)."""


class HeaderValueError(StreamHopError):
    """A request header value streamhop cannot forward byte for byte (answered with 400)."""


@dataclass(frozen=True, slots=True)
class Controls:
    """Per-request overrides from ``X-Streamhop-*`` headers (``None``: use the config)."""

    flush_interval_ms: float | None = None
    mode: str | None = None
    timeout_ms: float | None = None


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
    flush = mode = timeout = None
    for name, value in raw:
        if name in drop:
            continue
        if name.startswith(CONTROL_PREFIX):
            key = name[len(CONTROL_PREFIX) :]
            text = value.decode("latin-1").strip()
            if key == b"flush-interval-ms":
                flush = _non_negative("X-Streamhop-Flush-Interval-Ms", text)
            elif key == b"mode":
                if text not in ("coalesce", "passthrough"):
                    raise ControlHeaderError(
                        f"X-Streamhop-Mode must be 'coalesce' or 'passthrough', got {text!r}"
                    )
                mode = text
            elif key == b"timeout-ms":
                timeout = _non_negative("X-Streamhop-Timeout-Ms", text)
                if timeout == 0 or timeout > MAX_TIMEOUT_MS:
                    raise ControlHeaderError(
                        f"X-Streamhop-Timeout-Ms must be > 0 and <= {MAX_TIMEOUT_MS}, got {text!r}"
                    )
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
    return forward, Controls(flush_interval_ms=flush, mode=mode, timeout_ms=timeout)


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


def _non_negative(header: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ControlHeaderError(
            f"{header} must be a number of milliseconds, got {text!r}"
        ) from None
    if not value >= 0 or value == float("inf"):
        raise ControlHeaderError(f"{header} must be a finite number >= 0, got {text!r}")
    return value


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


def effective_timeout(route: RouteConfig, controls: Controls) -> float | None:
    """Seconds the request may take: the route's ``timeout_s``, shortened (never extended) by
    ``X-Streamhop-Timeout-Ms``; ``None`` for no deadline."""
    if controls.timeout_ms is None:
        return route.timeout_s
    requested = controls.timeout_ms / 1000.0
    if route.timeout_s is None:
        return requested
    return min(route.timeout_s, requested)
