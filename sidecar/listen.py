"""Binding a listener before its server starts, with one clear error when it cannot.

``streamhop serve`` (proxy and admin listeners) and ``streamhop simulate`` bind their sockets
here and hand them to uvicorn / aiohttp, because both log and exit (uvicorn: ``sys.exit(3)``
from inside the server task, a traceback per listener) when they bind themselves. A failure is a
:class:`ListenError` that the command prints as one line and exits 2.
"""

from __future__ import annotations

import errno
import socket
from typing import Final

from streamhop.middleware.errors import StreamHopError


class ListenError(StreamHopError):
    """A listener cannot bind its address.

    Attributes:
        listener: which listener, as a person names it (``admin listener``).
        address: the ``HOST:PORT`` it was asked to listen on.
        key: the config key and flag that change the address (``[server] listen / --listen``).
        reason: the operating system's reason, lower case (``address already in use``).
    """

    def __init__(self, listener: str, address: str, key: str, reason: str) -> None:
        super().__init__(f"cannot listen on {address} for the {listener} ({key}): {reason}")
        self.listener = listener
        self.address = address
        self.key = key
        self.reason = reason


LISTEN_BACKLOG: Final = 2048
"""Pending connections per listener (uvicorn's default ``backlog``)."""


def bind_listener(
    listener: str, key: str, host: str, port: int, *, reuse_port: bool = False, listen: bool = True
) -> list[socket.socket]:
    """Bind and listen on the sockets of one listener (the server accepts on them later).

    Binds what ``loop.create_server(host=..., port=...)`` would: one socket per address
    ``host`` resolves to (``localhost``: 127.0.0.1 and ::1), ``SO_REUSEADDR`` on (a restart
    must not wait out TIME_WAIT; a port another socket *listens* on still fails),
    ``IPV6_V6ONLY`` on IPv6 sockets. It listens at once, so a second listener of the same
    process on the same port is refused here rather than inside the server's start-up.

    With ``reuse_port`` (``[server] workers > 1``), ``SO_REUSEPORT`` too: every worker binds its
    own sockets on the same address and the kernel spreads new connections over their accept
    queues. The supervisor binds them first without ``listen`` to hold the port (and learn it,
    for port 0) while workers come and go; a socket that does not listen gets no connection.

    Args:
        listener: the listener's name for the error (``proxy listener``).
        key: the config key and flag that set the address, for the error.
        host: an address or host name.
        port: a TCP port; 0 picks a free one.
        reuse_port: set ``SO_REUSEPORT`` (Linux, the BSDs, macOS).
        listen: listen at once (``False``: bound only).

    Returns:
        The bound sockets, at least one.

    Raises:
        ListenError: the host does not resolve or an address cannot be bound; every socket
            already bound for this listener is closed.
    """
    shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        infos = socket.getaddrinfo(
            host, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise ListenError(listener, shown, key, _reason(exc)) from None
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            if listen:
                sock.listen(LISTEN_BACKLOG)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise ListenError(listener, shown, key, _reason(exc)) from None
    return sockets


def _reason(exc: OSError) -> str:
    """``address already in use``: the OS's words for ``exc`` without the errno decoration."""
    if exc.errno == errno.EADDRINUSE:
        return "address already in use"
    text = exc.strerror or str(exc)
    return text[:1].lower() + text[1:]
