"""The ``streamhop`` command: ``serve``, ``simulate``, ``demo``.

Flags are those of DESIGN.md ("CLI"); ``streamhop COMMAND --help`` lists them with defaults.

A command that cannot start says so in one line on stderr and exits 2: an invalid flag or config
key (:class:`ConfigError`), or a listener that cannot bind (:class:`ListenError`, raised by
:func:`bind_listener` for ``serve``'s two listeners and ``simulate``'s one). The listeners are
bound by streamhop itself before uvicorn or aiohttp start, because both log and exit (uvicorn:
``sys.exit(3)`` from inside the server task, a traceback per listener) when they bind.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import socket
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Final

from streamhop.middleware.errors import ConfigError, StreamHopError
from streamhop.sidecar.config import (
    DEFAULT_ADMIN_LISTEN,
    DEFAULT_LISTEN,
    Config,
    config_from_dict,
    load_config,
    parse_hostport,
    route_for_upstream,
)


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


def bind_listener(listener: str, key: str, host: str, port: int) -> list[socket.socket]:
    """Bind and listen on the sockets of one listener (the server accepts on them later).

    Binds what ``loop.create_server(host=..., port=...)`` would: one socket per address
    ``host`` resolves to (``localhost``: 127.0.0.1 and ::1), ``SO_REUSEADDR`` on (a restart
    must not wait out TIME_WAIT; a port another socket *listens* on still fails),
    ``IPV6_V6ONLY`` on IPv6 sockets. It listens at once, so a second listener of the same
    process on the same port is refused here rather than inside the server's start-up.

    Args:
        listener: the listener's name for the error (``proxy listener``).
        key: the config key and flag that set the address, for the error.
        host: an address or host name.
        port: a TCP port; 0 picks a free one.

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
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
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


def _parser(command: str | None) -> argparse.ArgumentParser:
    """The parser; only ``command``'s own flags are loaded, so ``serve`` does not import the
    simulator or the demo (a third of its start-up time)."""
    parser = argparse.ArgumentParser(
        prog="streamhop",
        description="Lossless SSE re-chunking proxy for fast LLM providers.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the sidecar proxy")
    serve.add_argument("--config", type=Path, help="TOML config file (see config.example.toml)")
    serve.add_argument(
        "--listen", metavar="HOST:PORT", help=f"proxy listener (default {DEFAULT_LISTEN})"
    )
    serve.add_argument(
        "--admin-listen",
        metavar="HOST:PORT",
        help=f"admin listener: /metrics /healthz /readyz (default {DEFAULT_ADMIN_LISTEN})",
    )
    serve.add_argument(
        "--upstream",
        metavar="URL",
        help='shorthand for one route with prefix "/" to URL (replaces the config\'s routes)',
    )
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])

    simulate = sub.add_parser("simulate", help="run a fast fake LLM provider")
    if command == "simulate":
        from streamhop.sidecar.simulate import cli as simulate_cli

        simulate_cli.add_arguments(simulate)

    demo = sub.add_parser("demo", help="show streamhop's effect on a simulated fast provider")
    if command == "demo":
        from streamhop.sidecar import demo as demo_mod

        demo_mod.add_arguments(demo)
    return parser


def build_serve_config(args: argparse.Namespace) -> Config:
    """Merge ``--config`` with the command-line overrides.

    Raises:
        ConfigError: invalid file, flag, or no route at all.
    """
    config = load_config(args.config) if args.config else config_from_dict({})
    if args.upstream:
        config = replace(config, routes=(route_for_upstream(args.upstream),))
    server = config.server
    if args.listen:
        parse_hostport("--listen", args.listen)
        server = replace(server, listen=args.listen)
    if args.admin_listen:
        parse_hostport("--admin-listen", args.admin_listen)
        server = replace(server, admin_listen=args.admin_listen)
    config = replace(config, server=server)
    if not config.routes:
        raise ConfigError("routes", "no route: pass --upstream URL or add [[routes]] to --config")
    return config


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``streamhop`` console script; returns the exit code."""
    words = list(sys.argv[1:] if argv is None else argv)
    command = words[0] if words and not words[0].startswith("-") else None
    args = _parser(command).parse_args(words)
    if args.command == "serve":
        logging.basicConfig(
            level=args.log_level.upper(),
            format="%(asctime)s %(levelname)s %(name)s %(message)s",
            stream=sys.stderr,
        )
        try:
            config = build_serve_config(args)
        except ConfigError as exc:
            print(f"streamhop serve: {exc}", file=sys.stderr)
            return 2
        from streamhop.sidecar.server import serve

        try:
            return _run(serve(config))
        except ListenError as exc:
            print(f"streamhop serve: {exc}", file=sys.stderr)
            return 2
    if args.command == "simulate":
        from streamhop.sidecar.simulate import cli as simulate_cli

        return simulate_cli.run(args)
    from streamhop.sidecar import demo as demo_mod

    return demo_mod.run(args)


def _run(coro: asyncio.Future[int] | object) -> int:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
        return int(asyncio.run(coro))  # type: ignore[arg-type]
    return int(uvloop.run(coro))  # type: ignore[arg-type]


if __name__ == "__main__":
    # ``python -m streamhop.sidecar.cli`` (tests, the demo): run the imported module's ``main``,
    # not this ``__main__`` copy, whose ListenError is another class than the one server.py and
    # the simulator raise (streamhop.sidecar.cli's).
    from streamhop.sidecar.cli import main as _main

    sys.exit(_main())
