"""Starting and stopping the processes a benchmark measures: the one helper every bench uses.

A benchmark starts servers (``streamhop simulate`` and ``serve``, nginx, LiteLLM, Portkey, its
own uvicorn app, a spike relay), waits until each is ready, and stops exactly what it started.
This module owns that, so no benchmark has its own copy:

* :func:`start` runs a command and waits, bounded by ``timeout_s``, for what the process itself
  shows once it is ready: either a line of its output matching ``ready`` (streamhop's
  ``... listening on URL`` line, :data:`LISTENING`), or, for a program that prints no such line
  (nginx, LiteLLM, Portkey, the spike relays), its port on 127.0.0.1 accepting a connection.
  The wait ends the moment the line comes, the port answers or the process exits; between two
  port probes it waits on the process itself (``Popen.wait``), so an exit is seen at once.
* :meth:`Process.stop` signals the PID it started (SIGTERM unless told otherwise: py-spy wants
  SIGINT to write its profile), then kills that PID after ``stop_timeout_s``. Nothing is ever
  found or killed by name.
* A start that fails raises :class:`StartError`, which names the process, says why, and quotes
  the last line of its output.

Output read for a ready line keeps being drained by a daemon thread afterwards (a child never
blocks on a full pipe); its last lines are kept for error messages. Output of a port-probed
process goes to ``log`` (a file the caller reads when something fails), not through this
process: a peer that logs every request would otherwise cost the benchmark client CPU.
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

# `streamhop simulate listening on URL` and `streamhop serve listening on URL (admin URL)`.
LISTENING = re.compile(rb"listening on (https?://[0-9.]+:\d+)(?: \(admin (http://[0-9.]+:\d+)\))?")
TAIL_LINES = 20
# How long one port probe waits on the process before probing again (it wakes on an exit).
PROBE_EVERY_S = 0.05


class StartError(RuntimeError):
    """A process did not become ready: it exited, or showed no sign within the timeout."""


class Process:
    """One process a benchmark started, stopped by its PID.

    Attributes:
        name: what it is, for messages (``simulator``, ``nginx``, ...).
        popen: the child (its ``pid`` is what :meth:`stop` signals).
        url: the URL from its ready line (``None`` when readiness was a port probe).
        admin_url: the admin URL from its ready line, when it printed one.
    """

    def __init__(
        self,
        name: str,
        popen: subprocess.Popen[bytes],
        *,
        stop_signal: signal.Signals,
        stop_timeout_s: float,
        echo: bool,
    ) -> None:
        self.name = name
        self.popen = popen
        self.url: str | None = None
        self.admin_url: str | None = None
        self._stop_signal = stop_signal
        self._stop_timeout_s = stop_timeout_s
        self._echo = echo
        self._tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self._settled = threading.Event()
        self._reader: threading.Thread | None = None

    def __repr__(self) -> str:
        state = "running" if self.popen.poll() is None else f"exited {self.popen.returncode}"
        return f"<Process {self.name} pid={self.pid} {state} url={self.url}>"

    @property
    def pid(self) -> int:
        """The PID this module started."""
        return self.popen.pid

    def tail(self) -> str:
        """The last lines of output read from the pipe (empty for a port-probed process)."""
        return "\n".join(self._tail)

    def stop(self) -> None:
        """Signal our PID, wait up to ``stop_timeout_s``, then kill that PID; idempotent."""
        if self.popen.poll() is None:
            self.popen.send_signal(self._stop_signal)
            try:
                self.popen.wait(timeout=self._stop_timeout_s)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        if self._reader is not None:
            self._reader.join(timeout=5)
        if self.popen.stdout is not None:
            self.popen.stdout.close()

    def __enter__(self) -> Process:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- readiness ----------------------------------------------------------------------------
    def _read(self, ready: re.Pattern[bytes]) -> None:
        """Reader thread: find the ready line, then keep draining; wakes the waiter on EOF."""
        stdout = self.popen.stdout
        assert stdout is not None
        try:
            for raw in stdout:
                line = raw.decode(errors="replace").rstrip()
                self._tail.append(line)
                if self._echo:
                    print(f"[{self.name}] {line}", flush=True)
                if not self._settled.is_set():
                    match = ready.search(raw)
                    if match:
                        groups = [g.decode() if g else None for g in match.groups()]
                        self.url = groups[0] if groups else match.group(0).decode()
                        self.admin_url = groups[1] if len(groups) > 1 else None
                        self._settled.set()
        except ValueError:
            pass  # the pipe was closed by stop() while reading
        finally:
            self._settled.set()  # EOF: the process ended (or closed stdout) before the line

    def _wait_line(self, ready: re.Pattern[bytes], timeout_s: float) -> str | None:
        self._reader = threading.Thread(
            target=self._read, args=(ready,), name=f"read-{self.name}", daemon=True
        )
        self._reader.start()
        self._settled.wait(timeout_s)
        if self.url is not None:
            return None
        if self._settled.is_set():  # EOF: it is exiting; give it a moment to report its status
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=2)
        if self.popen.poll() is not None:
            return f"exited with status {self.popen.returncode} before its ready line"
        if self._settled.is_set():
            return "closed its output before its ready line"
        return f"printed no ready line within {timeout_s:g} s"

    def _wait_port(self, port: int, timeout_s: float) -> str | None:
        deadline = time.monotonic() + timeout_s
        while True:
            if self.popen.poll() is not None:
                return f"exited with status {self.popen.returncode} while starting"
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    return None
            except OSError:
                pass
            left = deadline - time.monotonic()
            if left <= 0:
                return f"did not listen on 127.0.0.1:{port} within {timeout_s:g} s"
            # Not a blind sleep: returns at once if the process exits meanwhile.
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=min(PROBE_EVERY_S, left))


def start(
    argv: Sequence[str],
    *,
    name: str,
    ready: re.Pattern[bytes] | None = None,
    port: int | None = None,
    timeout_s: float = 30.0,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    log: Path | None = None,
    stop_signal: signal.Signals = signal.SIGTERM,
    stop_timeout_s: float = 20.0,
    echo: bool = False,
) -> Process:
    """Start ``argv`` and wait until it is ready (give exactly one of ``ready`` and ``port``).

    Args:
        argv: the command.
        name: what it is, for messages.
        ready: a pattern its stdout (stderr merged) shows once it serves; group 1, when the
            pattern has groups, is its URL and group 2 its admin URL (see :data:`LISTENING`).
        port: instead of ``ready``: ready when 127.0.0.1:``port`` accepts a connection.
        timeout_s: the bound on the wait, seconds.
        env: variables added to this process's environment for the child.
        cwd: the child's working directory.
        log: with ``port``: the file its stdout and stderr go to (else discarded).
        stop_signal: what :meth:`Process.stop` sends first.
        stop_timeout_s: seconds :meth:`Process.stop` waits before SIGKILL.
        echo: with ``ready``: print every line of its output, prefixed with ``name``.

    Returns:
        The running process (``url`` and ``admin_url`` filled from its ready line).

    Raises:
        StartError: it exited or did not become ready within ``timeout_s`` (it is stopped
            first; the message has the last line of its output when there was one).
        ValueError: neither or both of ``ready`` and ``port``.
    """
    if (ready is None) == (port is None):
        raise ValueError("start() needs exactly one of ready= and port=")
    child_env = {**os.environ, **env} if env is not None else None
    if ready is not None:
        popen = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=child_env,
        )
    else:
        out = log.open("wb") if log is not None else None
        try:
            popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out if out is not None else subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=child_env,
            )
        finally:
            if out is not None:
                out.close()
    process = Process(
        name, popen, stop_signal=stop_signal, stop_timeout_s=stop_timeout_s, echo=echo
    )
    if ready is not None:
        problem = process._wait_line(ready, timeout_s)
    else:
        assert port is not None
        problem = process._wait_port(port, timeout_s)
    if problem is not None:
        process.stop()
        last = process._tail[-1] if process._tail else ""
        raise StartError(f"{name} {problem}" + (f" — output: {last[:200]}" if last else ""))
    return process


def start_streamhop(
    argv: Sequence[str],
    *,
    name: str | None = None,
    wrap: Sequence[str] = (),
    timeout_s: float = 30.0,
    env: Mapping[str, str] | None = None,
) -> Process:
    """Run ``streamhop ARGV...`` (``simulate`` or ``serve``) and wait for its listening line.

    Args:
        argv: the CLI arguments, subcommand first.
        name: for messages; default ``streamhop <subcommand>``.
        wrap: a command to run it under (``py-spy record ... --``); then stopped by SIGINT,
            which makes py-spy write its profile and stop its child.
        timeout_s: bound on the wait for the line, seconds.
        env: variables added for the child (``SSL_CERT_FILE`` to trust a local CA).

    Returns:
        The process; ``url`` is its listener, ``admin_url`` its admin listener (``serve``).

    Raises:
        StartError: it did not print its listening line within ``timeout_s``.
    """
    return start(
        [*wrap, sys.executable, "-m", "streamhop.sidecar.cli", *argv],
        name=name or f"streamhop {argv[0] if argv else ''}".strip(),
        ready=LISTENING,
        timeout_s=timeout_s,
        env=env,
        stop_signal=signal.SIGINT if wrap else signal.SIGTERM,
        stop_timeout_s=30.0,
    )



def start_sidecar(
    upstream: str,
    *extra: str,
    name: str = "sidecar",
    wrap: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> Process:
    """``streamhop serve`` in front of ``upstream`` on free loopback ports (proxy and admin),
    logging warnings only; ``extra`` arguments go after (``--config FILE``). See
    :func:`start_streamhop` for the rest.

    Raises:
        StartError: it did not print its listening line in time.
    """
    argv = ["serve", "--upstream", upstream, "--listen", "127.0.0.1:0"]
    argv += ["--admin-listen", "127.0.0.1:0", "--log-level", "warning", *extra]
    return start_streamhop(argv, name=name, wrap=wrap, env=env)

def free_port() -> int:
    """Return a free TCP port on 127.0.0.1 (the kernel's pick), for a program that needs one
    on its command line (nginx, LiteLLM, Portkey, the spike relays)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
