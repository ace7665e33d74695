"""The proxy endpoint: admits a request, runs its stream
(:class:`~streamhop.sidecar.upstream.driver.StreamDriver` with an
:class:`~.exchange.HttpTransport`), and watches the client.

Admission answers at once, without contacting the provider: ``404`` for a path no route
matches, ``503`` with ``Retry-After`` while draining or at ``max_streams``, ``400`` for an invalid
``X-Streamhop-*`` header, ``413`` for a body over ``max_request_bytes``.

Then the driver runs in its own task while this one waits for ASGI ``http.disconnect``: when the
client leaves first, the driver is cancelled at once, which closes the upstream connection, and
the time from detection to close is recorded.

With ``[resume]`` on, a request carrying ``Last-Event-ID`` is a resume: it is answered from the
resume log (:func:`~.resume.replay.replay`) without contacting the provider. On a route with
``on_disconnect = "detach"``, a client leaving a stream that has a log does not cancel it: the
generation runs on into the log for at most ``[resume] window_s`` seconds (its deadline still
applies), then is cancelled as usual.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import random
import time
from collections.abc import Callable, Coroutine
from typing import Any

from streamhop.middleware.controls import ControlHeaderError
from streamhop.middleware.observe.metrics import Metrics
from streamhop.middleware.rechunk.formats import format_for_path
from streamhop.sidecar.admission.guard import (
    PathError,
    RequestPath,
    check_browser,
    cors_headers,
    host_allowed,
    host_error,
    normalise_path,
    preflight_headers,
)
from streamhop.sidecar.admission.headers import HeaderValueError, upstream_request_headers
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
from streamhop.sidecar.http.exchange import HttpTransport
from streamhop.sidecar.observe.record import StreamRecord, request_facts
from streamhop.sidecar.observe.tracing import Tracing
from streamhop.sidecar.resume import ResumeError, ResumeStore
from streamhop.sidecar.resume.binding import ResumeBinding
from streamhop.sidecar.resume.replay import Replay, replay
from streamhop.sidecar.upstream.driver import StreamDriver, StreamRequest
from streamhop.sidecar.upstream.opening import SidecarState, open_stream
from streamhop.sidecar.upstream.pool import UpstreamPool
from streamhop.sidecar.websocket.bridge import WebSocketBridge

logger = logging.getLogger(__name__)

__all__ = ["Proxy", "SidecarState"]

STOP_WAIT_S = 5.0
"""Longest a stop request waits for the stopped stream's upstream to be closed."""
STOP_POLL_S = 0.05
"""How often a stop sent to other replicas checks whether the stream's log ended."""


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
        state.on_drain.append(self.handoff_all)
        self.websocket = WebSocketBridge(
            config, pool, state, metrics, self.table, self.binding, on_finish, tracing
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
        if scope["method"] == "DELETE":
            stream_id = self.table.control_stream_id(route, path)
            if stream_id is not None:
                await self._stop(scope, send, route, stream_id, fmt_hint)
                return
        state = self.state
        if state.draining and not (self.resume is not None and _has_last_event_id(scope)):
            # A resume is still served while draining: it starts no generation, and a browser
            # whose reconnect rides an old keep-alive connection here must not get a 503
            # (EventSource gives up for good on an error status).
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
        server = self.config.server
        try:
            body = await read_body(receive, server.max_request_bytes, server.body_timeout_s)
        except TimeoutError:
            message = f"the request body stalled for body_timeout_s={server.body_timeout_s:g} s"
            await json_error(
                send,
                408,
                fmt_hint,
                "request_timeout",
                message,
                extra_headers=[(b"connection", b"close")],
            )
            return
        finally:
            state.receiving -= 1
        if body is None:
            return  # the client left while sending the request
        if isinstance(body, int):
            message = f"request body is larger than max_request_bytes={body}"
            await json_error(send, 413, fmt_hint, "request_too_large", message)
            return
        on_disconnect: str = route.on_disconnect
        if controls.on_disconnect is not None:
            problem = None
            if not route.client_on_disconnect:
                problem = "this route does not let a request choose (client_on_disconnect)"
            elif controls.on_disconnect == "detach" and self.resume is None:
                problem = "detach keeps generating into the resume log: [resume] is off"
            if problem is not None:
                message = f"X-Streamhop-On-Disconnect refused: {problem}"
                await json_error(send, 400, fmt_hint, "bad_control_header", message)
                return
            on_disconnect = controls.on_disconnect
        if self.resume is not None:
            for name, value in scope["headers"]:
                if name == b"last-event-id":
                    last_event_id = value.decode("utf-8", "replace")
                    await self._resume(receive, send, route, last_event_id, fmt_hint, scope)
                    return
        model, streaming = request_facts(body)
        opened = open_stream(
            route=route,
            method=scope["method"],
            path=path.text,
            model=model,
            streaming=streaming,
            client_headers=scope["headers"],
            forward=forward,
            controls=controls,
            metrics=self.metrics,
            tracing=self.tracing,
            registry=state,
            on_finish=self.on_finish,
        )
        record = opened.record
        transport = HttpTransport(
            scope,
            send,
            record,
            fmt_hint,
            self.resume,
            None
            if self.resume is None
            else self.binding.log_key(route.prefix, record.stream_id, scope["headers"]),
        )
        driver = StreamDriver(
            StreamRequest(
                config=self.config,
                pool=self.pool,
                route=route,
                method=scope["method"],
                url=self.table.upstream_url(route, path, scope.get("query_string", b"")),
                headers=opened.headers,
                body=body,
                controls=controls,
                record=record,
                observed=opened.observed,
                deadline=opened.deadline,
                format_hint=fmt_hint,
            ),
            transport,
        )
        opened.register(driver)
        loop = asyncio.get_running_loop()
        work = loop.create_task(driver.run())
        # DELETE .../streamhop/v1/streams/<id> finds it by route and id, then checks the
        # caller's credentials (computed only then, not per request).
        stop_key = (route.prefix, record.stream_id)
        state.running[stop_key] = work, driver, scope["headers"]
        watcher = loop.create_task(wait_disconnect(receive))
        try:
            await asyncio.wait((work, watcher), return_when=asyncio.FIRST_COMPLETED)
            detach = on_disconnect == "detach" or transport.handed_off
            if not work.done() and detach and transport.log is not None:
                # The client left a resumable stream: let the generation run on into the log.
                transport.detach()
                await asyncio.wait((work,), timeout=self.config.resume.window_s)
            if not work.done():
                # The client left first: cancel now; the driver closes the upstream.
                record.mark_cancel("client_disconnect")
                work.cancel()
                await asyncio.wait((work,))
            elif not work.cancelled() and (error := work.exception()) is not None:
                raise error
        except asyncio.CancelledError:
            # uvicorn cancelled us (shutdown past its grace period): close upstream.
            record.mark_cancel("shutdown")
            work.cancel()
            await asyncio.wait((work,))
            raise
        finally:
            watcher.cancel()
            state.running.pop(stop_key, None)
            opened.close()

    def attach_resume(self, store: ResumeStore) -> None:
        """Use ``store`` for resumes, stops and handoffs, over HTTP and WebSocket alike (called
        at startup, inside the server's loop)."""
        self.resume = self.websocket.resume = store
        store.listen_stops(self.stop_by_key)

    def handoff_all(self) -> list[Coroutine[Any, Any, Any]]:
        """Draining with a shared resume store: tell every reconnecting SSE client to come back
        through another replica (see :meth:`~.exchange.HttpTransport.handoff`), each after a
        random delay in ``[0, handoff_jitter_ms]`` so they do not all arrive at once. Their
        generations go on into the log. Returns the handoffs, for the server to run."""
        if self.resume is None or self.config.resume.store != "redis":
            return []
        jitter = self.config.resume.handoff_jitter_ms
        return [
            transport.handoff(int(random.uniform(0, jitter)))
            for _, driver, _ in list(self.state.running.values())
            if isinstance(transport := getattr(driver, "transport", None), HttpTransport)
            and transport.reconnects
        ]

    async def _stop(
        self, scope: Scope, send: Send, route: RouteConfig, stream_id: str, fmt: str | None
    ) -> None:
        """``DELETE <route prefix>/streamhop/v1/streams/<stream-id>``: stop a running or
        detached generation of this caller on this route (the resume binding: another route or
        other credentials get the same 404 as an unknown stream), wait for its upstream to be
        closed (at most :data:`STOP_WAIT_S`), answer 204."""
        running = self.state.running.get((route.prefix, stream_id))
        binding = self.binding
        key = binding.log_key(route.prefix, stream_id, scope["headers"])
        status = 404
        if running is not None and hmac.compare_digest(
            key, binding.log_key(route.prefix, stream_id, running[2])
        ):
            work, driver, _ = running
            driver.stop("stop")
            await asyncio.wait((work,), timeout=STOP_WAIT_S)
            status = 204
        elif self.resume is not None:
            # Not here: running on another replica sharing the store? Ask them all, then wait
            # for its log to end.
            status = await self._stop_elsewhere(self.resume, key)
        if status == 404:
            message = f"no running stream {stream_id!r} for this caller on this route"
            await json_error(send, 404, fmt, "stream_not_found", message)
            return
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _stop_elsewhere(self, store: ResumeStore, key: str) -> int:
        """204 once the log under ``key`` ended after a published stop, 202 if it did not end
        within :data:`STOP_WAIT_S`, 404 when no running log has that key."""
        try:
            if await store.log_state(key) != "running":
                return 404
            await store.publish_stop(key)
            deadline = time.monotonic() + STOP_WAIT_S
            while time.monotonic() < deadline:
                if await store.log_state(key) != "running":
                    return 204
                await asyncio.sleep(STOP_POLL_S)
        except ResumeError as exc:
            logger.warning("stop: resume store failed: %s", exc)
        return 202

    def stop_by_key(self, key: str) -> None:
        """Another replica published a stop: stop the local stream whose caller-bound key is
        ``key``, if one runs here."""
        for (prefix, stream_id), (_, driver, headers) in list(self.state.running.items()):
            if hmac.compare_digest(key, self.binding.log_key(prefix, stream_id, headers)):
                driver.stop("stop")

    async def _admit(
        self, scope: Scope, send: Send
    ) -> tuple[RouteConfig, RequestPath, str | None, Send] | None:
        """Apply the checks of :mod:`.guard`; answer and return ``None`` when one refuses (or
        a preflight was answered), else the route, the path, the error format and the ``send``
        to use (adding CORS headers for an allowed origin)."""
        headers = scope["headers"]
        server = self.config.server
        problem = host_error(headers, scope["http_version"])
        if problem is not None:
            # An ambiguous head (RFC 9112 §3.2): answered, then the connection is closed.
            await json_error(
                send,
                400,
                format_for_path(scope["path"]),
                "bad_host",
                problem,
                extra_headers=[(b"connection", b"close")],
            )
            return None
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
        method = scope["method"]
        if method not in route.methods:
            # TRACE would echo the route's key from an upstream that answers it; CONNECT would
            # open a tunnel past the route. Only the methods the route lists are forwarded.
            allow = ", ".join(route.methods).encode()
            message = f"method {method[:20]!r} is not forwarded on this route (allowed: "
            await json_error(
                send,
                405,
                fmt_hint,
                "method_not_allowed",
                message + ", ".join(route.methods) + ")",
                extra_headers=[(b"allow", allow)],
            )
            return None
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
            replay(
                state,
                self.resume,
                send,
                last_event_id,
                log_key,
                fmt,
                stall_s,
                self.config.backpressure.max_pending_bytes,
            )
        )
        self.state.streams.add(state)
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
            self.state.streams.discard(state)


def _has_last_event_id(scope: Scope) -> bool:
    return any(name == b"last-event-id" for name, _ in scope["headers"])
