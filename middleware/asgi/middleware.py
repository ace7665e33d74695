"""``StreamHopMiddleware``: the stream engine around an existing ASGI app's ``send``/``receive``.

It owns, per HTTP request (one :class:`_Responder` each, the shape of Starlette's
``GZipMiddleware``/``GZipResponder``; nothing per request lives on the middleware):

* **re-chunking** of the app's ``text/event-stream`` responses with the sidecar's engine
  (:class:`~.pump.StreamPump`: decode, merge by format, coalesce, one write in flight). The
  ``http.response.start`` goes out at once with ``content-length`` dropped, ``cache-control:
  no-cache`` (unless the app set one) and ``x-accel-buffering: no``; every other response, every
  WebSocket and lifespan message passes through as the very same message object;
* **stopping the app** when its client leaves (or stalls, or the server shuts down), the ASGI
  way first: the app's ``receive()`` (one already waiting and every later one) answers
  ``http.disconnect`` (:class:`~.asgi_receive.ReceiveRelay`, the only reader of the server's
  ``receive``), and its ``send()`` raises :class:`ClientDisconnectedError` once it has heard.
  Frameworks that run the view in a child task and wait on it (Django, Quart; Starlette's
  ``StreamingResponse`` under ASGI < 2.4) cancel that child themselves when they hear it, which
  runs the handler's ``finally`` and closes its upstream call. Cancelling the app's task is the
  last resort: at once when nothing in the app was waiting on ``receive()`` (a handler awaiting
  its provider, never looking at the client), else after ``stop_grace_s``. Cancelling the outer
  task alone would not do: ``asyncio.wait`` does not cancel what it waits on, so a Django or
  Quart view would run on, orphaned, for as long as its generator yields.
  Never while the app is suspended inside ``send()``: Starlette's ``StreamingResponse`` does not
  close its body iterator when ``send`` fails, so a stop landing there would leave the app's
  generator suspended at its ``yield`` (and its upstream connection open) until garbage
  collection. The stop waits for ``send()`` to return, and a ``send()`` made before the app could
  have heard of the stop is dropped rather than failed, so the cancellation lands at the app's
  next await, inside its generator;
* **backpressure**: past ``max_pending_bytes`` held, the app's ``send`` of a body chunk awaits
  room, which pushes back on the app (and through it on its upstream);
* **metrics** of :mod:`.metrics` and one log line per re-chunked stream.

Deliberate divergences from the sidecar and from a plain ASGI stack, each documented in
``docs/middleware.md``:

* An exception the app raises after an SSE response started ends the stream with a terminal error
  event in the stream's format (``code: "internal_error"``, no details leak), then the final body;
  the exception is **re-raised** afterwards, as Starlette's ``ServerErrorMiddleware`` does, so the
  server and error trackers still see it.
* SSE comments (``: ping``) are dropped by the decoder like any comment, except a body chunk made
  only of comment lines that arrives while nothing is held and no write is in flight: that is a
  keep-alive for an idle stream (sse-starlette's ping), and it is forwarded verbatim so idle
  timeouts of proxies in between still see traffic.
* ``X-Streamhop-Timeout-Ms`` (a sidecar deadline) is not implemented here; control headers are left
  in the scope for the app to see.
* Header names are matched case-insensitively (RFC 9110 §5.1), in requests and in the app's
  responses, although ASGI asks for lowercase names: Django sends ``Content-Type``.
* The relay reads the request body one message ahead of the app (never more), so a client that
  sent ``Expect: 100-continue`` gets its ``100 Continue`` at once.
* A ``send()`` after the app heard ``http.disconnect`` raises :class:`ClientDisconnectedError`
  (an ``OSError``), as the ASGI spec asks servers to do; uvicorn's HTTP ``send`` returns silently
  instead, which leaves a view orphaned by its framework streaming for nobody. An exception the
  app raises *because* of that error (Starlette turns it into ``ClientDisconnect``) ends the
  request quietly, like the disconnect it is; any other exception of the app is re-raised.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
import time
import weakref
from collections.abc import Iterable, Sequence
from typing import Final

import orjson
from prometheus_client import REGISTRY, CollectorRegistry
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from streamhop.middleware.asgi.receive import ReceiveRelay
from streamhop.middleware.controls import MODES, ControlHeaderError, parse_controls
from streamhop.middleware.errors import ConfigError, StreamHopError
from streamhop.middleware.observe.metrics import OTHER_MODEL, Metrics, StreamMetrics
from streamhop.middleware.pump import (
    ClientStallError,
    Fault,
    PumpOptions,
    StreamFault,
    StreamPump,
)
from streamhop.middleware.rechunk.formats import FORMAT_NAMES, error_body
from streamhop.middleware.sse.events import SSEEvent

logger = logging.getLogger(__name__)

DEFAULT_ROUTE_LABEL: Final = "asgi"
"""The ``route`` label when neither ``route_label`` nor a framework route template is known."""
MODEL_PEEK_BYTES: Final = 64 * 1024
"""Request body bytes kept to read the ``model`` field (only with a ``models`` allow-list)."""

_FINAL_BODY: Final[Message] = {"type": "http.response.body", "body": b"", "more_body": False}
_INTERNAL_ERROR_MESSAGE: Final = "the server failed while streaming the response"

# One set of metric families per registry, so several middleware instances (several apps, or a
# rebuilt middleware stack) can share one registry without "Duplicated timeseries".
_FAMILIES: weakref.WeakKeyDictionary[CollectorRegistry, Metrics] = weakref.WeakKeyDictionary()


class OptionError(ConfigError, ValueError):
    """An invalid ``StreamHopMiddleware`` option; ``key`` names it."""


class ClientDisconnectedError(StreamHopError, OSError):
    """The app called ``send()`` after it was told that its response is over.

    Raised by the app's ``send()`` once the middleware has stopped the response and the app has
    heard ``http.disconnect`` from ``receive()`` (or its own task has ended and another task of
    it goes on sending). An ``OSError``, as the ASGI spec asks of servers for a ``send()`` on a
    closed connection (uvicorn's ``ClientDisconnected`` is one too), so frameworks handle it as a
    disconnect: Starlette turns it into ``ClientDisconnect``, Django and Quart close the view's
    generator. The middleware never lets it, or an exception raised while handling it, escape to
    the server.

    Attributes:
        reason: why the response stopped: ``client_disconnect``, ``stall``, ``shutdown`` or
            ``event_too_large``.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(f"the response is over ({reason}): the app's send() can take no more")
        self.reason = reason


class _Phase(enum.Enum):
    """Where a request is in stopping the app (see :meth:`_Responder._stop`)."""

    RUNNING = "running"
    """Not stopping."""
    PENDING = "pending"
    """Decided to stop; waiting for the app to leave ``send()`` to tell it."""
    TOLD = "told"
    """``receive()`` answers ``http.disconnect``; the app's task is cancelled, or will be when
    its grace runs out."""


class StreamHopMiddleware:
    """Pure ASGI middleware that re-chunks the app's SSE responses losslessly.

    ``app.add_middleware(StreamHopMiddleware, flush_interval_ms=20)`` (Starlette, FastAPI) or
    ``app = StreamHopMiddleware(app, flush_interval_ms=20)`` (any ASGI app).

    Args:
        app: the ASGI app to wrap.
        flush_interval_ms: the merge window in **milliseconds** from the first held delta to its
            write; ``0`` writes every event at once (still merging while a write is in flight).
        max_flush_bytes: held wire **bytes** at which a write is due at once.
        max_event_bytes: largest single SSE event accepted from the app, in **bytes**; a larger one
            ends the stream with an ``event_too_large`` error event.
        max_pending_bytes: held **bytes** above which the app's ``send`` of a body chunk waits
            until the client has taken some (backpressure).
        stall_timeout_s: **seconds** one write to the client may take; a client that accepts
            nothing for that long is dropped and the app's handler cancelled (reason ``stall``).
        stop_grace_s: **seconds** an app that is waiting on ``receive()`` when it is told of a
            disconnect (``http.disconnect``) gets to stop by itself before its task is
            cancelled. Frameworks that run the view in a child task (Django, Quart) stop within
            milliseconds; an app that does nothing is cancelled after this. An app that is not
            waiting on ``receive()`` is cancelled at once.
        mode: ``"coalesce"`` (merge) or ``"passthrough"`` (forward events one by one).
        format: the stream format (``openai-chat``, ``openai-responses``, ``anthropic``, ``sse``)
            or ``"auto"`` to detect it from the first event with data.
        registry: Prometheus registry for the metrics; ``None`` uses the process default
            ``prometheus_client.REGISTRY``. Instances sharing a registry share metric families.
        models: model names kept as the ``model`` label (read from the request body's JSON
            ``model`` field); any other is ``other``. Empty: the body is never inspected.
        route_label: the ``route`` label; ``None`` uses the matched route's path template when the
            framework records it in ``scope["route"]`` (Starlette, FastAPI), else ``"asgi"``.
            Never the raw request path, whose cardinality is unbounded.

    Raises:
        OptionError: (a ``ValueError``) an option is out of range or of the wrong type; its
            ``key`` and message name the option.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        flush_interval_ms: float = 20.0,
        max_flush_bytes: int = 16 * 1024,
        max_event_bytes: int = 1024 * 1024,
        max_pending_bytes: int = 1024 * 1024,
        stall_timeout_s: float = 30.0,
        stop_grace_s: float = 1.0,
        mode: str = "coalesce",
        format: str = "auto",
        registry: CollectorRegistry | None = None,
        models: Iterable[str] = (),
        route_label: str | None = None,
    ) -> None:
        self.app = app
        self.flush_interval_ms = _number("flush_interval_ms", flush_interval_ms, minimum=0.0)
        self.max_flush_bytes = _positive_int("max_flush_bytes", max_flush_bytes)
        self.max_event_bytes = _positive_int("max_event_bytes", max_event_bytes)
        self.max_pending_bytes = _positive_int("max_pending_bytes", max_pending_bytes)
        self.stall_timeout_s = _number("stall_timeout_s", stall_timeout_s, minimum=None)
        self.stop_grace_s = _number("stop_grace_s", stop_grace_s, minimum=None)
        if mode not in MODES:
            raise OptionError("mode", f"expected one of {list(MODES)}, got {mode!r}")
        self.mode = mode
        if format not in FORMAT_NAMES:
            raise OptionError("format", f"expected one of {list(FORMAT_NAMES)}, got {format!r}")
        self.format = format
        if registry is not None and not isinstance(registry, CollectorRegistry):
            raise OptionError("registry", f"expected a CollectorRegistry, got {registry!r}")
        if isinstance(models, str | bytes):
            raise OptionError("models", f"expected an iterable of names, got {models!r}")
        model_names = frozenset(models)
        if not all(isinstance(name, str) for name in model_names):
            raise OptionError("models", f"expected model names as str, got {sorted(models)!r}")
        self.models = model_names
        if route_label is not None and (not isinstance(route_label, str) or not route_label):
            raise OptionError("route_label", f"expected a non-empty str, got {route_label!r}")
        self.route_label = route_label
        self.metrics = _families(REGISTRY if registry is None else registry)
        """The metric families (``metrics.registry`` is where they are registered)."""

    @property
    def error_format(self) -> str | None:
        """The format of errors answered before a stream's format is known (``None``: OpenAI)."""
        return None if self.format == "auto" else self.format

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            controls = parse_controls(scope["headers"])
        except ControlHeaderError as exc:
            body = error_body(self.error_format, "bad_control_header", str(exc))
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ]
            await send({"type": "http.response.start", "status": 400, "headers": headers})
            await send({"type": "http.response.body", "body": body, "more_body": False})
            return
        flush_ms = controls.flush_interval_ms
        if flush_ms is None:
            flush_ms = self.flush_interval_ms
        passthrough = (controls.mode or self.mode) == "passthrough"
        await _Responder(self, scope, receive, send, flush_ms / 1000.0, passthrough).run()


class _Responder:
    """One HTTP request through the middleware: the app's task, the receive relay, and (for an
    SSE response) the stream pump.

    The app gets :meth:`receive` (the relay's) and :meth:`send`; the server's own are the
    relay's reader and ``_send``. Times are ``time.monotonic()`` seconds.
    """

    __slots__ = (
        "_cancel_detected_at",
        "_cancel_latency",
        "_cancel_reason",
        "_complete",
        "_ended",
        "_error_kind",
        "_flush_interval",
        "_grace",
        "_in_send",
        "_mw",
        "_observed",
        "_passthrough",
        "_phase",
        "_pump",
        "_received_at",
        "_relay",
        "_scope",
        "_send",
        "_send_lock",
        "_stop_why",
        "_task",
        "_writer_error",
        "receive",
    )

    def __init__(
        self,
        mw: StreamHopMiddleware,
        scope: Scope,
        receive: Receive,
        send: Send,
        flush_interval: float,
        passthrough: bool,
    ) -> None:
        self._mw = mw
        self._scope = scope
        self._send = send
        self._flush_interval = flush_interval
        self._passthrough = passthrough
        self._received_at = time.monotonic()
        peek_bytes = MODEL_PEEK_BYTES if mw.models else 0
        self._relay = relay = ReceiveRelay(receive, self._on_disconnect, peek_bytes=peek_bytes)
        self.receive: Receive = relay.receive
        """The app's ``receive`` (see :meth:`.ReceiveRelay.receive`)."""
        self._task: asyncio.Task[None] | None = None
        self._pump: StreamPump | None = None
        self._send_lock = asyncio.Lock()
        self._observed: StreamMetrics | None = None
        self._complete = False  # the final body message has gone (or is going) downstream
        self._ended = False  # an SSE stream took its last body (final, or ended with an error)
        self._phase = _Phase.RUNNING
        self._stop_why = ""  # the reason ClientDisconnectedError gives
        self._grace: asyncio.TimerHandle | None = None  # the last-resort cancellation
        self._in_send = 0  # the app's calls suspended inside our send()
        self._cancel_reason: str | None = None
        self._cancel_detected_at: float | None = None
        self._cancel_latency: float | None = None
        self._writer_error: BaseException | None = None
        self._error_kind: str | None = None

    def __repr__(self) -> str:
        return (
            f"<_Responder {self._phase.value} complete={self._complete} in_send={self._in_send} "
            f"{self._relay!r}>"
        )

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
                if self._cancel_detected_at is not None:
                    self._cancel_latency = time.monotonic() - self._cancel_detected_at
                if self._grace is not None:
                    self._grace.cancel()
                    self._grace = None
            await self._outcome(task)
        finally:
            watcher.cancel()
            if self._pump is not None:
                self._pump.close()
            self._record_end()

    async def _call_app(self) -> None:
        await self._mw.app(self._scope, self.receive, self.send)

    async def _outcome(self, task: asyncio.Task[None]) -> None:
        """Act on how the app's task ended (it is done)."""
        error = None if task.cancelled() else task.exception()
        if self._phase is not _Phase.RUNNING:
            # We stopped it: the cancellation and the errors it caused are ours to swallow.
            if error is None or error is self._writer_error or _caused_by_stop(error):
                return
            raise error
        if task.cancelled():
            raise asyncio.CancelledError()  # the app cancelled itself: as without middleware
        if error is not None:
            if error is self._writer_error:
                return  # the final flush failed: the client is gone
            await self._end_with_error(error)
            raise error
        pump = self._pump
        if pump is not None and not self._ended:
            # The app returned without its final body: deliver what is held, then leave the
            # response unfinished, as the server would see it without the middleware.
            self._ended = True
            await self._finish(pump)

    def _on_disconnect(self) -> None:
        """The server said ``http.disconnect``."""
        if self._complete:  # uvicorn says so once the response is complete: nothing to stop
            self._relay.disconnect()
        else:
            self._stop("client_disconnect")

    def _stop(self, reason: str | None, why: str | None = None) -> None:
        """Stop the app: close the pump, then tell the app as soon as it is not suspended inside
        our ``send()`` (see :meth:`_deliver_stop`).

        Args:
            reason: the cancellation reason for the metrics (first one wins); ``None`` when the
                middleware ended the stream itself (an event too large).
            why: the reason :class:`ClientDisconnectedError` gives (default: ``reason``).
        """
        if reason is not None and self._cancel_reason is None:
            self._cancel_reason = reason
            self._cancel_detected_at = time.monotonic()
        if self._pump is not None:
            self._pump.close()
        if self._phase is _Phase.RUNNING:
            self._stop_why = why or reason or "stopped"
            if self._in_send and reason != "shutdown":
                # Told when the app leaves send(). Not on shutdown: the server is going away,
                # and a send() to a slow client that is still connected may not return soon.
                self._phase = _Phase.PENDING
                return
        elif not (self._phase is _Phase.PENDING and reason == "shutdown"):
            return
        self._deliver_stop()

    def _deliver_stop(self) -> None:
        """Tell the app: its ``receive()`` answers ``http.disconnect`` from now on, and its task
        is cancelled at once if nothing in it waits on ``receive()``, else after
        ``stop_grace_s`` unless it has stopped by itself by then.

        Called only while the app is not suspended inside ``send()`` (but on shutdown): a
        streaming generator (Starlette's ``StreamingResponse`` body) is then suspended at an
        await of its own, so the cancellation runs its ``finally``/``async with`` and closes its
        upstream. Cancelled inside ``send()``, it would stay suspended at its ``yield``, never
        closed until garbage collection.
        """
        self._phase = _Phase.TOLD
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
                self._mw.stop_grace_s, self._cancel_app
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
                self._mw.stop_grace_s,
            )
            task.cancel()

    def _left_send(self) -> None:
        self._in_send -= 1
        if self._phase is _Phase.PENDING and not self._in_send:
            self._deliver_stop()

    def _after_stop(self) -> None:
        """A ``send()`` once the middleware stopped the response: raise, or drop the message.

        Raises:
            ClientDisconnectedError: the app has heard ``http.disconnect`` from ``receive()``,
                or its task is over (the caller is a task it left behind, e.g. a Django or
                Quart view that its framework never cancelled).
        """
        if self._phase is not _Phase.TOLD:
            return  # the app cannot know yet: it is told when it leaves send()
        task = self._task
        if self._relay.heard or task is None or task.done():
            raise ClientDisconnectedError(self._stop_why)
        # Not yet heard: the cancellation is on its way and must land at the app's next await
        # (inside its generator), not in here; the message is dropped.

    async def _finish(self, pump: StreamPump, tail: Sequence[SSEEvent] = ()) -> bool:
        """Write what is held, then ``tail``; False when the writer failed or was stopped.

        Raises:
            CancelledError: only when the calling task itself is being cancelled.
        """
        try:
            await pump.finish(tail)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise
            return False  # the writer was stopped (the client left): no more can be written
        except Exception:
            logger.debug("the final writes of the stream failed", exc_info=True)
            return False
        return True

    async def _end_with_error(self, error: BaseException) -> None:
        """The app raised: end a started SSE stream with a terminal error event."""
        pump = self._pump
        if pump is None or self._ended:
            return
        self._ended = True
        self._error_kind = "app_error"
        logger.warning(
            "the app raised %s mid-stream; ending the SSE response with an error event",
            type(error).__name__,
        )
        if not await self._finish(
            pump,
            pump.error_events(
                Fault("internal_error", _INTERNAL_ERROR_MESSAGE), self._mw.error_format
            ),
        ):
            return  # the client is gone: the app's own exception is what goes on
        self._complete = True
        try:
            await self._send(dict(_FINAL_BODY))
        except Exception:
            logger.debug("could not end the stream after an app error", exc_info=True)

    # ---- send

    async def send(self, message: Message) -> None:
        """The app's ``send``: SSE body chunks go through the pump, the rest through as is.

        Once the middleware has stopped the response (client gone, stalled, shutdown, or an
        event too large), messages are never passed on: they are dropped until the app can
        have heard of it, then refused with :class:`ClientDisconnectedError`.

        Raises:
            ClientDisconnectedError: the response is over and the app was told
                (``http.disconnect`` from ``receive()``).
            Whatever the server's ``send`` raises, for messages passed through; the writer's
            error (client gone or stalled) from the final body of an SSE response.
        """
        if self._phase is not _Phase.RUNNING:
            self._after_stop()
            return
        pump = self._pump
        kind = message["type"]
        if pump is None or kind != "http.response.body":
            if kind == "http.response.start":
                await self._start(message)
                return
            if kind == "http.response.body" and not message.get("more_body", False):
                self._complete = True
            self._in_send += 1
            try:
                await self._send(message)
            finally:
                self._left_send()
            return
        if self._ended or pump.writer.done():
            return
        body = message.get("body", b"")
        if body:
            self._in_send += 1
            try:
                await pump.feed(body)
            except StreamFault as exc:
                self._error_kind = "event_too_large"
                logger.warning("the app sent an SSE event too large: %s", exc)
                try:
                    await self._end_early(pump, exc.fault)
                finally:
                    self._left_send()
                self._stop(None, "event_too_large")  # its upstream is closed as on a disconnect
                return
            self._left_send()
        if message.get("more_body", False):
            return
        self._ended = True
        tail: list[SSEEvent] = []
        fault = pump.feed_eof()
        if fault is not None:
            self._error_kind = "truncated"
            logger.warning("the app's SSE response ended in the middle of an event")
            tail = pump.error_events(fault, self._mw.error_format)
        if not await self._finish(pump, tail):
            if self._writer_error is not None:
                raise self._writer_error
            self._after_stop()
            return
        self._complete = True
        await self._send(dict(_FINAL_BODY))

    async def _start(self, message: Message) -> None:
        """``http.response.start``: begin re-chunking an SSE response, else pass it through."""
        raw = message.get("headers") or []
        if not isinstance(raw, list):  # any iterable is allowed; read it only once
            raw = message["headers"] = list(raw)
        content_type = _header(raw, b"content-type") or b""
        media_type = content_type.partition(b";")[0].strip().lower()
        encoding = (_header(raw, b"content-encoding") or b"identity").strip().lower()
        if (
            media_type != b"text/event-stream"
            or self._scope["method"] == "HEAD"
            or encoding not in (b"identity", b"")
        ):
            await self._send(message)
            return
        mw = self._mw
        await self._send({**message, "headers": _sse_headers(raw)})
        self._observed = observed = StreamMetrics(mw.metrics, self._route(), self._model())
        observed.active.inc()
        self._pump = pump = StreamPump(
            self._write,
            PumpOptions(
                format=mw.format,
                flush_interval_s=self._flush_interval,
                max_flush_bytes=mw.max_flush_bytes,
                passthrough=self._passthrough,
                max_event_bytes=mw.max_event_bytes,
                max_pending_bytes=mw.max_pending_bytes,
                stall_timeout_s=mw.stall_timeout_s,
                # The app's own comments (sse-starlette's ping) go out while the stream idles.
                forward_comments=True,
            ),
            observer=observed,
        )
        pump.writer.add_done_callback(self._writer_done)

    async def _write(self, data: bytes) -> None:
        """The pump's write: one body chunk downstream (the lock orders it with keep-alives)."""
        async with self._send_lock:
            await self._send({"type": "http.response.body", "body": data, "more_body": True})

    def _writer_done(self, writer: asyncio.Task[None]) -> None:
        # A failed write (client gone or stalled) must stop the app and its upstream.
        if writer.cancelled():
            return
        error = writer.exception()
        if error is None:
            return
        self._writer_error = error
        self._stop("stall" if isinstance(error, ClientStallError) else "client_disconnect")

    async def _end_early(self, pump: StreamPump, fault: Fault) -> None:
        """Write what is held and a terminal error event, then the final body."""
        self._ended = True
        if not await self._finish(pump, pump.error_events(fault, self._mw.error_format)):
            return  # the writer failed: the client is gone, the stop follows
        self._complete = True
        await self._send(dict(_FINAL_BODY))

    # ---- metrics and the stream log line

    def _route(self) -> str:
        label = self._mw.route_label
        if label is not None:
            return label
        path = getattr(self._scope.get("route"), "path", None)
        return path if isinstance(path, str) and path else DEFAULT_ROUTE_LABEL

    def _model(self) -> str:
        peek = self._relay.peek
        if not peek or peek[:1] != b"{":
            return OTHER_MODEL
        try:
            obj = orjson.loads(peek)
        except orjson.JSONDecodeError:
            return OTHER_MODEL
        model = obj.get("model") if isinstance(obj, dict) else None
        return model if isinstance(model, str) and model in self._mw.models else OTHER_MODEL

    def _record_end(self) -> None:
        observed = self._observed
        reason = self._cancel_reason
        if observed is None and reason is None:
            return  # a response passed through untouched and not cancelled: nothing to record
        if observed is None:
            observed = StreamMetrics(self._mw.metrics, self._route(), self._model())
        if reason is not None:
            observed.cancelled(reason, self._cancel_latency)
        pump = self._pump
        if pump is None:
            return
        now = time.monotonic()
        observed.flush()
        observed.active.dec()
        received = self._received_at
        stats = pump.stats
        if stats.first_content_write_at is not None:
            observed.ttft(stats.first_content_write_at - received)
        if stats.first_tool_args_write_at is not None:
            observed.time_to_first_tool_argument(stats.first_tool_args_write_at - received)
        if stats.upstream_first_content_at is not None:
            observed.upstream_ttft(stats.upstream_first_content_at - received)
        observed.duration(now - received)
        if self._error_kind is not None:
            observed.upstream_error(self._error_kind)
        if stats.malformed:
            observed.upstream_error("malformed_event", stats.malformed)
        logger.info(
            "stream end route=%s model=%s format=%s outcome=%s events_in=%d events_out=%d "
            "writes=%d bytes_in=%d bytes_out=%d duration_s=%.6f",
            observed.route,
            observed.model,
            stats.format,
            reason or self._error_kind or ("complete" if self._complete else "unfinished"),
            stats.events_in,
            stats.events_out,
            stats.writes,
            stats.bytes_in,
            stats.bytes_out,
            now - received,
        )


# ---- helpers


def _families(registry: CollectorRegistry) -> Metrics:
    metrics = _FAMILIES.get(registry)
    if metrics is None:
        metrics = _FAMILIES[registry] = Metrics(registry)
    return metrics


def _number(key: str, value: object, *, minimum: float | None) -> float:
    """A finite number ``>= minimum`` (``None``: ``> 0``)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise OptionError(key, f"expected a finite number, got {value!r}")
    if minimum is None and value <= 0:
        raise OptionError(key, f"expected a number > 0, got {value!r}")
    if minimum is not None and value < minimum:
        raise OptionError(key, f"expected a number >= {minimum:g}, got {value!r}")
    return float(value)


def _positive_int(key: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise OptionError(key, f"expected an integer > 0, got {value!r}")
    return value


def _header(raw: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """The value of the first header called ``name`` (lowercase), in any case, or ``None``.

    ASGI asks for lowercase header names, but HTTP field names are case-insensitive
    (RFC 9110 §5.1) and Django sends ``Content-Type``.
    """
    for key, value in raw:
        if key.lower() == name:
            return bytes(value)
    return None


def _sse_headers(raw: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The headers of a re-chunked SSE response: the app's, in its order and case, without
    ``content-length`` (the body changes) and with ``cache-control: no-cache`` unless the app set
    one, and ``x-accel-buffering: no`` (nginx must not buffer). Names compared in any case."""
    out: list[tuple[bytes, bytes]] = []
    cache_control = False
    for key, value in raw:
        name = key.lower()
        if name in (b"content-length", b"x-accel-buffering"):
            continue
        if name == b"cache-control":
            cache_control = True
        out.append((bytes(key), bytes(value)))
    if not cache_control:
        out.append((b"cache-control", b"no-cache"))
    out.append((b"x-accel-buffering", b"no"))
    return out


def _caused_by_stop(error: BaseException) -> bool:
    """True when ``error`` is a :class:`ClientDisconnectedError` the middleware raised into the
    app, an exception raised while handling one (Starlette's ``ClientDisconnect``), or a group of
    only such exceptions."""
    if isinstance(error, BaseExceptionGroup):
        return all(_caused_by_stop(e) for e in error.exceptions)
    return any(
        isinstance(e, ClientDisconnectedError) for e in (error, error.__cause__, error.__context__)
    )
