"""The proxy endpoint: admits a request, runs its :class:`~.exchange.Exchange`, and watches the
client.

Admission answers at once, without contacting the provider: ``404`` for a path no route
matches, ``503`` with ``Retry-After`` while draining or at ``max_streams``, ``400`` for an invalid
``X-Streamhop-*`` header, ``413`` for a body over ``max_request_bytes``.

Then the exchange runs in its own task while this one waits for ASGI ``http.disconnect``: when the
client leaves first, the exchange is cancelled at once, which closes the upstream connection, and
the time from detection to close is recorded.

With ``[resume]`` on, a request carrying ``Last-Event-ID`` is a resume: it is answered from the
resume log (:func:`~.resume.replay.replay`) without contacting the provider. On a route with
``on_disconnect = "detach"``, a client leaving a stream that has a log does not cancel it: the
generation runs on into the log for at most ``[resume] window_s`` seconds (its deadline still
applies), then is cancelled as usual.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from typing import Protocol

from streamhop.middleware.controls import ControlHeaderError
from streamhop.middleware.observe.metrics import Metrics
from streamhop.middleware.rechunk.formats import format_for_path
from streamhop.sidecar.admission.guard import (
    PathError,
    RequestPath,
    check_browser,
    cors_headers,
    host_allowed,
    normalise_path,
    preflight_headers,
)
from streamhop.sidecar.admission.headers import (
    HeaderValueError,
    merge_route_headers,
    upstream_request_headers,
)
from streamhop.sidecar.admission.routing import RouteTable, raw_path
from streamhop.sidecar.config import Config, RouteConfig
from streamhop.sidecar.http.asgi import (
    Receive,
    Scope,
    Send,
    json_error,
    read_body,
    wait_disconnect,
    with_headers,
)
from streamhop.sidecar.http.exchange import Exchange
from streamhop.sidecar.observe.record import StreamRecord, inspect_request, observe_end
from streamhop.sidecar.observe.tracing import Tracing
from streamhop.sidecar.resume import ResumeStore
from streamhop.sidecar.resume.binding import ResumeBinding
from streamhop.sidecar.resume.replay import Replay, replay
from streamhop.sidecar.upstream.pool import UpstreamPool
from streamhop.sidecar.websocket.bridge import WebSocketBridge

logger = logging.getLogger(__name__)

_TRACE_HEADERS = frozenset(("traceparent", "tracestate"))


class Stoppable(Protocol):
    """An open stream that shutdown can end: an :class:`Exchange` or a WebSocket generation."""

    def stop(self, reason: str) -> None: ...


class SidecarState:
    """Process-wide state the endpoints share: readiness, draining, open streams."""

    def __init__(self) -> None:
        self.ready = False
        self.draining = False
        self.exchanges: set[Stoppable] = set()
        self.receiving = 0
        """Requests whose body is being read (they count toward ``max_streams`` too)."""

    @property
    def active(self) -> int:
        """Requests in flight, those still sending their body included."""
        return len(self.exchanges) + self.receiving

    def stop_all(self, reason: str) -> int:
        """End every open stream with a terminal error (``shutdown``); returns how many."""
        exchanges = list(self.exchanges)
        for exchange in exchanges:
            exchange.stop(reason)
        return len(exchanges)


class Proxy:
    """ASGI app proxying HTTP requests; WebSocket scopes go to the bridge
    (:class:`~.websocket.WebSocketBridge`)."""

    def __init__(
        self,
        config: Config,
        pool: UpstreamPool,
        state: SidecarState,
        metrics: Metrics,
        on_finish: Callable[[StreamRecord], None] | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self.config = config
        self.pool = pool
        self.state = state
        self.metrics = metrics
        self.tracing = tracing
        self.table = RouteTable(config.routes)
        self.on_finish = on_finish
        self.resume: ResumeStore | None = None
        """The resume store, set by the app's lifespan when ``[resume]`` is on."""
        self.binding = ResumeBinding.from_config(config.resume)
        self.websocket = WebSocketBridge(
            config, pool, state, metrics, self.table, on_finish, tracing
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await self.websocket(scope, receive, send)
            return
        if scope["type"] != "http":
            return
        admitted = await self._admit(scope, send)
        if admitted is None:
            return
        route, path, fmt_hint, send = admitted
        state = self.state
        if state.draining:
            message = "streamhop is shutting down"
            await json_error(send, 503, fmt_hint, "draining", message, retry_after=True)
            return
        limit = self.config.server.max_streams
        if state.active >= limit:
            message = f"streamhop is at max_streams={limit}"
            await json_error(send, 503, fmt_hint, "too_many_streams", message, retry_after=True)
            return
        try:
            forward, controls = upstream_request_headers(scope["headers"])
        except ControlHeaderError as exc:
            await json_error(send, 400, fmt_hint, "bad_control_header", str(exc))
            return
        except HeaderValueError as exc:
            await json_error(send, 400, fmt_hint, "bad_header", str(exc))
            return
        # The body counts toward max_streams from its first byte.
        state.receiving += 1
        try:
            body = await read_body(receive, self.config.server.max_request_bytes)
        finally:
            state.receiving -= 1
        if body is None:
            return  # the client left while sending the request
        if isinstance(body, int):
            message = f"request body is larger than max_request_bytes={body}"
            await json_error(send, 413, fmt_hint, "request_too_large", message)
            return
        if self.resume is not None:
            for name, value in scope["headers"]:
                if name == b"last-event-id":
                    last_event_id = value.decode("utf-8", "replace")
                    await self._resume(receive, send, route, last_event_id, fmt_hint, scope)
                    return
        record = StreamRecord(
            stream_id=secrets.token_hex(8),
            route=route.prefix,
            method=scope["method"],
            path=path.text,
            received_at=time.monotonic(),
        )
        inspect_request(record, body)
        observed = self.metrics.stream(route.prefix, record.model)
        timeout_s = controls.deadline_s(route.timeout_s)
        headers = merge_route_headers(forward, route.headers)
        traced = None
        if self.tracing is not None:
            traced = self.tracing.start(record, route, scope["headers"])
            # The provider continues our upstream.request span, not the client's.
            headers = [(n, v) for n, v in headers if n.lower() not in _TRACE_HEADERS]
            headers.extend(traced.upstream_headers(record).items())
        exchange = Exchange(
            self.config,
            self.pool,
            route,
            scope,
            send,
            self.table.upstream_url(route, path, scope.get("query_string", b"")),
            headers,
            controls,
            body,
            record,
            observed,
            None if timeout_s is None else record.received_at + timeout_s,
            self.resume,
            None
            if self.resume is None
            else self.binding.log_key(route.prefix, record.stream_id, scope["headers"]),
        )
        state.exchanges.add(exchange)
        observed.active.inc()
        loop = asyncio.get_running_loop()
        work = loop.create_task(exchange.run())
        watcher = loop.create_task(wait_disconnect(receive))
        try:
            await asyncio.wait((work, watcher), return_when=asyncio.FIRST_COMPLETED)
            if not work.done() and route.on_disconnect == "detach" and exchange.log is not None:
                # The client left a resumable stream: let the generation run on into the log.
                exchange.detach()
                await asyncio.wait((work,), timeout=self.config.resume.window_s)
            if not work.done():
                # The client left first: cancel now; the exchange closes the upstream.
                if record.cancel_reason is None:
                    record.cancel_reason = "client_disconnect"
                    record.cancel_detected_at = time.monotonic()
                work.cancel()
                await asyncio.wait((work,))
            elif not work.cancelled() and (error := work.exception()) is not None:
                raise error
        except asyncio.CancelledError:
            # uvicorn cancelled us (shutdown past its grace period): close upstream.
            if record.cancel_reason is None:
                record.cancel_reason = "shutdown"
                record.cancel_detected_at = time.monotonic()
            work.cancel()
            await asyncio.wait((work,))
            raise
        finally:
            watcher.cancel()
            state.exchanges.discard(exchange)
            observed.active.dec()
            record.finished_at = time.monotonic()
            observe_end(observed, record)
            if traced is not None:
                traced.finish(record)
            if self.on_finish is not None:
                self.on_finish(record)

    async def _admit(
        self, scope: Scope, send: Send
    ) -> tuple[RouteConfig, RequestPath, str | None, Send] | None:
        """Apply the checks of :mod:`.guard`; answer and return ``None`` when one refuses (or
        a preflight was answered), else the route, the path, the error format and the ``send``
        to use (adding CORS headers for an allowed origin)."""
        headers = scope["headers"]
        server = self.config.server
        if not host_allowed(server, headers):
            await json_error(
                send,
                421,
                format_for_path(scope["path"]),
                "misdirected_request",
                "this Host is not served here (see [server] allowed_hosts)",
            )
            return None
        try:
            path = normalise_path(raw_path(scope))
        except PathError as exc:
            await json_error(send, 400, format_for_path(scope["path"]), "bad_path", str(exc))
            return None
        fmt_hint = format_for_path(path.text)
        route = self.table.match(path)
        if route is None:
            await json_error(send, 404, fmt_hint, "no_route", f"no route for path {path.text!r}")
            return None
        if route.format != "auto":
            fmt_hint = route.format
        check = check_browser(server, route, scope["method"], headers)
        if check.refused is not None:
            await json_error(send, 403, fmt_hint, "origin_not_allowed", check.refused)
            return None
        if check.preflight:
            await send(
                {"type": "http.response.start", "status": 204, "headers": preflight_headers(check)}
            )
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return None
        if check.origin is not None:
            send = with_headers(send, cors_headers(check))
        return route, path, fmt_hint, send

    async def _resume(
        self,
        receive: Receive,
        send: Send,
        route: RouteConfig,
        last_event_id: str,
        fmt: str | None,
        scope: Scope,
    ) -> None:
        """Answer a resume request from the log, until it ends or the client leaves."""
        assert self.resume is not None
        loop = asyncio.get_running_loop()
        state = Replay()
        stall_s = self.config.backpressure.stall_timeout_s
        binding, headers = self.binding, scope["headers"]

        def log_key(stream_id: str) -> str:
            return binding.log_key(route.prefix, stream_id, headers)

        state.task = work = loop.create_task(
            replay(state, self.resume, send, last_event_id, log_key, fmt, stall_s)
        )
        self.state.exchanges.add(state)
        watcher = loop.create_task(wait_disconnect(receive))
        try:
            await asyncio.wait((work, watcher), return_when=asyncio.FIRST_COMPLETED)
            if not work.done():
                work.cancel()
                await asyncio.wait((work,))
            elif not work.cancelled() and (error := work.exception()) is not None:
                raise error
            elif work.cancelled() and not watcher.done():
                await state.end(send, fmt)  # stopped by shutdown
        except asyncio.CancelledError:
            work.cancel()
            await asyncio.wait((work,))
            raise
        finally:
            watcher.cancel()
            self.state.exchanges.discard(state)
