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
resume log (:func:`~.resume.replay.replay`) without contacting the provider; so is a follower,
``GET <prefix>/streamhop/v1/streams/<id>`` (:mod:`.control`). On a route with
``on_disconnect = "detach"``, a client leaving a stream that has a log does not cancel it: the
generation runs on into the log for at most ``[resume] window_s`` seconds (its deadline still
applies), then is cancelled as usual.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from typing import Any

from streamhop.sidecar.admission.admit import (
    Admitted,
    Refusal,
    admit,
    capacity,
    forwarded_headers,
)
from streamhop.sidecar.admission.guard import cors_headers, preflight_headers
from streamhop.sidecar.asgi import (
    Receive,
    Scope,
    Send,
    client_left_first,
    json_error,
    read_body,
    with_headers,
)
from streamhop.sidecar.config import RouteConfig
from streamhop.sidecar.http.control import StreamControl
from streamhop.sidecar.http.control import last_event_id as _last_event_id
from streamhop.sidecar.http.exchange import HttpTransport
from streamhop.sidecar.observe.record import request_facts
from streamhop.sidecar.resume import ResumeStore
from streamhop.sidecar.resume.replay import Replay, replay
from streamhop.sidecar.upstream.driver import StreamDriver
from streamhop.sidecar.upstream.edge import EdgeContext
from streamhop.sidecar.websocket.bridge import WebSocketBridge

logger = logging.getLogger(__name__)

__all__ = ["Proxy"]


class Proxy:
    """ASGI app proxying HTTP requests; WebSocket scopes go to the bridge
    (:class:`~.websocket.WebSocketBridge`), which shares this proxy's
    :class:`~.upstream.edge.EdgeContext`."""

    def __init__(self, edge: EdgeContext) -> None:
        self.edge = edge
        self.config = edge.config
        edge.state.on_drain.append(self.handoff_all)
        self.websocket = WebSocketBridge(edge)
        self.control = StreamControl(edge, self._resume)

    @property
    def resume(self) -> ResumeStore | None:
        """The resume store, once the app's lifespan attached one (``[resume]`` on)."""
        return self.edge.resume

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await self.websocket(scope, receive, send)
            return
        if scope["type"] != "http":
            return
        edge = self.edge
        admission = await self._admit(scope, send)
        if admission is None:
            return
        admitted, send = admission
        route, path, fmt = admitted.route, admitted.path, admitted.fmt
        stream_id = edge.table.control_stream_id(route, path)
        if stream_id is not None:
            await self.control(scope, receive, send, admitted, stream_id)
            return
        state, server = edge.state, self.config.server
        # A resume is still served while draining: it starts no generation, and a browser
        # whose reconnect rides an old keep-alive connection here must not get a 503
        # (EventSource gives up for good on an error status).
        last_event_id = _last_event_id(scope) if edge.resume is not None else None
        refusal = capacity(
            server, fmt, draining=state.draining and last_event_id is None, active=state.active
        )
        forwarded = forwarded_headers(scope["headers"], fmt) if refusal is None else refusal
        if isinstance(forwarded, Refusal):
            await _refuse(send, forwarded)
            return
        forward, controls = forwarded
        # The body counts toward max_streams from its first byte.
        state.receiving += 1
        try:
            body = await read_body(receive, server.max_request_bytes, server.body_timeout_s)
        except TimeoutError:
            message = f"the request body stalled for body_timeout_s={server.body_timeout_s:g} s"
            close = [(b"connection", b"close")]
            await json_error(send, 408, fmt, "request_timeout", message, extra_headers=close)
            return
        finally:
            state.receiving -= 1
        if body is None:
            return  # the client left while sending the request
        if isinstance(body, int):
            message = f"request body is larger than max_request_bytes={body}"
            await json_error(send, 413, fmt, "request_too_large", message)
            return
        on_disconnect: str = route.on_disconnect
        if controls.on_disconnect is not None:
            problem = None
            if not route.client_on_disconnect:
                problem = "this route does not let a request choose (client_on_disconnect)"
            elif controls.on_disconnect != "cancel" and edge.resume is None:
                problem = (
                    f"{controls.on_disconnect} keeps generating into the resume log: "
                    "[resume] is off"
                )
            if problem is not None:
                message = f"X-Streamhop-On-Disconnect refused: {problem}"
                await json_error(send, 400, fmt, "bad_control_header", message)
                return
            on_disconnect = controls.on_disconnect
        if last_event_id is not None:
            await self._resume(receive, send, route, last_event_id, fmt, scope)
            return
        model, streaming = request_facts(body)
        opened, request = edge.open(
            route=route,
            path=path,
            method=scope["method"],
            query=scope.get("query_string", b""),
            body=body,
            model=model,
            streaming=streaming,
            client_headers=scope["headers"],
            forward=forward,
            controls=controls,
            format_hint=fmt,
        )
        record = opened.record
        log_key = None
        if edge.resume is not None:
            log_key = edge.log_key(route, record.stream_id, scope["headers"])
        transport = HttpTransport(scope, send, record, fmt, edge.resume, log_key)
        driver = StreamDriver(request, transport)
        opened.register(driver)
        work = asyncio.get_running_loop().create_task(driver.run())
        # DELETE .../streamhop/v1/streams/<id> finds it by route and id, then checks the
        # caller's credentials (computed only then, not per request).
        stop_key = (route.prefix, record.stream_id)
        state.running[stop_key] = work, driver, scope["headers"]
        try:
            if await client_left_first(receive, work) and transport.log is not None:
                await self._client_left(route, on_disconnect, transport, log_key, work)
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
            state.running.pop(stop_key, None)
            opened.close()

    async def _client_left(
        self,
        route: RouteConfig,
        on_disconnect: str,
        transport: HttpTransport,
        log_key: str | None,
        work: asyncio.Future[None],
    ) -> None:
        """The client left a stream that has a resume log: let the generation run on into the
        log, for at most ``[resume] window_s`` (``detach``, or a handed-off stream), or for
        ``disconnect_grace_ms`` unless a resume comes meanwhile (``grace``: then as
        ``detach``; else marked ``grace_expired`` for the caller to cancel)."""
        window_s = self.config.resume.window_s
        if on_disconnect == "detach" or transport.handed_off:
            transport.detach()
            await asyncio.wait((work,), timeout=window_s)
        elif on_disconnect == "grace" and log_key is not None:
            transport.detach()
            started = time.monotonic()
            if await self.edge.grace(log_key, work, route.disconnect_grace_ms / 1000):
                await asyncio.wait((work,), timeout=window_s - (time.monotonic() - started))
            elif not work.done():
                transport.record.mark_cancel("grace_expired")

    def attach_resume(self, store: ResumeStore) -> None:
        """Use ``store`` for resumes, stops and handoffs, over HTTP and WebSocket alike (called
        at startup, inside the server's loop)."""
        self.edge.resume = store
        store.listen_stops(self.control.stop_by_key)
        store.listen_resumes(self.edge.resumed_elsewhere)

    def handoff_all(self) -> list[Coroutine[Any, Any, Any]]:
        """Draining with a shared resume store: tell every reconnecting SSE client to come back
        through another replica (see :meth:`~.exchange.HttpTransport.handoff`,
        :meth:`~.upstream.edge.EdgeContext.handoffs`). Their generations go on into the log.
        Returns the handoffs, for the server to run."""
        return self.edge.handoffs(
            transport.handoff
            for _, driver, _ in list(self.edge.state.running.values())
            if isinstance(transport := getattr(driver, "transport", None), HttpTransport)
            and transport.reconnects
        )

    async def _admit(
        self, scope: Scope, send: Send
    ) -> tuple[Admitted, Send] | None:
        """Apply :func:`~.admission.admit.admit`; answer and return ``None`` when it refuses,
        for a preflight, or for a method the route does not forward; else the admitted head
        and the ``send`` to use (adding CORS headers for an allowed origin)."""
        admitted = admit(self.config.server, self.edge.table, scope, scope["method"])
        if isinstance(admitted, Refusal):
            await _refuse(send, admitted)
            return None
        route, browser, fmt = admitted.route, admitted.browser, admitted.fmt
        if browser.preflight:
            headers = preflight_headers(browser)
            await send({"type": "http.response.start", "status": 204, "headers": headers})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return None
        if browser.origin is not None:
            send = with_headers(send, cors_headers(browser))
        method = scope["method"]
        # The stream control path is streamhop's own (never forwarded): its methods are
        # CONTROL_METHODS whatever the route forwards (:meth:`_control`).
        control = self.edge.table.control_stream_id(route, admitted.path) is not None
        if method not in route.methods and not control:
            # TRACE would echo the route's key from an upstream that answers it; CONNECT would
            # open a tunnel past the route. Only the methods the route lists are forwarded.
            allowed = ", ".join(route.methods)
            message = f"method {method[:20]!r} is not forwarded on this route (allowed: {allowed})"
            allow = [(b"allow", allowed.encode())]
            await json_error(send, 405, fmt, "method_not_allowed", message, extra_headers=allow)
            return None
        return admitted, send

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
        edge = self.edge
        assert edge.resume is not None
        state = Replay()
        backpressure = self.config.backpressure
        headers = scope["headers"]

        def log_key(stream_id: str) -> str:
            key = edge.log_key(route, stream_id, headers)
            edge.resuming(key)  # a generation waiting out its grace goes on
            return key

        state.task = work = asyncio.get_running_loop().create_task(
            replay(
                state,
                edge.resume,
                send,
                last_event_id,
                log_key,
                fmt,
                backpressure.stall_timeout_s,
                backpressure.max_pending_bytes,
            )
        )
        edge.state.streams.add(state)
        try:
            if await client_left_first(receive, work):
                work.cancel()
                await asyncio.wait((work,))
            elif not work.cancelled() and (error := work.exception()) is not None:
                raise error
            elif work.cancelled():
                await state.end(send, fmt)  # stopped by shutdown
        except asyncio.CancelledError:
            work.cancel()
            await asyncio.wait((work,))
            raise
        finally:
            edge.state.streams.discard(state)


async def _refuse(send: Send, refusal: Refusal) -> None:
    """Answer an admission :class:`~.admission.admit.Refusal` with a JSON error."""
    await json_error(
        send,
        refusal.status,
        refusal.fmt,
        refusal.code,
        refusal.message,
        retry_after=refusal.retry_after,
        extra_headers=refusal.extra_headers,
    )
