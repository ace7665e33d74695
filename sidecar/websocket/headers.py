"""Which headers a WebSocket generation sends upstream, and which it is bound to.

The handshake's headers describe the WebSocket as much as the generation; a ``request``
message may carry headers of its own (a browser cannot set ``Authorization`` on a handshake),
which replace same-named handshake headers. Resume and stop are bound to what went upstream.
"""

from __future__ import annotations

from typing import Final

_HANDSHAKE_ONLY: Final = ("origin", "accept-encoding")
"""Handshake headers that belong to the WebSocket, not to the generation (a browser ``Origin``
would make some providers apply CORS rules meant for browsers)."""
_DROP_ALWAYS: Final = frozenset(("accept-encoding", "content-type"))


def generation_headers(forward: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The handshake's forwarded headers a generation keeps: not ``Origin``,
    ``Accept-Encoding`` or ``Sec-WebSocket-*``."""
    return [
        (n, v)
        for n, v in forward
        if n not in _HANDSHAKE_ONLY and not n.startswith("sec-websocket-")
    ]


def caller_headers(
    handshake: list[tuple[bytes, bytes]], message: list[tuple[str, str]]
) -> list[tuple[bytes, bytes]]:
    """The caller's headers as a generation sends them upstream (ASGI shape, lower-case
    names): the handshake's, with the message's replacing same-named ones."""
    override = {n.lower().encode("latin-1") for n, _ in message}
    out = [(n, v) for n, v in handshake if n.lower() not in override]
    out.extend((n.lower().encode("latin-1"), v.encode("latin-1")) for n, v in message)
    return out


def combine(
    handshake: list[tuple[str, str]], message: list[tuple[str, str]]
) -> list[tuple[str, str]]:
    """Handshake headers, with the message's headers replacing same-named ones; the body's
    ``Content-Type`` and the upstream ``Accept-Encoding`` are streamhop's to set."""
    override = {n.lower() for n, _ in message}
    out = [(n, v) for n, v in handshake if n not in override and n not in _DROP_ALWAYS]
    out.extend((n, v) for n, v in message if n.lower() not in _DROP_ALWAYS)
    return out
