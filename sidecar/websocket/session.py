"""One WebSocket connection of the bridge: its reader loop (and idle timeout), the current
generation (or resume or follow replay), cancel, cut-over and a stop from outside (the HTTP stop
endpoint), and the handoff message (see :mod:`.bridge` for the protocol's overview and close
codes)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Final

import orjson

from streamhop.middleware.controls import ControlHeaderError, Controls
from streamhop.sidecar.admission.admit import Refusal, admit, forwarded_headers
from streamhop.sidecar.admission.guard import RequestPath
from streamhop.sidecar.admission.headers import HeaderValueError, upstream_request_headers
from streamhop.sidecar.asgi import Message, Receive, Scope, Send
from streamhop.sidecar.config import RouteConfig
from streamhop.sidecar.observe.follow_metrics import follower_metrics
from streamhop.sidecar.upstream.edge import EdgeContext
from streamhop.sidecar.websocket.generation import Generation
from streamhop.sidecar.websocket.headers import caller_headers, combine, generation_headers
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
from streamhop.sidecar.websocket.resuming import WsReplay, counted
from streamhop.sidecar.websocket.slots import GenerationStop, ReplaySlot

logger = logging.getLogger(__name__)

CUTOVER_WAIT_S: Final = 5.0
"""Longest wait for a cancelled generation's task to end before the next step goes ahead."""
CLOSE_NORMAL: Final = 1000
CLOSE_GOING_AWAY: Final = 1001
CLOSE_UNSUPPORTED_DATA: Final = 1003
CLOSE_POLICY_VIOLATION: Final = 1008
CLOSE_TOO_BIG: Final = 1009


class Session:
    """One WebSocket connection: the reader loop and the current generation."""

    def __init__(self, edge: EdgeContext, scope: Scope, receive: Receive, send: Send) -> None:
        self.edge = edge
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
        self._cancelled: asyncio.Task[None] | None = None
        """The task cancelled last: whoever cancelled it sends its ``done``, nobody else."""
        self._stopper: asyncio.Task[None] | None = None
        self._replay_slot: ReplaySlot | None = None  # the running resume's max_streams slot
        """Sends ``done`` ``cancelled`` after a stop from outside (:meth:`stop`)."""

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
        edge = self.edge
        admitted = admit(edge.config.server, edge.table, self.scope, "GET")
        if isinstance(admitted, Refusal) and admitted.code != "no_route":
            # Refused before the handshake (the client sees 403): a Host not served here, a
            # path that could steer a route, a web page on another origin.
            await self._send({"type": "websocket.close", "code": CLOSE_POLICY_VIOLATION})
            return
        await self._send({"type": "websocket.accept"})
        if isinstance(admitted, Refusal):
            await self.close(CLOSE_POLICY_VIOLATION, admitted.message)
            return
        if edge.state.draining:
            await self.close(CLOSE_GOING_AWAY, "streamhop is shutting down")
            return
        forwarded = forwarded_headers(self.scope["headers"], None)
        if isinstance(forwarded, Refusal):
            await self.close(CLOSE_POLICY_VIOLATION, forwarded.message)
            return
        forward, self.controls = forwarded
        route, self.path = admitted.route, admitted.path
        self.route = route
        self.forward = generation_headers(forward)
        try:
            await self._read_loop()
        except asyncio.CancelledError:
            # uvicorn cancelled the connection (shutdown past its grace period).
            self._cancel_current("shutdown")
            raise
        finally:
            await self._end_current("client_disconnect")

    async def _read_loop(self) -> None:
        next_message: asyncio.Future[Message] | None = None
        try:
            while True:
                if next_message is None:
                    next_message = asyncio.ensure_future(self.receive())
                if not await self._wait_message(next_message):
                    idle_s = self.edge.config.server.websocket_idle_timeout_s
                    reason = f"idle for {idle_s:g} s, nothing running (websocket_idle_timeout_s)"
                    await self.close(CLOSE_GOING_AWAY, reason)
                    return
                message, next_message = next_message.result(), None
                if not await self._handle(message):
                    return
        finally:
            if next_message is not None:
                next_message.cancel()

    async def _wait_message(self, next_message: asyncio.Future[Message]) -> bool:
        """Wait for the client's next message; False once the socket has been idle (nothing
        running, no message) for ``websocket_idle_timeout_s``. A generation is never idle,
        however long it runs: the idle clock starts when it ends."""
        loop = asyncio.get_running_loop()
        idle_s = self.edge.config.server.websocket_idle_timeout_s
        idle_since = loop.time()
        while not next_message.done():
            task = self.task
            if task is not None and not task.done():
                await asyncio.wait((next_message, task), return_when=asyncio.FIRST_COMPLETED)
                idle_since = loop.time()
                continue
            left = idle_since + idle_s - loop.time()
            if left <= 0:
                return False
            await asyncio.wait((next_message,), timeout=left)
        return True

    async def _handle(self, message: Message) -> bool:
        """Act on one ASGI message from the client; False when the socket is done."""
        limit = self.edge.config.server.max_request_bytes
        kind = message["type"]
        if kind == "websocket.disconnect":
            reason = "shutdown" if self.edge.state.draining else "client_disconnect"
            await self._end_current(reason)
            return False
        if kind != "websocket.receive":
            return True
        text = message.get("text")
        if text is None:
            await self._end_current("client_disconnect")
            await self.close(CLOSE_UNSUPPORTED_DATA, "binary frames are not supported")
            return False
        if len(text) > limit // 4 and len(text.encode()) > limit:
            await self._end_current("client_disconnect")
            await self._error("message_too_large", f"frame is over max_request_bytes={limit}")
            await self.close(CLOSE_TOO_BIG, f"frame is over max_request_bytes={limit}")
            return False
        try:
            parsed = parse_client_frame(text)
        except MessageError as exc:
            await self._error(exc.code, str(exc))
            return True
        if isinstance(parsed, CancelMessage):
            await self._cancel()
        elif isinstance(parsed, ResumeMessage):
            await self._resume(parsed)
        else:
            return await self._request(parsed)
        return True

    async def _error(self, code: str, message: str) -> None:
        await self.send_frames([error_frame(code, message)])

    def running(self) -> bool:
        """A generation (or replay) runs and has not begun sending its own ``done``."""
        return self._running()

    def _running(self) -> bool:
        gen, task = self.current, self.task
        return (
            gen is not None
            and task is not None
            and not task.done()
            and not gen.ending
            and task is not self._cancelled
        )

    async def handoff(self, gen: Generation, retry_ms: int) -> None:
        """Tell the client to reconnect elsewhere; ``gen`` goes on into the log only."""
        if gen is not self.current or gen.log is None or gen.ending:
            return
        gen.hand_off()
        frame = reconnect_frame(gen.record.stream_id, gen.log.last_seq, retry_ms)
        with contextlib.suppress(OSError):
            await self.send_frames([frame])

    def stop(self, gen: Generation, reason: str) -> None:
        """Stop ``gen`` from outside the socket (``DELETE .../streamhop/v1/streams/<id>`` here
        or on another replica) as a ``cancel`` would: upstream closed at once, held events
        dropped, then ``done`` ``cancelled``; ``reason`` is the cancel reason (``stop``)."""
        task = self.task
        if gen is not self.current or task is None or task.done() or gen.ending:
            return  # over, or sending its own done: nothing left to stop
        if gen.detached:
            # Handed off: no client here; end it with the driver's own terminal event, which
            # the log keeps for the client resuming elsewhere.
            gen.stop(reason)
            return
        if not self._running():
            return  # someone else cancelled it already and sends its done
        self._cancel_current(reason)
        self._stopper = asyncio.get_running_loop().create_task(self._send_stopped(task))

    async def _send_stopped(self, task: asyncio.Task[None]) -> None:
        await asyncio.wait((task,), timeout=CUTOVER_WAIT_S)
        with contextlib.suppress(OSError):  # the client left: it sees no done
            await self.send_frames([done_frame("cancelled")])

    async def _settle(self) -> None:
        """Wait (bounded) for a generation that is ending without this reader cancelling it:
        sending its own ``done``, or stopped from outside and its ``done`` on the way. So the
        next generation's events always follow that ``done``."""
        pending = [t for t in (self.task, self._stopper) if t is not None and not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=CUTOVER_WAIT_S)

    def _cancel_current(self, reason: str) -> None:
        if self.current is not None and self.task is not None and not self.task.done():
            self.current.mark_cancel(reason)
            self.task.cancel()
            self._cancelled = self.task

    async def _end_current(self, reason: str) -> bool:
        """Cancel the running generation (if any) and wait for it; True if one was cancelled."""
        task = self.task
        if task is None or task.done():
            return False
        gen = self.current
        if isinstance(gen, Generation) and gen.detached:
            # Handed off: it runs on into the log (bounded by the drain) for a resume elsewhere.
            await asyncio.wait((task,), timeout=self.edge.config.resume.window_s)
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

    def _own_slot(self) -> int:
        """1 when this socket's current generation or resume replay holds a ``max_streams``
        slot (it ends before a new one starts), else 0."""
        streams = self.edge.state.streams
        current = self.current
        if isinstance(current, Generation) and current in streams:
            return 1
        slot = self._replay_slot
        return int(current is not None and slot is not None and slot in streams)

    async def _resume(self, message: ResumeMessage) -> None:
        """Replay a logged generation after ``message.after`` and follow it to its end
        (cutting over a running one); bound to this route and the caller's credentials: the
        handshake's, with those of the ``resume`` message replacing same-named ones (as a
        generation is bound to the credentials its ``request`` sent upstream)."""
        edge = self.edge
        route = self.route
        assert route is not None
        if edge.resume is None:
            code = "resume_disabled" if message.follower else "resume_unavailable"
            await self._error(code, "resume is off ([resume] enabled = false)")
            return
        limit = edge.config.server.max_streams
        if edge.state.active - self._own_slot() >= limit:
            # A replay holds a socket and follows a live tail like a stream: it counts too.
            await self._error("too_many_streams", f"streamhop is at max_streams={limit}")
            return
        if self._running():
            if await self._end_current("interrupt"):
                await self.send_frames([done_frame("interrupted")])
        else:
            await self._settle()
        try:
            extra, _ = upstream_request_headers(
                [(n.lower().encode(), v.encode("utf-8")) for n, v in message.headers]
            )
        except (ControlHeaderError, HeaderValueError) as exc:
            await self._error("bad_control_header", str(exc))
            return
        key = edge.log_key(route, message.stream_id, caller_headers(self.scope["headers"], extra))
        edge.resuming(key)  # a generation waiting out its grace goes on
        backpressure = edge.config.backpressure
        follower = None
        if message.follower:  # the one difference from a resume: the followers' metrics
            follower = follower_metrics(edge.metrics.registry).follower(route.prefix)
        replay = WsReplay(
            edge.resume,
            key,
            message,
            self.send_frames if follower is None else counted(self.send_frames, follower.wrote),
            backpressure.max_pending_bytes,
            backpressure.stall_timeout_s,
        )
        self.current = replay
        self.task = task = asyncio.get_running_loop().create_task(replay.run())
        slot = self._replay_slot = ReplaySlot(task)
        edge.state.streams.add(slot)  # counts toward max_streams; shutdown ends it

        def finished(_: asyncio.Task[None]) -> None:
            edge.state.streams.discard(slot)
            if follower is not None:
                follower.close()
            if replay.stalled:
                # The client accepted nothing for stall_timeout_s: drop the socket.
                self._closer = asyncio.get_running_loop().create_task(
                    self.close(CLOSE_POLICY_VIOLATION, "client stalled")
                )

        self.task.add_done_callback(finished)

    async def _request(self, message: RequestMessage) -> bool:
        """Start a generation, cutting over a running one; False when the socket must close."""
        edge = self.edge
        route = self.route
        assert route is not None
        try:
            extra, controls = upstream_request_headers(
                [(n.lower().encode(), v.encode("utf-8")) for n, v in message.headers]
            )
        except (ControlHeaderError, HeaderValueError) as exc:
            await self._error("bad_control_header", str(exc))
            return True
        if edge.state.draining:
            await self._error("draining", "streamhop is shutting down")
            await self._end_current("shutdown")
            await self.close(CLOSE_GOING_AWAY, "streamhop is shutting down")
            return False
        limit = edge.config.server.max_streams
        # This socket's own generation or replay, still counted, ends before the new one starts.
        if edge.state.active - self._own_slot() >= limit:
            await self._error("too_many_streams", f"streamhop is at max_streams={limit}")
            return True
        if self._running():
            if await self._end_current("interrupt"):
                await self.send_frames([done_frame("interrupted")])
        else:
            await self._settle()
        self._start(route, message, extra, controls.over(self.controls))
        return True

    def _start(
        self,
        route: RouteConfig,
        message: RequestMessage,
        extra: list[tuple[str, str]],
        controls: Controls,
    ) -> None:
        edge = self.edge
        path = self.path
        assert path is not None
        body = dict(message.body)
        body["stream"] = True
        model = body.get("model")
        headers = combine(self.forward, extra)
        headers.append(("content-type", "application/json"))
        opened, request = edge.open(
            route=route,
            path=path,
            method="POST",
            query=self.scope.get("query_string", b""),
            body=orjson.dumps(body),
            model=model if isinstance(model, str) else None,
            streaming=True,
            client_headers=[
                *self.scope["headers"],
                *((n.encode(), v.encode("utf-8")) for n, v in extra),
            ],
            forward=headers,
            controls=controls,
            format_hint=None if route.format == "auto" else route.format,
        )
        record = opened.record
        # Resume and stop are bound to the credentials that went upstream: the handshake's,
        # with the message's replacing same-named ones (a browser puts Authorization in the
        # message).
        caller = caller_headers(self.scope["headers"], extra)
        log = None
        if edge.resume is not None:
            log = (edge.resume, edge.log_key(route, record.stream_id, caller))
        gen = Generation(request, self.send_frames, log)
        opened.register(gen)
        # DELETE <prefix>/streamhop/v1/streams/<id> finds it by route and id, then checks the
        # caller's credentials (as for an HTTP stream).
        stop_key = (route.prefix, record.stream_id)

        def finished(task: asyncio.Task[None]) -> None:
            # A done callback, not a finally: it also runs for a task cancelled before it began.
            if not task.cancelled() and (error := task.exception()) is not None:
                logger.error("stream %s: generation failed: %r", record.request_id, error)
            edge.state.running.pop(stop_key, None)
            opened.close()
            if record.cancel_reason == "stall":
                # The client accepted nothing for stall_timeout_s: drop the socket.
                self._closer = asyncio.get_running_loop().create_task(
                    self.close(CLOSE_POLICY_VIOLATION, "client stalled")
                )

        self.current = gen
        self.task = task = asyncio.get_running_loop().create_task(gen.run())
        task.add_done_callback(finished)
        edge.state.running[stop_key] = task, GenerationStop(self, gen), caller
