"""Runs ``streamhop serve``: the proxy and admin listeners in one uvloop event loop.

Shutdown (SIGTERM or SIGINT): ``/readyz`` turns 503 at once and new requests get 503; uvicorn
stops accepting and waits up to ``drain_timeout_s`` for open streams, then cancels the rest
(their upstreams are closed with reason ``shutdown``); the process exits 0.

As one of ``[server] workers > 1`` (``worker=True``, started by
:mod:`streamhop.sidecar.supervise`): the proxy port is bound with ``SO_REUSEPORT`` beside the
other workers', there is no admin listener (the supervisor's serves the metrics all workers
write), the readiness line goes to the supervisor on stdout, and the end of stdin (the
supervisor gone) drains like SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
from collections.abc import Callable, Generator
from typing import Any, Final

import uvicorn
from prometheus_client import CollectorRegistry

from streamhop.middleware.engine_build import engine_build
from streamhop.middleware.observe.metrics import Metrics
from streamhop.middleware.observe.sampled import sample_gauges
from streamhop.middleware.observe.stream_end import log_end
from streamhop.sidecar.admission.limits import HeadLimits, limited_httptools_protocol
from streamhop.sidecar.app import build_admin_app, build_proxy_app
from streamhop.sidecar.config import Config, parse_hostport
from streamhop.sidecar.http.tls import CertificateReloader
from streamhop.sidecar.listen import ListenError, bind_listener
from streamhop.sidecar.observe.record import StreamRecord
from streamhop.sidecar.observe.tracing import Tracing
from streamhop.sidecar.upstream.registry import SidecarState

logger = logging.getLogger("streamhop")

WS_PING_INTERVAL_S = 15.0
WS_FRAME_SLACK_BYTES = 64 * 1024
"""How far over ``max_request_bytes`` a WebSocket frame is still read (to answer it with an
``error`` message rather than a bare close)."""


TICK_S: Final = 1.0
"""How often each server's housekeeping runs (uvicorn: every 0.1 s)."""


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signal handling to :func:`serve` (two servers, one loop)
    and wakes once a second instead of ten times.

    uvicorn's main loop sleeps 0.1 s between checks of ``should_exit``, and does its real work
    (the ``Date`` header, max-requests) once a second; two servers woke the idle process 20
    times a second, each wake costing more CPU than a busy one. Here the loop ticks every
    :data:`TICK_S` and setting ``should_exit`` wakes it at once, so shutdown is as prompt.
    """

    _exit_requested: asyncio.Event | None = None
    _should_exit = False

    @property
    def should_exit(self) -> bool:
        return self._should_exit

    @should_exit.setter
    def should_exit(self, value: bool) -> None:
        self._should_exit = value
        if value and self._exit_requested is not None:
            self._exit_requested.set()

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    async def main_loop(self) -> None:
        self._exit_requested = requested = asyncio.Event()
        ticks_per_tick = round(TICK_S / 0.1)  # on_tick counts uvicorn's 0.1 s ticks
        counter = 0
        while not await self.on_tick(counter):
            counter = (counter + ticks_per_tick) % 864000
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(TICK_S):
                    await requested.wait()


def log_stream(record: StreamRecord) -> None:
    """One structured JSON log line per finished request on ``streamhop.streams`` (times in
    milliseconds; the same line as the middleware's, :func:`~streamhop.middleware.observe.
    stream_end.log_end`)."""
    log_end(record)


async def serve(
    config: Config, registry: CollectorRegistry | None = None, *, worker: bool = False
) -> int:
    """Serve until SIGTERM/SIGINT, then drain. Returns the process exit code (0).

    ``worker``: run as one worker of a supervisor (see the module docstring).

    Both listeners are bound first, before anything is logged or started, so a busy port is one
    :class:`~streamhop.sidecar.listen.ListenError` naming the listener and its key; uvicorn gets
    the bound sockets (it would log and ``sys.exit(3)`` on a bind error of its own).

    Raises:
        ConfigError: a listen address is invalid.
        ListenError: a listener cannot bind its address.
    """
    host, port = parse_hostport("server.listen", config.server.listen)
    ahost, aport = parse_hostport("server.admin_listen", config.server.admin_listen)
    proxy_sockets = bind_listener(
        "proxy listener", "[server] listen / --listen", host, port, reuse_port=worker
    )
    try:
        admin_sockets = (
            []
            if worker
            else bind_listener(
                "admin listener", "[server] admin_listen / --admin-listen", ahost, aport
            )
        )
    except ListenError:
        for sock in proxy_sockets:
            sock.close()
        raise
    registry = registry or CollectorRegistry()
    logger.info("stream engine: %s", engine_build())
    for route in config.routes:
        if not route.tls_verify:
            logger.warning(
                "route %s: tls_verify = false: the certificate of %s is NOT verified; anyone "
                "on the path can impersonate the provider and read the key sent to it",
                route.prefix,
                route.upstream_display,
            )
    metrics = Metrics(
        registry,
        config.metrics.models,
        burst_gap_s=config.metrics.burst_gap_ms / 1000,
        burst_events=config.metrics.burst_events,
    )
    state = SidecarState()
    # uvicorn's httptools protocol plus bounds on the request head (431/408), on both
    # listeners: the admin one is reachable too (the chart binds it on 0.0.0.0).
    http_protocol = limited_httptools_protocol(
        HeadLimits(
            max_header_bytes=config.server.max_header_bytes,
            max_headers=config.server.max_headers,
            header_timeout_s=config.server.header_timeout_s,
        )
    )
    proxy = _Server(
        uvicorn.Config(
            build_proxy_app(
                config, state, metrics, log_stream, Tracing.from_config(config.tracing)
            ),
            host=host,
            port=port,
            loop="none",
            http=http_protocol,
            lifespan="on",
            access_log=False,
            log_level="warning",
            # streamhop stops open streams itself at drain_timeout_s (with an error event each);
            # uvicorn's own limit is a backstop a little later. It passes this to
            # asyncio.wait_for, which takes float seconds.
            timeout_graceful_shutdown=config.server.drain_timeout_s + 5,  # type: ignore[arg-type]
            timeout_keep_alive=75,
            # The WebSocket bridge answers a frame over max_request_bytes with an error message
            # and close 1009; a frame far over it is refused by the WebSocket layer itself
            # (1009 too) before it is buffered whole.
            ws_max_size=config.server.max_request_bytes + WS_FRAME_SLACK_BYTES,
            # The WebSocket keep-alive is a ping frame (ASGI cannot send one; uvicorn does).
            ws_ping_interval=min(
                (r.keepalive_interval_s for r in config.routes), default=WS_PING_INTERVAL_S
            ),
            # The provider's Date and Server headers pass through; uvicorn must not add its own.
            server_header=False,
            date_header=False,
            # streamhop is the proxy: it does not rewrite the client address from
            # X-Forwarded-For (and saves the per-request middleware).
            proxy_headers=False,
            # [server] tls_cert_file / tls_key_file: HTTPS on the proxy port (reloaded below).
            ssl_certfile=config.server.tls_cert_file,
            ssl_keyfile=config.server.tls_key_file,
        )
    )
    admin = _Server(
        uvicorn.Config(
            build_admin_app(state, registry, config.server),
            host=ahost,
            port=aport,
            loop="none",
            http=http_protocol,
            lifespan="off",
            access_log=False,
            log_level="warning",
        )
    )
    loop = asyncio.get_running_loop()

    def stop_streams() -> None:
        count = state.stop_all("shutdown")
        if count:
            logger.warning("drain timeout: stopped %d open stream(s)", count)

    background: set[asyncio.Task[None]] = set()

    def on_signal(sig: signal.Signals) -> None:
        if state.draining:
            # A second signal: stop every stream now.
            stop_streams()
            return
        drain = config.server.drain_timeout_s
        logger.info("%s: draining, open streams may finish for %g s", sig.name, drain)
        state.draining = True
        handoffs = [loop.create_task(handoff) for hook in state.on_drain for handoff in hook()]
        loop.call_later(drain, stop_streams)
        if not handoffs:
            proxy.should_exit = True
            return
        logger.info("telling %d reconnecting client(s) to resume on another replica", len(handoffs))
        # uvicorn closes every WebSocket (1012) the moment it starts shutting down: let the
        # reconnect messages go out first (bounded, should a client not read).
        exiting = loop.create_task(_exit_after(proxy, handoffs))
        background.add(exiting)
        exiting.add_done_callback(background.discard)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    if worker:

        def supervisor_gone() -> None:
            # Already draining: the drain goes on (a second signal would stop every stream).
            if not state.draining:
                on_signal(signal.SIGTERM)

        _drain_when_supervisor_goes(loop, supervisor_gone)

    # A worker builds the admin server but never serves it (its supervisor's serves).
    admin_task = None if worker else loop.create_task(admin.serve(sockets=admin_sockets))
    announce = loop.create_task(_announce(proxy, None if worker else admin, config))
    try:
        await proxy.serve(sockets=proxy_sockets)
    finally:
        announce.cancel()
        if admin_task is not None:
            admin.should_exit = True
            await admin_task
    if not proxy.started:
        return 1
    return 0


HANDOFF_SEND_S: Final = 5.0
"""Longest the drain waits for the resume handoffs' messages before uvicorn's shutdown."""


async def _exit_after(server: uvicorn.Server, handoffs: list[asyncio.Task[Any]]) -> None:
    """Shut ``server`` down once ``handoffs`` are done (at most :data:`HANDOFF_SEND_S`)."""
    try:
        await asyncio.wait(handoffs, timeout=HANDOFF_SEND_S)
    finally:
        server.should_exit = True


def tune_gc() -> None:
    """Once serving, move what start-up built (modules, config, app: some 50,000 objects) out of
    the cyclic collector's view with ``gc.freeze`` (made for long-running servers): the older
    generations' collections no longer walk them while streams run.

    Measured with ``bench/peers.py``-style load: 8-10 % less CPU at 50 streams and for
    non-streaming requests. Raising the young-generation threshold as well (50,000) helped
    streams a little more but cost non-streaming requests 12 %, so CPython's default stays.
    """
    gc.collect()
    gc.freeze()


async def _announce(proxy: uvicorn.Server, admin: uvicorn.Server | None, config: Config) -> None:
    """Once both servers serve: freeze start-up objects (:func:`tune_gc`), then print the line
    tests and the demo wait for, with the ports really bound (port 0 works); with TLS on the
    proxy listener, reload its certificate when the files change (until cancelled).

    A worker (no ``admin``) prints :data:`WORKER_READY` for its supervisor instead, and writes
    its sampled gauges to the metric files every :data:`TICK_S`."""
    while not (proxy.started and (admin is None or admin.started)):
        await asyncio.sleep(0.005)
    tune_gc()
    addr = _url_host_port(proxy.servers[0].sockets[0].getsockname())
    scheme = "http" if proxy.config.ssl is None else "https"
    if admin is None:
        sys.stdout.write(f"{WORKER_READY} {scheme}://{addr}\n")
        sys.stdout.flush()
        sampling = asyncio.get_running_loop().create_task(_sample_gauges_forever())
        _background.add(sampling)
        sampling.add_done_callback(_background.discard)
    else:
        admin_addr = _url_host_port(admin.servers[0].sockets[0].getsockname())
        sys.stdout.write(
            f"streamhop serve listening on {scheme}://{addr} (admin http://{admin_addr})\n"
        )
        sys.stdout.flush()
    server = config.server
    context = proxy.config.ssl
    if context is not None and server.tls_cert_file and server.tls_key_file:
        logger.info(
            "TLS on the proxy listener from %s (reloaded when it changes)", server.tls_cert_file
        )
        try:
            await CertificateReloader(context, server.tls_cert_file, server.tls_key_file).run()
        except Exception:
            logger.exception("the TLS certificate reloader stopped")
            raise


WORKER_READY: Final = "streamhop worker ready on"
"""What a worker prints on stdout once it serves (the supervisor's readiness signal)."""


_background: set[asyncio.Task[None]] = set()
"""Tasks nothing awaits, kept from the garbage collector until they end."""


async def _sample_gauges_forever() -> None:
    """The worker's gauges read from functions, written every :data:`TICK_S` (until the loop
    ends: the task dies with it)."""
    while True:
        sample_gauges()
        await asyncio.sleep(TICK_S)


def _drain_when_supervisor_goes(loop: asyncio.AbstractEventLoop, drain: Callable[[], None]) -> None:
    """Call ``drain`` once stdin ends: the supervisor holds the pipe's other end, so it ended
    (even by SIGKILL) and nobody would signal this worker any more."""

    def readable() -> None:
        try:
            data = os.read(0, 512)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(0)
            drain()

    os.set_blocking(0, False)
    loop.add_reader(0, readable)


def _url_host_port(sockname: tuple[Any, ...]) -> str:
    """``HOST:PORT`` of a bound socket as a URL writes it (an IPv6 address in brackets)."""
    host, port = sockname[0], sockname[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
