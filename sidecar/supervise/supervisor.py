"""The supervisor of ``[server] workers > 1``: N worker processes on one proxy port.

Each worker is ``streamhop serve --worker`` with the supervisor's own command line (so it reads
the same config file and flags), ``--listen`` set to the port the supervisor holds. It binds
that port with ``SO_REUSEPORT`` (:func:`~streamhop.sidecar.listen.bind_listener`): one accept
queue per worker, and the kernel spreads new connections over them by their address hash,
so a burst of connections is split evenly at once (a socket inherited by every worker is one
queue that whichever worker wakes first drains: under a burst, the least busy, which is not
even). The supervisor keeps the port bound without listening, so it stays reserved while
workers come and go, and port 0 is resolved once for all.

- **Readiness**: a worker prints :data:`~streamhop.sidecar.server.WORKER_READY` on its stdout
  (a pipe to the supervisor) once it serves; ``/readyz`` is 200 when every worker of the
  current set has (:mod:`.admin`).
- **A worker that dies** is started again (one warning line with its exit code,
  ``streamhop_worker_restarts_total``); one that dies within :data:`RESTART_BACKOFF_S` of its
  start waits that long first. A worker of the first set that exits before it is ready stops
  the supervisor (exit 2): its own error line says why.
- **SIGTERM / SIGINT**: every worker gets SIGTERM and drains as a single process does
  (``drain_timeout_s``, resume handoffs included); the supervisor exits 0 once all have exited.
  A second signal is passed on (the workers stop their streams at once). A worker still running
  :data:`KILL_AFTER_S` past ``drain_timeout_s`` is killed.
- **SIGHUP**: the config is loaded again (an invalid one is logged and the workers keep
  serving); a new set of workers starts on it, and once all of them are ready the old ones get
  SIGTERM and drain. ``listen`` and ``admin_listen`` are not reloaded.
- **Metrics**: workers run prometheus-client in multiprocess mode, writing to a private
  directory (``PROMETHEUS_MULTIPROC_DIR``, removed at exit); a dead worker's live gauges are
  dropped (``mark_process_dead``), its counters kept.

Workers run in their own session, so a terminal's Ctrl-C reaches the supervisor alone (which
passes one SIGTERM on), and they drain by themselves when the supervisor's end of their stdin
closes (the supervisor was killed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Generator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final

import uvicorn
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from streamhop.middleware.errors import ConfigError
from streamhop.middleware.observe.sampled import MULTIPROC_ENV
from streamhop.sidecar.admission.limits import HeadLimits, limited_httptools_protocol
from streamhop.sidecar.config import Config, parse_hostport
from streamhop.sidecar.listen import ListenError, bind_listener
from streamhop.sidecar.server import WORKER_READY
from streamhop.sidecar.supervise.admin import build_supervisor_admin_app
from streamhop.sidecar.supervise.metrics import WorkerMetrics

logger = logging.getLogger(__name__)

RESTART_BACKOFF_S: Final = 1.0
"""A worker that exits within this many seconds of its start is replaced this much later (a
worker failing at once does not spin)."""
KILL_AFTER_S: Final = 15.0
"""Seconds past ``drain_timeout_s`` after which a draining worker is killed (a worker bounds its
own drain: uvicorn's backstop and the handoffs take at most 10 s more)."""
PROXY_KEY: Final = "[server] listen / --listen"


@dataclass(eq=False)
class Worker:
    """One worker process and what the supervisor knows of it."""

    slot: int
    """Its place in the set, from 1 (a replacement takes the dead worker's)."""
    generation: int
    """The set it belongs to (a SIGHUP starts the next)."""
    process: asyncio.subprocess.Process
    started_at: float
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    exited: asyncio.Event = field(default_factory=asyncio.Event)

    def __repr__(self) -> str:
        state = "exited" if self.exited.is_set() else "ready" if self.ready.is_set() else "starting"
        return f"<Worker {self.slot} pid={self.process.pid} generation={self.generation} {state}>"


class _AdminServer(uvicorn.Server):
    """uvicorn without its own signal handlers (the supervisor's are installed)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class Supervisor:
    """Runs ``config.server.workers`` workers until SIGTERM (see the module docstring).

    Args:
        config: the loaded config (with the command line's overrides).
        worker_argv: the command that starts one worker, without ``--listen``.
        reload: loads the config again (SIGHUP); raises ``ConfigError`` when it is invalid.
    """

    def __init__(
        self, config: Config, worker_argv: Sequence[str], reload: Callable[[], Config]
    ) -> None:
        self.config = config
        self.worker_argv = list(worker_argv)
        self.reload = reload
        self.serving: list[Worker] = []
        """The current set: what ``/readyz`` waits for, what a dead worker is replaced in."""
        self.live: set[Worker] = set()
        """Every worker process not yet exited (serving, starting, draining)."""
        self.generation = 0
        self.draining = False
        self.listen = ""
        self.metrics_dir = ""
        self._metrics: WorkerMetrics | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._all_exited = asyncio.Event()
        self._reloading = False

    async def run(self) -> int:
        """Bind, start the workers, serve the admin listener; return the exit code.

        Raises:
            ConfigError: a listen address is invalid.
            ListenError: the proxy port is taken (by any socket) or the admin port cannot bind.
        """
        server = self.config.server
        host, port = parse_hostport("server.listen", server.listen)
        ahost, aport = parse_hostport("server.admin_listen", server.admin_listen)
        held = _hold_port(host, port)
        try:
            admin_sockets = bind_listener(
                "admin listener", "[server] admin_listen / --admin-listen", ahost, aport
            )
        except ListenError:
            for sock in held:
                sock.close()
            raise
        bound = held[0].getsockname()[1]
        self.listen = f"[{host}]:{bound}" if ":" in host else f"{host}:{bound}"
        self.metrics_dir = tempfile.mkdtemp(prefix="streamhop-metrics-")
        try:
            return await self._serve(admin_sockets)
        finally:
            for sock in held:
                sock.close()
            shutil.rmtree(self.metrics_dir, ignore_errors=True)

    async def _serve(self, admin_sockets: list[socket.socket]) -> int:
        server = self.config.server
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=self.metrics_dir)  # type: ignore[no-untyped-call]
        self._metrics = WorkerMetrics(registry)
        admin = _AdminServer(
            uvicorn.Config(
                build_supervisor_admin_app(self.readiness, registry, server),
                loop="none",
                http=limited_httptools_protocol(
                    HeadLimits(
                        max_header_bytes=server.max_header_bytes,
                        max_headers=server.max_headers,
                        header_timeout_s=server.header_timeout_s,
                    )
                ),
                lifespan="off",
                access_log=False,
                log_level="warning",
            )
        )
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_stop, sig)
        loop.add_signal_handler(signal.SIGHUP, self._on_hup)
        admin_task = loop.create_task(admin.serve(sockets=admin_sockets))
        try:
            first = await self._start_set(server.workers)
            if first is None and not self.draining:
                logger.error("a worker did not start: stopping the others")
                self._drain_all()
                await self._all_exited.wait()
                return 2
            self.serving = first or []
            while not (admin.started or admin_task.done()):
                await asyncio.sleep(0.005)
            if not admin.started:  # uvicorn logged why
                self._drain_all()
                await self._all_exited.wait()
                return 1
            if not self.draining:
                self._announce(admin)
            await self._all_exited.wait()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            admin.should_exit = True
            await admin_task
            for task in list(self._tasks):
                task.cancel()
        logger.info("every worker has exited")
        return 0

    def _announce(self, admin: uvicorn.Server) -> None:
        """The line a single process prints once serving (tests and the demo wait for it)."""
        name = admin.servers[0].sockets[0].getsockname()
        admin_addr = f"[{name[0]}]:{name[1]}" if ":" in name[0] else f"{name[0]}:{name[1]}"
        scheme = "https" if self.config.server.tls_cert_file else "http"
        sys.stdout.write(
            f"streamhop serve listening on {scheme}://{self.listen} (admin http://{admin_addr})"
            f" with {len(self.serving)} workers\n"
        )
        sys.stdout.flush()

    def readiness(self) -> tuple[bool, str, int]:
        """``(ready, status, workers ready)`` for ``/readyz``."""
        count = sum(1 for w in self.serving if w.ready.is_set() and not w.exited.is_set())
        if self.draining:
            return False, "draining", count
        ready = bool(self.serving) and count >= self.config.server.workers
        return ready, "ready" if ready else "starting", count

    # --- workers -----------------------------------------------------------------------------

    async def _spawn(self, slot: int, generation: int) -> Worker:
        process = await asyncio.create_subprocess_exec(
            *self.worker_argv,
            "--listen",
            self.listen,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env={**os.environ, MULTIPROC_ENV: self.metrics_dir},
            start_new_session=True,
        )
        worker = Worker(slot, generation, process, time.monotonic())
        self.live.add(worker)
        self._count()
        logger.info("worker %d started (pid %d)", slot, process.pid)
        self._spawn_task(self._watch(worker))
        if self.draining:  # the signal came while it was being started
            self._retire([worker])
        return worker

    async def _watch(self, worker: Worker) -> None:
        """Read the worker's stdout until it ends, then see to its exit."""
        process = worker.process
        assert process.stdout is not None
        ready = WORKER_READY.encode()
        async for line in process.stdout:
            if line.startswith(ready):
                worker.ready.set()
        code = await process.wait()
        if process.stdin is not None:
            process.stdin.close()
        worker.exited.set()
        self.live.discard(worker)
        mark_process_dead(process.pid, self.metrics_dir)  # type: ignore[no-untyped-call]
        self._count()
        if not self.draining and worker in self.serving:
            self._replace(worker, code)
        elif not worker.ready.is_set():
            logger.warning(
                "worker %d (pid %d) exited before it was ready: %s",
                worker.slot,
                process.pid,
                _code(code),
            )
        else:
            logger.info("worker %d (pid %d) exited: %s", worker.slot, process.pid, _code(code))
        if self.draining and not self.live:
            self._all_exited.set()

    def _replace(self, dead: Worker, code: int) -> None:
        """Start a worker in ``dead``'s place (a serving worker that exited unasked)."""
        logger.warning(
            "worker %d (pid %d) exited: %s; starting another",
            dead.slot,
            dead.process.pid,
            _code(code),
        )
        if self._metrics is not None:
            self._metrics.restarts.inc()
        lived_s = time.monotonic() - dead.started_at
        delay = RESTART_BACKOFF_S if lived_s < RESTART_BACKOFF_S else 0.0

        async def replace_later() -> None:
            await asyncio.sleep(delay)
            if self.draining or dead not in self.serving:
                return  # draining, or a reload replaced the whole set meanwhile
            worker = await self._spawn(dead.slot, dead.generation)
            self.serving[self.serving.index(dead)] = worker

        self._spawn_task(replace_later())

    async def _start_set(self, count: int) -> list[Worker] | None:
        """Start ``count`` workers of a new generation and wait until all are ready; ``None``
        (the others stopped) when one exits first."""
        self.generation += 1
        generation = self.generation
        workers = [await self._spawn(slot, generation) for slot in range(1, count + 1)]
        for worker in workers:
            ready = asyncio.ensure_future(worker.ready.wait())
            exited = asyncio.ensure_future(worker.exited.wait())
            await asyncio.wait((ready, exited), return_when=asyncio.FIRST_COMPLETED)
            ready.cancel()
            exited.cancel()
            if worker.exited.is_set() or self.draining:
                self._retire([w for w in workers if w is not worker])
                return None
        return workers

    def _retire(self, workers: Sequence[Worker]) -> None:
        """SIGTERM ``workers`` (they drain); kill those still running past the drain."""
        for worker in workers:
            if not worker.exited.is_set():
                with contextlib.suppress(ProcessLookupError):
                    worker.process.send_signal(signal.SIGTERM)
        deadline_s = self.config.server.drain_timeout_s + KILL_AFTER_S
        asyncio.get_running_loop().call_later(deadline_s, _kill_left, list(workers))

    def _on_stop(self, sig: signal.Signals) -> None:
        if self.draining:
            logger.info("%s again: the workers stop their streams now", sig.name)
            for worker in self.live:
                with contextlib.suppress(ProcessLookupError):
                    worker.process.send_signal(signal.SIGTERM)
            return
        logger.info(
            "%s: draining %d worker(s), open streams may finish for %g s",
            sig.name,
            len(self.live),
            self.config.server.drain_timeout_s,
        )
        self._drain_all()

    def _drain_all(self) -> None:
        """SIGTERM every worker; no more replacements; the end once all have exited."""
        self.draining = True
        self._retire(list(self.live))
        if not self.live:
            self._all_exited.set()

    def _on_hup(self) -> None:
        if self._reloading or self.draining:
            logger.warning("SIGHUP ignored: a reload or the drain is under way")
            return
        self._reloading = True
        self._spawn_task(self._reload())

    async def _reload(self) -> None:
        """SIGHUP: a new set of workers on the config as it is now, then the old set drains."""
        try:
            await self._reload_set()
        finally:
            self._reloading = False

    async def _reload_set(self) -> None:
        try:
            config = self.reload()
        except ConfigError as exc:
            logger.error("SIGHUP: config not reloaded, the workers keep the old one: %s", exc)
            return
        old = self.config.server
        if (config.server.listen, config.server.admin_listen) != (old.listen, old.admin_listen):
            logger.warning("SIGHUP: listen and admin_listen are not reloaded; restart for them")
        logger.info("SIGHUP: starting %d worker(s) on the reloaded config", config.server.workers)
        new = await self._start_set(config.server.workers)
        if self.draining:
            return  # the drain stops every worker, the new ones too
        if new is None:
            logger.error("SIGHUP: a new worker did not start; the old workers keep serving")
            return
        previous, self.serving = self.serving, new
        self.config = replace(
            config, server=replace(config.server, listen=old.listen, admin_listen=old.admin_listen)
        )
        logger.info("SIGHUP: %d new worker(s) serve; %d old draining", len(new), len(previous))
        self._retire(previous)

    def _count(self) -> None:
        if self._metrics is not None:
            self._metrics.workers.set(len(self.live))

    def _spawn_task(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _hold_port(host: str, port: int) -> list[socket.socket]:
    """Bind the proxy address with ``SO_REUSEPORT``, not listening, to hold it for the workers.

    A plain bind first: ``SO_REUSEPORT`` alone would share the port with any other process of
    the same user that binds it so (another streamhop supervisor), where a single process gets
    ``address already in use``.

    Raises:
        ListenError: the address is taken or cannot be bound.
    """
    probe = bind_listener("proxy listener", PROXY_KEY, host, port, listen=False)
    port = probe[0].getsockname()[1]
    for sock in probe:
        sock.close()
    return bind_listener("proxy listener", PROXY_KEY, host, port, reuse_port=True, listen=False)


def _kill_left(workers: list[Worker]) -> None:
    for worker in workers:
        if not worker.exited.is_set():
            logger.warning(
                "worker %d (pid %d) still running: killed", worker.slot, worker.process.pid
            )
            with contextlib.suppress(ProcessLookupError):
                worker.process.kill()


def _code(code: int) -> str:
    """``exit code 1`` or ``signal SIGKILL``."""
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"signal {signal.Signals(-code).name}"
    return f"exit code {code}"
