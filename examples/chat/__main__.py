"""``python -m examples.chat``: start ``streamhop simulate`` and the chat app, print the URL.

Run from the repository root. The simulator listens on a free loopback port and the app's SDK
is pointed at it (``OPENAI_BASE_URL``); the app listens on ``--host``/``--port`` (default
``127.0.0.1:8000``; ``--port 0`` picks a free one). Ctrl-C stops both.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import threading

import uvicorn

from .app import create_app

_READY = re.compile(r"listening on (http://\S+)")


class _Server(uvicorn.Server):
    """A uvicorn server that prints the page's URL once it accepts connections."""

    def __init__(self, config: uvicorn.Config, url: str, provider: str) -> None:
        super().__init__(config)
        self.url = url
        self.provider = provider

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        print(
            f"streamhop chat example on {self.url}  (simulated provider: {self.provider})",
            flush=True,
        )


def start_simulator(args: list[str], timeout_s: float = 30.0) -> tuple[subprocess.Popen[str], str]:
    """Start ``streamhop simulate`` on a free loopback port.

    Returns:
        The process and its base URL.

    Raises:
        RuntimeError: it did not print its ``listening on`` line within ``timeout_s`` seconds.
    """
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamhop.sidecar.cli",
            "simulate",
            "--listen",
            "127.0.0.1:0",
            *args,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    found: list[str] = []
    ready = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:  # keep draining, so the pipe never fills
            match = _READY.search(line)
            if match and not found:
                found.append(match.group(1))
                ready.set()
        ready.set()

    threading.Thread(target=read, daemon=True).start()
    if not ready.wait(timeout_s) or not found:
        proc.kill()
        raise RuntimeError("streamhop simulate did not start")
    return proc, found[0]


def main(argv: list[str] | None = None) -> int:
    """Run the example until Ctrl-C; returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m examples.chat", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    parser.add_argument(
        "--tokens-per-second", default="2000", help="the simulated provider's output rate"
    )
    parser.add_argument(
        "--events-per-second", default="200", help="the simulated provider's SSE event rate"
    )
    args = parser.parse_args(argv)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
    except OSError as exc:
        print(f"cannot listen on {args.host}:{args.port}: {exc} (try --port 0)", file=sys.stderr)
        return 1
    simulator, provider = start_simulator(
        [
            "--tokens-per-second",
            args.tokens_per_second,
            "--events-per-second",
            args.events_per_second,
        ]
    )
    try:
        os.environ["OPENAI_BASE_URL"] = provider + "/v1"
        os.environ.setdefault("OPENAI_API_KEY", "unused-by-the-simulator")
        url = f"http://{args.host}:{sock.getsockname()[1]}/"
        config = uvicorn.Config(create_app(), log_level="warning", timeout_graceful_shutdown=2)
        # uvicorn shuts down gracefully on SIGINT/SIGTERM, then raises the signal again: as
        # KeyboardInterrupt (not the default SIGTERM death) it lets the simulator be stopped.
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        _Server(config, url, provider).run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    finally:
        simulator.terminate()
        try:
            simulator.wait(10)
        except subprocess.TimeoutExpired:
            simulator.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
