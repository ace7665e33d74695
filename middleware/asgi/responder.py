"""One HTTP request through the middleware, as an explicit state machine (:class:`Phase`).

:class:`Responder` runs the app in its own task and sits between it and the server: the
:class:`~.receive.ReceiveRelay` is the only reader of the server's ``receive``; the app's
``send`` goes through :meth:`Responder.send`, which passes a response through as is or hands an
SSE body to :class:`~.rechunk.SSEResponse`; a :class:`~.record.RequestRecord` keeps the
accounting. What a message does depends only on the phase (see :class:`Phase` for the moves).

**Stopping the app** (the client left or stalled, the server shuts down, an event was too
large) happens the ASGI way first: the app's ``receive()`` — one already waiting and every later
one — answers ``http.disconnect``, and its ``send()`` raises :class:`ClientDisconnectedError`
once it has heard. Frameworks that run the view in a child task (Django, Quart; Starlette's
``StreamingResponse`` under ASGI < 2.4) cancel it themselves when they hear that; cancelling
the outer task would not reach it (``asyncio.wait`` does not cancel what it waits on).
Cancelling the app's task is the last resort: at once when nothing in the app waits on
``receive()``, else after ``stop_grace_s``. Never while the app is inside ``send()`` (but on
shutdown), see :meth:`Responder._tell`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from streamhop.middleware.asgi.errors import ClientDisconnectedError, caused_by_stop
from streamhop.middleware.asgi.options import MiddlewareOptions
from streamhop.middleware.asgi.phase import STOPPED, Phase
from streamhop.middleware.asgi.receive import ReceiveRelay
from streamhop.middleware.asgi.rechunk import SSEResponse, sse_headers
from streamhop.middleware.asgi.record import MODEL_PEEK_BYTES, RequestRecord
from streamhop.middleware.observe.metrics import Metrics
from streamhop.middleware.pump import ClientStallError, Fault, PumpOptions, StreamFault
from streamhop.middleware.sse.events import SSEEvent

logger = logging.getLogger(__name__)

_FINAL_BODY: Final[Message] = {"type": "http.response.body", "body": b"", "more_body": False}
_INTERNAL_ERROR_MESSAGE: Final = "the server failed while streaming the response"


class Responder:
    """One HTTP request: the app's task, the receive relay, and (for SSE) the re-chunker.

    Args:
        app: the wrapped ASGI app.
        options: the middleware's options.
        metrics: the metric families to record in.
        pump: the pump's options for this request (control headers applied).
        scope, receive, send: the server's, for this request.

    The app gets :attr:`receive` (the relay's) and :meth:`send`.
    """

    __slots__ = (
        "_app",
        "_grace",
        "_in_send",
        "_options",
        "_phase",
        "_pump_options",
        "_record",
        "_relay",
        "_scope",
        "_send",
        "_stop_why",
        "_stream",
        "_task",
        "receive",
    )

    def __init__(
        self,
        app: ASGIApp,
        options: MiddlewareOptions,
        metrics: Metrics,
        pump: PumpOptions,
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        self._app = app
        self._options = options
        self._pump_options = pump
        self._scope = scope
        self._send = send
        peek_bytes = MODEL_PEEK_BYTES if options.models else 0
        self._relay = relay = ReceiveRelay(receive, self._on_disconnect, peek_bytes=peek_bytes)
        self.receive: Receive = relay.receive
        """The app's ``receive`` (see :meth:`.ReceiveRelay.receive`)."""
        self._record = RequestRecord(metrics, options, scope, relay)
        self._phase = Phase.STARTING
        self._task: asyncio.Task[None] | None = None
        self._stream: SSEResponse | None = None
        self._in_send = 0  # the app's calls suspended inside send() (several tasks may be)
        self._stop_why = ""  # the reason ClientDisconnectedError gives
        self._grace: asyncio.TimerHandle | None = None  # the last-resort cancellation

    def __repr__(self) -> str:
        stream = "" if self._stream is None else f" {self._stream!r}"
        return f"<Responder {self._phase.value} in_send={self._in_send} {self._relay!r}{stream}>"

    @property
    def phase(self) -> Phase:
        """Where the request is now."""
        return self._phase

    # ---- the request's life

    async def run(self) -> None:
        """Run the app to its end; returns when its task is done.

        Raises:
            Whatever the app raised (after ending a started SSE stream with an error event),
            except what the middleware caused itself by stopping it. ``CancelledError`` when
            the server cancelled this request (the app is stopped and awaited first).
        """
        loop = asyncio.get_running_loop()
        self._task = task = loop.create_task(self._call_app(), name="streamhop-app")
        watcher = loop.create_task(self._relay.watch(), name="streamhop-receive-relay")
        try:
            try:
                await asyncio.wait((task,))
            except asyncio.CancelledError:
                # The server cancelled us (shutdown): stop the app and its upstream first.
                self._stop("shutdown")
                await asyncio.wait((task,))
                if not task.cancelled():
                    task.exception()  # retrieved: the cancellation is what goes on
                raise
            finally:
                self._record.app_over()
                if self._grace is not None:
                    self._grace.cancel()
                    self._grace = None
            await self._outcome(task)
        finally:
            watcher.cancel()
            stream = self._stream
            if stream is not None:
                stream.close()
            self._record.finish(None if stream is None else stream.stats)

    async def _call_app(self) -> None:
        await self._app(self._scope, self.receive, self.send)

    async def _outcome(self, task: asyncio.Task[None]) -> None:
        """Act on how the app's task ended (it is done)."""
        error = None if task.cancelled() else task.exception()
        stream = self._stream
        writer_error = None if stream is None else stream.writer_error
        if self._phase in STOPPED:
            # We stopped it: the cancellation and the errors it caused are ours to swallow.
            if error is None or error is writer_error or caused_by_stop(error):
                return
            raise error
        if task.cancelled():
            raise asyncio.CancelledError()  # the app cancelled itself: as without middleware
        if error is not None:
            if error is writer_error:
                return  # the final flush failed: the client is gone
            await self._end_with_error(error)
            raise error
        if stream is not None and self._phase is Phase.STREAMING:
            # The app returned without its final body: deliver what is held, then leave the
            # response unfinished, as the server would see it without the middleware.
            self._phase = Phase.ENDING
            await stream.finish()

    # ---- stopping the app

    def _on_disconnect(self) -> None:
        """The server said ``http.disconnect``."""
        phase = self._phase
        if phase is Phase.COMPLETE:  # uvicorn says so once the response is complete
            self._relay.disconnect()
        elif phase not in STOPPED:  # when stopping already, the first reason stands
            self._stop("client_disconnect")

    def _on_write_failed(self, error: BaseException) -> None:
        """A write to the client failed (client gone, or stalled): stop the app and upstream."""
        self._stop("stall" if isinstance(error, ClientStallError) else "client_disconnect")

    def _stop(self, reason: str | None, why: str | None = None) -> None:
        """Stop the app: close the re-chunker, then tell the app as soon as it is not suspended
        inside our ``send()`` (see :meth:`_tell`).

        Args:
            reason: the cancellation reason for the metrics (first one wins); ``None`` when the
                middleware ended the stream itself (an event too large).
            why: the reason :class:`ClientDisconnectedError` gives (default: ``reason``).
        """
        if reason is not None:
            self._record.cancelled(reason)
        if self._stream is not None:
            self._stream.close()
        phase = self._phase
        if phase is Phase.TOLD or (phase is Phase.STOPPING and reason != "shutdown"):
            return
        if phase is not Phase.STOPPING:
            self._stop_why = why or reason or "stopped"
            if self._in_send and reason != "shutdown":
                # Told when the app leaves send(). Not on shutdown: the server is going away,
                # and a send() to a slow client that is still connected may not return soon.
                self._phase = Phase.STOPPING
                return
        self._tell()

    def _tell(self) -> None:
        """Tell the app: its ``receive()`` answers ``http.disconnect`` from now on, and its task
        is cancelled at once if nothing in it waits on ``receive()``, else after
        ``stop_grace_s`` unless it has stopped by itself by then.

        Called only while the app is not suspended inside ``send()`` (but on shutdown): a
        streaming generator (Starlette's ``StreamingResponse`` body) is then suspended at an
        await of its own, so the cancellation runs its ``finally``/``async with`` and closes its
        upstream. Cancelled inside ``send()``, it would stay suspended at its ``yield``, never
        closed until garbage collection.
        """
        self._phase = Phase.TOLD
        relay = self._relay
        listening = relay.waiting > 0  # read before disconnect(): the waiters have not run yet
        relay.disconnect()
        task = self._task
        if task is None or task.done():
            return
        if listening:
            # The app listens for the disconnect (Django and Quart wait on the view's child task
            # and a receive() task; cancelling the outer task would orphan the view): let it
            # stop by itself, and cancel it only if it has not by the end of the grace.
            self._grace = asyncio.get_running_loop().call_later(
                self._options.stop_grace_s, self._cancel_app
            )
        else:
            task.cancel()

    def _cancel_app(self) -> None:
        """The last resort: the app did not stop within ``stop_grace_s`` of being told."""
        self._grace = None
        task = self._task
        if task is not None and not task.done():
            logger.warning(
                "the app did not stop within stop_grace_s=%g s of http.disconnect; cancelling it",
                self._options.stop_grace_s,
            )
            task.cancel()

    def _left_send(self) -> None:
        self._in_send -= 1
        if self._phase is Phase.STOPPING and not self._in_send:
            self._tell()

    def _after_stop(self) -> None:
        """A ``send()`` once the middleware stopped the response: raise, or drop the message.

        Raises:
            ClientDisconnectedError: the app has heard ``http.disconnect`` from ``receive()``,
                or its task is over (the caller is a task it left behind, e.g. a Django or
                Quart view that its framework never cancelled).
        """
        if self._phase is not Phase.TOLD:
            return  # the app cannot know yet: it is told when it leaves send()
        task = self._task
        if self._relay.heard or task is None or task.done():
            raise ClientDisconnectedError(self._stop_why)
        # Not yet heard: the cancellation is on its way and must land at the app's next await
        # (inside its generator), not in here; the message is dropped.

    # ---- send

    async def send(self, message: Message) -> None:
        """The app's ``send``: SSE body chunks go through the re-chunker, the rest as is.

        Once the middleware has stopped the response (client gone, stalled, shutdown, or an
        event too large), messages are never passed on: they are dropped until the app can
        have heard of it, then refused with :class:`ClientDisconnectedError`.

        Raises:
            ClientDisconnectedError: the response is over and the app was told
                (``http.disconnect`` from ``receive()``).
            Whatever the server's ``send`` raises, for messages passed through; the writer's
            error (client gone or stalled) from the final body of an SSE response.
        """
        phase = self._phase
        if phase in STOPPED:
            self._after_stop()
            return
        kind = message["type"]
        if kind == "http.response.start" and phase is Phase.STARTING:
            await self._start(message)
            return
        if kind == "http.response.body" and self._stream is not None:
            if phase is Phase.STREAMING:
                await self._stream_body(self._stream, message)
            return  # after the SSE stream's last body: dropped
        if kind == "http.response.body" and not message.get("more_body", False):
            self._phase = Phase.COMPLETE
        self._in_send += 1
        try:
            await self._send(message)
        finally:
            self._left_send()

    async def _start(self, message: Message) -> None:
        """``http.response.start``: begin re-chunking an SSE response, else pass it through."""
        headers = sse_headers(message, self._scope["method"])
        if headers is None:
            self._phase = Phase.PASSING
            await self._send(message)
            return
        await self._send({**message, "headers": headers})
        self._stream = stream = SSEResponse(
            self._send,
            self._pump_options,
            self._record.open_stream(message.get("status")),
            self._on_write_failed,
            self._options.error_format,
        )
        if self._phase is Phase.STARTING:
            self._phase = Phase.STREAMING
        else:  # stopped while the start was being sent: nothing will be written
            stream.close()

    async def _stream_body(self, stream: SSEResponse, message: Message) -> None:
        """A body chunk of an SSE response (phase ``STREAMING``)."""
        if not stream.writing:
            return  # its write failed: the stop is on its way
        body = message.get("body", b"")
        if body:
            too_large = False
            self._in_send += 1
            try:
                await stream.feed(body)
            except StreamFault as exc:
                too_large = True
                self._record.error_kind = "event_too_large"
                logger.warning("the app sent an SSE event too large: %s", exc)
                await self._end_early(stream, exc.fault)
            finally:  # also when the app's own timeout cancels a send() waiting for room
                self._left_send()
            if too_large:
                self._stop(None, "event_too_large")  # its upstream is closed as on a disconnect
                return
        if message.get("more_body", False):
            return
        tail: list[SSEEvent] = []
        fault = stream.feed_eof()
        if fault is not None:
            self._record.error_kind = "truncated"
            logger.warning("the app's SSE response ended in the middle of an event")
            tail = stream.error_events(fault)
        if not await self._end(stream, tail):
            if stream.writer_error is not None:
                raise stream.writer_error
            self._after_stop()
            return
        await self._send(dict(_FINAL_BODY))

    async def _end(self, stream: SSEResponse, tail: list[SSEEvent]) -> bool:
        """``STREAMING`` → ``ENDING``: write what is held and ``tail``; then ``COMPLETE`` (the
        caller sends the final body). False when the writer failed or was stopped."""
        if self._phase is Phase.STREAMING:
            self._phase = Phase.ENDING
        if not await stream.finish(tail):
            return False
        if self._phase is Phase.ENDING:
            self._phase = Phase.COMPLETE
        return True

    async def _end_early(self, stream: SSEResponse, fault: Fault) -> None:
        """End the stream with what is held and a terminal error event, then the final body."""
        if await self._end(stream, stream.error_events(fault)):
            await self._send(dict(_FINAL_BODY))
        # else the writer failed: the client is gone, the stop follows

    async def _end_with_error(self, error: BaseException) -> None:
        """The app raised: end a started SSE stream with a terminal error event."""
        stream = self._stream
        if stream is None or self._phase is not Phase.STREAMING:
            return
        self._record.error_kind = "app_error"
        logger.warning(
            "the app raised %s mid-stream; ending the SSE response with an error event",
            type(error).__name__,
        )
        fault = Fault("internal_error", _INTERNAL_ERROR_MESSAGE)
        if not await self._end(stream, stream.error_events(fault)):
            return  # the client is gone: the app's own exception is what goes on
        try:
            await self._send(dict(_FINAL_BODY))
        except Exception:
            logger.debug("could not end the stream after an app error", exc_info=True)
