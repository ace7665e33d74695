"""Helpers for tests that run real servers on loopback ports.

* :func:`start_streamhop` runs a ``streamhop`` subcommand as a real process and waits for the
  ``listening on http://...`` line it prints (ports chosen by the OS: port 0).
* :class:`BackgroundAiohttp` runs a real ``aiohttp.web`` app in a thread with its own loop, for
  upstreams whose behaviour a test scripts (replaying a fixture, echoing headers).
"""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from aiohttp import web

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"
_READY = re.compile(rb"listening on (http://[0-9.]+:\d+)(?: \(admin (http://[0-9.]+:\d+)\))?")


class StreamhopProcess:
    """A running ``streamhop`` subcommand; ``url`` (and ``admin_url`` for serve) once ready."""

    def __init__(self, argv: Sequence[str], timeout_s: float = 30.0) -> None:
        self.argv = list(argv)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streamhop.sidecar.cli", *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.stderr_lines: list[bytes] = []
        self.stdout_lines: list[bytes] = []
        found: list[re.Match[bytes]] = []
        ready = threading.Event()

        def read_stdout() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                self.stdout_lines.append(line)
                if not found:
                    match = _READY.search(line)
                    if match:
                        found.append(match)
                        ready.set()
            ready.set()

        def read_stderr() -> None:
            assert self.proc.stderr is not None
            for line in self.proc.stderr:
                self.stderr_lines.append(line)

        self._readers = [
            threading.Thread(target=read_stdout, daemon=True),
            threading.Thread(target=read_stderr, daemon=True),
        ]
        for reader in self._readers:
            reader.start()
        ready.wait(timeout_s)
        if not found:
            self.stop()
            raise RuntimeError(
                f"streamhop {' '.join(argv)} did not start within {timeout_s:g} s:\n"
                + b"".join(self.stderr_lines).decode(errors="replace")[-3000:]
            )
        self.url = found[0].group(1).decode()
        admin = found[0].group(2)
        self.admin_url = admin.decode() if admin else None

    @property
    def stderr(self) -> str:
        return b"".join(self.stderr_lines).decode(errors="replace")

    def stop(self, timeout_s: float = 15.0) -> int:
        """SIGTERM, wait, SIGKILL if needed; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for reader in self._readers:
            reader.join(5)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()
        return self.proc.returncode


def start_streamhop(*argv: str) -> StreamhopProcess:
    """Start ``streamhop ARGV...`` and wait until it listens."""
    return StreamhopProcess(argv)


class BackgroundAiohttp:
    """Serve an aiohttp app on 127.0.0.1 (free port) from a background thread.

    Use as a context manager; ``url`` is ``http://127.0.0.1:PORT``.
    """

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self.url = ""

    def __enter__(self) -> BackgroundAiohttp:
        self._thread.start()
        self.url = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(15)
        return self

    async def _start(self) -> str:
        self._runner = web.AppRunner(self.app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        return f"http://127.0.0.1:{port}"

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self.loop).result(15)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(15)
        self.loop.close()
