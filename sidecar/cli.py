"""The ``streamhop`` command: ``serve``, ``simulate``, ``demo``.

Flags are those of DESIGN.md ("CLI"); ``streamhop COMMAND --help`` lists them with defaults.

A command that cannot start says so in one line on stderr and exits 2: an invalid flag or config
key (:class:`ConfigError`), or a listener that cannot bind
(:class:`~streamhop.sidecar.listen.ListenError`, see :mod:`streamhop.sidecar.listen`).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from streamhop.middleware.errors import ConfigError
from streamhop.sidecar.config import (
    DEFAULT_ADMIN_LISTEN,
    DEFAULT_LISTEN,
    Config,
    check_workers,
    config_from_dict,
    load_config,
    parse_hostport,
    parse_workers,
    route_for_upstream,
)
from streamhop.sidecar.listen import ListenError


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
    serve.add_argument(
        "--workers",
        metavar="N|auto",
        help="worker processes on the proxy port (default 1; auto: the CPUs this process may use)",
    )
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    # One worker of a supervisor (--workers above 1 starts them): no admin listener.
    serve.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)

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
    if args.workers:
        server = replace(server, workers=parse_workers("--workers", args.workers))
        check_workers(server, config.resume)
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
        try:
            if config.server.workers > 1 and not args.worker:
                return _run(_supervise(config, args, words))
            from streamhop.sidecar.server import serve

            return _run(serve(config, worker=args.worker))
        except (ConfigError, ListenError) as exc:  # a [record] dir it cannot use, a busy port
            print(f"streamhop serve: {exc}", file=sys.stderr)
            return 2
    if args.command == "simulate":
        from streamhop.sidecar.simulate import cli as simulate_cli

        return simulate_cli.run(args)
    from streamhop.sidecar import demo as demo_mod

    return demo_mod.run(args)


async def _supervise(config: Config, args: argparse.Namespace, words: list[str]) -> int:
    """``[server] workers > 1``: run the supervisor (:mod:`streamhop.sidecar.supervise`); each
    worker is this command line again with ``--worker``."""
    from streamhop.sidecar.supervise import Supervisor

    argv = [sys.executable, "-m", "streamhop.sidecar.cli", *words, "--worker"]
    return await Supervisor(config, argv, lambda: build_serve_config(args)).run()


def _run(coro: asyncio.Future[int] | object) -> int:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
        return int(asyncio.run(coro))  # type: ignore[arg-type]
    return int(uvloop.run(coro))  # type: ignore[arg-type]


if __name__ == "__main__":
    sys.exit(main())
