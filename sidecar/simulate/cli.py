"""``streamhop simulate`` command line: flags, validation, and serving until a signal.

``add_arguments`` fills any parser (the ``streamhop`` subcommand's or :func:`main`'s own), ``run``
serves. Per-flag checks run while parsing (``type=`` functions, so argparse names the flag);
the one cross-flag rule (``--tokens-per-second`` >= ``--events-per-second``) is checked by ``run``
through :class:`~.config.SimulatorConfig`, reported through the same parser when ``add_arguments``
made it (it stores itself as ``simulate_parser`` in the defaults).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import pathlib
import signal
import sys
from collections.abc import Callable
from typing import NoReturn

from aiohttp import web

from streamhop.sidecar.listen import ListenError, bind_listener
from streamhop.sidecar.simulate.app import make_app
from streamhop.sidecar.simulate.config import SimulatorConfig
from streamhop.sidecar.simulate.errors import SimulatorConfigError
from streamhop.sidecar.simulate.timing import load_timed_replay

DEFAULT_LISTEN = "127.0.0.1:8788"
READY_LINE = "streamhop simulate listening on http://{host}:{port}"
# In-flight streams get this long (seconds) after SIGINT/SIGTERM before they are cancelled.
SHUTDOWN_TIMEOUT_S = 1.0


def parse_listen(value: str) -> tuple[str, int]:
    """Parse ``HOST:PORT`` (``[::1]:PORT`` for IPv6; port 0 picks a free port).

    Raises:
        argparse.ArgumentTypeError: not ``HOST:PORT`` with a port in 0-65535.
    """
    host, sep, port_text = value.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT with PORT in 0-65535, got {value!r}")
    return host, int(port_text)


def _non_negative(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
    if not number >= 0 or number == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {value!r}")
    return number


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value!r}")
    return number


def _readable_file(value: str) -> pathlib.Path:
    path = pathlib.Path(value)
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"cannot read {value!r}: {exc.strerror}") from None
    return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``simulate`` flags to ``parser``; defaults come from :class:`SimulatorConfig`."""
    defaults = SimulatorConfig()
    parser.add_argument(
        "--listen",
        type=parse_listen,
        default=DEFAULT_LISTEN,
        metavar="HOST:PORT",
        help=f"address to serve on; port 0 picks a free one (default {DEFAULT_LISTEN})",
    )
    parser.add_argument(
        "--tokens-per-second",
        type=_non_negative,
        default=defaults.tokens_per_second,
        metavar="N",
        help="output tokens per second (default %(default)g)",
    )
    parser.add_argument(
        "--events-per-second",
        type=_non_negative,
        default=defaults.events_per_second,
        metavar="N",
        help="SSE content events per second; 0 = burst, no pacing (default %(default)g)",
    )
    parser.add_argument(
        "--ttft-ms",
        type=_non_negative,
        default=defaults.ttft_ms,
        metavar="N",
        help="milliseconds from request to first content event (default %(default)g)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=defaults.seed,
        metavar="N",
        help="text seed (default %(default)d)",
    )
    parser.add_argument(
        "--max-tokens",
        type=_positive_int,
        default=defaults.max_tokens,
        metavar="N",
        help="answer length when the request names none (default %(default)d)",
    )
    parser.add_argument(
        "--replay",
        type=_readable_file,
        default=None,
        metavar="FILE.sse",
        help="replay this recorded SSE stream for every POST",
    )
    parser.add_argument(
        "--timing",
        type=_readable_file,
        default=None,
        metavar="FILE.json",
        help="with --replay: the recording's timeline ([record], docs/recording.md); the stream "
        "is replayed read by read at the recorded times, with the recorded status",
    )
    parser.add_argument(
        "--buffered-every-ms",
        type=_non_negative,
        default=defaults.buffered_every_ms,
        metavar="N",
        help="the buffered fault: hold the events and write them together every N ms, as a "
        "buffering proxy in front of a provider does; 0 = off (default %(default)g; per "
        "request: header x-sim-buffered-every-ms)",
    )
    parser.add_argument(
        "--no-split-writes",
        dest="split_writes",
        action="store_false",
        help="write each event in one piece instead of cutting it inside UTF-8 sequences",
    )
    parser.set_defaults(simulate_parser=parser)


def config_from_args(args: argparse.Namespace) -> SimulatorConfig:
    """Build the config from parsed flags.

    Raises:
        SimulatorConfigError: the flags break a cross-flag rule; ``key`` is the config field.
    """
    return SimulatorConfig(
        ttft_ms=args.ttft_ms,
        tokens_per_second=args.tokens_per_second,
        events_per_second=args.events_per_second,
        seed=args.seed,
        max_tokens=args.max_tokens,
        replay=args.replay,
        timing=args.timing,
        split_writes=args.split_writes,
        buffered_every_ms=args.buffered_every_ms,
    )


def run(args: argparse.Namespace) -> int:
    """Serve the simulator until SIGINT or SIGTERM.

    Prints ``streamhop simulate listening on http://HOST:PORT`` (the bound port) to stdout once
    listening. Uses uvloop when it is installed.

    Returns:
        0 after a signal; 2 when ``--listen`` cannot be bound (one line on stderr).

    Raises:
        SystemExit: (status 2) the flags are invalid; the message names the flag.
    """
    try:
        config = config_from_args(args)
        if config.replay is not None and config.timing is not None:
            # Checked here so that a mismatched pair is a usage error naming the file.
            load_timed_replay(config.replay, config.timing)
    except SimulatorConfigError as exc:
        _usage_error(args, f"argument --{exc.key.replace('_', '-')}: {exc.reason}")
    host, port = args.listen
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(serve(config, host, port))
    except ListenError as exc:
        print(f"streamhop simulate: {exc}", file=sys.stderr)
        return 2
    return 0


async def serve(
    config: SimulatorConfig,
    host: str,
    port: int,
    *,
    ready: Callable[[str, int], None] | None = None,
) -> None:
    """Serve ``make_app(config)`` on ``host:port`` until SIGINT or SIGTERM.

    Args:
        config: the simulator config.
        host: address to bind.
        port: port to bind; 0 picks a free one.
        ready: called with the host and bound port once listening; default prints the ready line.

    Raises:
        ListenError: ``host:port`` cannot be bound (bound before the app is built, by
            :func:`~streamhop.sidecar.listen.bind_listener`: aiohttp would raise a bare
            ``OSError``).
    """
    sockets = bind_listener("simulator listener", "--listen", host, port)
    app = make_app(config)
    runner = web.AppRunner(
        app, handler_cancellation=True, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_S
    )
    await runner.setup()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGINT, signal.SIGTERM)
    try:
        for sock in sockets:
            await web.SockSite(runner, sock).start()
        bound_port = int(runner.addresses[0][1])
        (ready or _print_ready)(host, bound_port)
        for signum in signals:
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    """Run ``streamhop simulate`` as its own program (``python -m streamhop.sidecar.simulate``)."""
    parser = argparse.ArgumentParser(
        prog="streamhop simulate", description="Serve a fast fake LLM provider."
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


def _print_ready(host: str, port: int) -> None:
    shown = f"[{host}]" if ":" in host else host
    print(READY_LINE.format(host=shown, port=port), flush=True)


def _usage_error(args: argparse.Namespace, message: str) -> NoReturn:
    parser = getattr(args, "simulate_parser", None)
    if isinstance(parser, argparse.ArgumentParser):
        parser.error(message)
    print(f"streamhop simulate: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    with contextlib.suppress(ImportError):
        import uvloop

        return uvloop.new_event_loop
    return None
