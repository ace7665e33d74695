"""The WebSocket bridge: ``Upgrade: websocket`` on any route path opens a duplex session.

One :class:`_Session` per socket. Its own task reads client frames; each ``request`` runs as a
:class:`~.ws_generation.Generation` in a task of its own. At most one generation runs per socket:

* ``cancel`` cancels the running generation's task, waits for it (at most ``CUTOVER_WAIT_S``),
  then sends ``done`` ``cancelled``;
* a ``request`` while one runs **cuts over**: the same, with ``done`` ``interrupted``, then the new
  generation starts. Waiting first means no event of the old generation follows its ``done``;
* the socket closing cancels the running generation (``client_disconnect``).

Sends are serialized by one lock per socket (one send in flight), so the reader's ``error``
messages never interleave with a batch of events. Backpressure is the pump's: a client that does
not read makes ``send`` block, merging continues, the pump stops reading upstream past
``max_pending_bytes``, and after ``stall_timeout_s`` the generation is dropped (``stall``).

Close codes (RFC 6455 §7.4.1): 1008 no route or an invalid ``X-Streamhop-*`` handshake header, or
a stalled client; 1001 while draining; 1003 for a binary frame; 1009 for a frame over
``[server] max_request_bytes``.

Deliberate divergences from the HTTP proxy: the handshake's ``Origin``, ``Accept-Encoding`` and
``Sec-WebSocket-*`` headers describe the WebSocket, not the generation, so they are not forwarded
(a browser ``Origin`` would make some providers apply CORS rules meant for browsers). At shutdown
uvicorn closes open WebSockets at once with 1012 (it has no drain for them); their generations
are cancelled with reason ``shutdown``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Final

import orjson

from streamhop.middleware.controls import ControlHeaderError, Controls
from streamhop.middleware.observe.metrics import Metrics
from streamhop.sidecar.admission.guard import (
    PathError,
    RequestPath,
    check_browser,
    host_allowed,
    normalise_path,
)
from streamhop.sidecar.admission.headers import (
    HeaderValueError,
    upstream_request_headers,
)
from streamhop.sidecar.admission.routing import RouteTable, raw_path
from streamhop.sidecar.config import Config, RouteConfig
from streamhop.sidecar.http.asgi import Receive, Scope, Send
from streamhop.sidecar.observe.record import StreamRecord
from streamhop.sidecar.observe.tracing import Tracing
from streamhop.sidecar.resume import ResumeStore
from streamhop.sidecar.resume.binding import ResumeBinding
from streamhop.sidecar.upstream.driver import StreamRequest
from streamhop.sidecar.upstream.opening import open_stream
from streamhop.sidecar.upstream.pool import UpstreamPool
from streamhop.sidecar.websocket.generation import Generation
from streamhop.sidecar.websocket.messages import (
    CancelMessage,
    MessageError,
    RequestMessage,
    ResumeMessage,
    done_frame,
    error_frame,
    parse_client_frame,
    reconnect_frame,
)
from streamhop.sidecar.websocket.replay import WsReplay

if TYPE_CHECKING:
    from streamhop.sidecar.upstream.opening import SidecarState

logger = logging.getLogger(__name__)

CUTOVER_WAIT_S: Final = 5.0
"""Longest wait for a cancelled generation's task to end before the next step goes ahead."""
CLOSE_NORMAL: Final = 1000
CLOSE_GOING_AWAY: Final = 1001
CLOSE_UNSUPPORTED_DATA: Final = 1003
CLOSE_POLICY_VIOLATION: Final = 1008
CLOSE_TOO_BIG: Final = 1009
# Handshake headers that belong to the WebSocket, not to the generation.
_HANDSHAKE_ONLY: Final = ("origin", "accept-encoding")
_TRACE_HEADERS: Final = frozenset(("traceparent", "tracestate"))
_DROP_ALWAYS: Final = frozenset(("accept-encoding", "content-type"))


class WebSocketBridge:
    """ASGI endpoint for ``websocket`` scopes; per-socket state lives in a :class:`_Session`.

    Args:
        config: the sidecar config.
        pool: the upstream client pool.
        state: the process state (draining, open streams).
        metrics: the metric families.
        table: the route table.
        on_finish: called with each generation's record once it ended (the JSON log line).
        tracing: spans per generation, or ``None``.
    """

    def __init__(
        self,
        config: Config,
        pool: UpstreamPool,
        state: SidecarState,
        metrics: Metrics,
        table: RouteTable,
        on_finish: Callable[[StreamRecord], None] | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self.config = config
        self.pool = pool
        self.state = state
        self.metrics = metrics
        self.table = table
        self.on_finish = on_finish
        self.tracing = tracing
        self.resume: ResumeStore | None = None
        """The resume store (set at startup when ``[resume]`` is on): generations are logged."""
        self.binding = ResumeBinding.from_config(config.resume)
        self.sessions: set[_Session] = set()
        self._handoffs: set[asyncio.Task[None]] = set()
        state.on_drain.append(self.handoff_all)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        session = _Session(self, scope, receive, send)
        self.sessions.add(session)
        try:
            await session.run()
        finally:
            self.sessions.discard(session)

    def handoff_all(self) -> int:
        """Draining with a shared resume store: send each socket with a logged generation a
        ``reconnect`` message (a random ``retry_ms`` in ``[0, handoff_jitter_ms]``); the
        generation goes on into the log for the client to ``resume`` on another replica."""
        if self.resume is None or self.config.resume.store != "redis":
            return 0
        jitter = self.config.resume.handoff_jitter_ms
        loop = asyncio.get_running_loop()
        count = 0
        for session in list(self.sessions):
            gen = session.current
            if isinstance(gen, Generation) and gen.log is not None and session.running():
                task = loop.create_task(session.handoff(gen, int(random.uniform(0, jitter))))
                self._handoffs.add(task)
                task.add_done_callback(self._handoffs.discard)
                count += 1
        return count


class _Session:
    """One WebSocket connection: the reader loop and the current generation."""

    def __init__(self, bridge: WebSocketBridge, scope: Scope, receive: Receive, send: Send) -> None:
        self.bridge = bridge
        self.scope = scope
        self.receive = receive
        self._send = send
        self._lock = asyncio.Lock()
        self.current: Generation | WsReplay | None = None
        self.task: asyncio.Task[None] | None = None
        self.route: RouteConfig | None = None
        self.forward: list[tuple[str, str]] = []
        self.controls = Controls()
        self.path: RequestPath | None = None
        self._closer: asyncio.Task[None] | None = None

    async def send_frames(self, frames: Sequence[str]) -> None:
        """Send text frames in order; one send in flight per socket.

        Raises:
            OSError: the client is gone.
        """
        async with self._lock:
            for frame in frames:
                await self._send({"type": "websocket.send", "text": frame})

    async def close(self, code: int, reason: str = "") -> None:
        """Close the socket with ``code`` (a close reason is at most 123 bytes, RFC 6455 §5.5)."""
        data = reason.encode()[:123].decode("utf-8", "ignore")
        with contextlib.suppress(OSError):
            async with self._lock:
                await self._send({"type": "websocket.close", "code": code, "reason": data})

    async def run(self) -> None:
        message = await self.receive()
        if message["type"] != "websocket.connect":
            return
        bridge = self.bridge
        server = bridge.config.server
        headers = self.scope["headers"]
        if not host_allowed(server, headers):
            await self._send({"type": "websocket.close", "code": CLOSE_POLICY_VIOLATION})
            return  # refused before the handshake: the client sees 403
        try:
            self.path = path = normalise_path(raw_path(self.scope))
        except PathError:
            await self._send({"type": "websocket.close", "code": CLOSE_POLICY_VIOLATION})
            return
        route = bridge.table.match(path)
        if route is not None and check_browser(server, route, "GET", headers).refused:
            # A web page on another origin: refuse the handshake (403), as for HTTP.
            await self._send({"type": "websocket.close", "code": CLOSE_POLICY_VIOLATION})
            return
        await self._send({"type": "websocket.accept"})
        if route is None:
            await self.close(CLOSE_POLICY_VIOLATION, f"no route for path {path.text}")
            return
        if bridge.state.draining:
            await self.close(CLOSE_GOING_AWAY, "streamhop is shutting down")
            return
        try:
            forward, self.controls = upstream_request_headers(self.scope["headers"])
        except (ControlHeaderError, HeaderValueError) as exc:
            await self.close(CLOSE_POLICY_VIOLATION, str(exc))
            return
        self.route = route
        self.forward = [
            (n, v)
            for n, v in forward
            if n not in _HANDSHAKE_ONLY and not n.startswith("sec-websocket-")
        ]
        try:
            await self._read_loop()
        except asyncio.CancelledError:
            # uvicorn cancelled the connection (shutdown past its grace period).
            self._cancel_current("shutdown")
            raise
        finally:
            await self._end_current("client_disconnect")

    async def _read_loop(self) -> None:
        limit = self.bridge.config.server.max_request_bytes
        while True:
            message = await self.receive()
            kind = message["type"]
            if kind == "websocket.disconnect":
                reason = "shutdown" if self.bridge.state.draining else "client_disconnect"
                await self._end_current(reason)
                return
            if kind != "websocket.receive":
                continue
            text = message.get("text")
            if text is None:
                await self._end_current("client_disconnect")
                await self.close(CLOSE_UNSUPPORTED_DATA, "binary frames are not supported")
                return
            if len(text) > limit // 4 and len(text.encode()) > limit:
                await self._end_current("client_disconnect")
                await self._error("message_too_large", f"frame is over max_request_bytes={limit}")
                await self.close(CLOSE_TOO_BIG, f"frame is over max_request_bytes={limit}")
                return
            try:
                parsed = parse_client_frame(text)
            except MessageError as exc:
                await self._error(exc.code, str(exc))
                continue
            if isinstance(parsed, CancelMessage):
                await self._cancel()
            elif isinstance(parsed, ResumeMessage):
                await self._resume(parsed)
            elif not await self._request(parsed):
                return

    async def _error(self, code: str, message: str) -> None:
        await self.send_frames([error_frame(code, message)])

    def running(self) -> bool:
        """A generation (or replay) runs and has not begun sending its own ``done``."""
        return self._running()

    def _running(self) -> bool:
        gen, task = self.current, self.task
        return gen is not None and task is not None and not task.done() and not gen.ending

    async def handoff(self, gen: Generation, retry_ms: int) -> None:
        """Tell the client to reconnect elsewhere; ``gen`` goes on into the log only."""
        if gen is not self.current or gen.log is None or gen.ending:
            return
        gen.detached = True
        frame = reconnect_frame(gen.record.stream_id, gen.log.last_seq, retry_ms)
        with contextlib.suppress(OSError):
            await self.send_frames([frame])

    def _cancel_current(self, reason: str) -> None:
        if self.current is not None and self.task is not None and not self.task.done():
            self.current.mark_cancel(reason)
            self.task.cancel()

    async def _end_current(self, reason: str) -> bool:
        """Cancel the running generation (if any) and wait for it; True if one was cancelled."""
        task = self.task
        if task is None or task.done():
            return False
        gen = self.current
        if isinstance(gen, Generation) and gen.detached:
            # Handed off: it runs on into the log (bounded by the drain) for a resume elsewhere.
            await asyncio.wait((task,), timeout=self.bridge.config.resume.window_s)
            return False
        cancelled = self._running()
        if cancelled:
            self._cancel_current(reason)
        await asyncio.wait((task,), timeout=CUTOVER_WAIT_S)
        return cancelled

    async def _cancel(self) -> None:
        if not self._running():
            await self._error("nothing_to_cancel", "no generation is running on this socket")
            return
        if await self._end_current("interrupt"):
            await self.send_frames([done_frame("cancelled")])

    async def _resume(self, message: ResumeMessage) -> None:
        """Replay a logged generation after ``message.after`` and follow it to its end
        (cutting over a running one); bound to this route and the handshake's credentials."""
        bridge = self.bridge
        route = self.route
        assert route is not None
        if bridge.resume is None:
            await self._error("resume_unavailable", "resume is off ([resume] enabled = false)")
            return
        if self._running():
            if await self._end_current("interrupt"):
                await self.send_frames([done_frame("interrupted")])
        elif self.task is not None and not self.task.done():
            await asyncio.wait((self.task,), timeout=CUTOVER_WAIT_S)
        key = bridge.binding.log_key(route.prefix, message.stream_id, self.scope["headers"])
        replay = WsReplay(bridge.resume, key, message, self.send_frames)
        self.current = replay
        self.task = asyncio.get_running_loop().create_task(replay.run())

    async def _request(self, message: RequestMessage) -> bool:
        """Start a generation, cutting over a running one; False when the socket must close."""
        bridge = self.bridge
        route = self.route
        assert route is not None
        try:
            extra, controls = upstream_request_headers(
                [(n.lower().encode(), v.encode("utf-8")) for n, v in message.headers]
            )
        except (ControlHeaderError, HeaderValueError) as exc:
            await self._error("bad_control_header", str(exc))
            return True
        if bridge.state.draining:
            await self._error("draining", "streamhop is shutting down")
            await self._end_current("shutdown")
            await self.close(CLOSE_GOING_AWAY, "streamhop is shutting down")
            return False
        limit = bridge.config.server.max_streams
        if bridge.state.active - int(self._running()) >= limit:
            await self._error("too_many_streams", f"streamhop is at max_streams={limit}")
            return True
        if self._running():
            if await self._end_current("interrupt"):
                await self.send_frames([done_frame("interrupted")])
        elif self.task is not None and not self.task.done():
            # It is sending its own done: let it finish first.
            await asyncio.wait((self.task,), timeout=CUTOVER_WAIT_S)
        self._start(route, message, extra, controls.over(self.controls))
        return True

    def _start(
        self,
        route: RouteConfig,
        message: RequestMessage,
        extra: list[tuple[str, str]],
        controls: Controls,
    ) -> None:
        bridge = self.bridge
        path = self.path
        assert path is not None
        body = dict(message.body)
        body["stream"] = True
        model = body.get("model")
        headers = _combine(self.forward, extra)
        headers.append(("content-type", "application/json"))
        opened = open_stream(
            route=route,
            method="POST",
            path=path.text,
            model=model if isinstance(model, str) else None,
            streaming=True,
            client_headers=[
                *self.scope["headers"],
                *((n.encode(), v.encode("utf-8")) for n, v in extra),
            ],
            forward=headers,
            controls=controls,
            metrics=bridge.metrics,
            tracing=bridge.tracing,
            registry=bridge.state,
            on_finish=bridge.on_finish,
        )
        record = opened.record
        log = None
        if bridge.resume is not None:
            key = bridge.binding.log_key(route.prefix, record.stream_id, self.scope["headers"])
            log = (bridge.resume, key)
        gen = Generation(
            StreamRequest(
                config=bridge.config,
                pool=bridge.pool,
                route=route,
                method="POST",
                url=bridge.table.upstream_url(route, path, self.scope.get("query_string", b"")),
                headers=opened.headers,
                body=orjson.dumps(body),
                controls=controls,
                record=record,
                observed=opened.observed,
                deadline=opened.deadline,
                format_hint=None if route.format == "auto" else route.format,
            ),
            self.send_frames,
            log,
        )
        opened.register(gen)

        def finished(task: asyncio.Task[None]) -> None:
            # A done callback, not a finally: it also runs for a task cancelled before it began.
            if not task.cancelled() and (error := task.exception()) is not None:
                logger.error("stream %s: generation failed: %r", record.request_id, error)
            opened.close()
            if record.cancel_reason == "stall":
                # The client accepted nothing for stall_timeout_s: drop the socket.
                self._closer = asyncio.get_running_loop().create_task(
                    self.close(CLOSE_POLICY_VIOLATION, "client stalled")
                )

        self.current = gen
        self.task = task = asyncio.get_running_loop().create_task(gen.run())
        task.add_done_callback(finished)


def _combine(
    handshake: list[tuple[str, str]], message: list[tuple[str, str]]
) -> list[tuple[str, str]]:
    """Handshake headers, with the message's headers replacing same-named ones; the body's
    ``Content-Type`` and the upstream ``Accept-Encoding`` are streamhop's to set."""
    override = {n.lower() for n, _ in message}
    out = [(n, v) for n, v in handshake if n not in override and n not in _DROP_ALWAYS]
    out.extend((n, v) for n, v in message if n.lower() not in _DROP_ALWAYS)
    return out
