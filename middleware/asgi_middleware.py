"""``StreamHopMiddleware``: the stream engine around an existing ASGI app's ``send``/``receive``.

It owns, per HTTP request (one :class:`_Responder` each, the shape of Starlette's
``GZipMiddleware``/``GZipResponder``; nothing per request lives on the middleware):

* **re-chunking** of the app's ``text/event-stream`` responses with the sidecar's engine
  (:class:`~.pump.StreamPump`: decode, merge by format, coalesce, one write in flight). The
  ``http.response.start`` goes out at once with ``content-length`` dropped, ``cache-control:
  no-cache`` (unless the app set one) and ``x-accel-buffering: no``; every other response, every
  WebSocket and lifespan message passes through as the very same message object;
* **cancellation**: the app runs in its own task, raced against a disconnect watcher. The watcher
  is the only reader of the server's ``receive``; it hands the app its ``http.request`` messages
  through a one-message inbox, so the app still gets its body, and a ``http.disconnect`` before the
  response is complete cancels the app's task, whose ``finally`` closes its own upstream call.
  Never while the app is suspended inside ``send()``: Starlette's ``StreamingResponse`` does not
  close its body iterator when ``send`` fails, so a cancellation landing there would leave the
  app's generator suspended at its ``yield`` (and its upstream connection open) until garbage
  collection. The stop waits for ``send()`` to return, and body chunks sent after the stream
  ended are dropped, so the cancellation lands at the app's next await, inside its generator;
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
* The watcher reads the request body one message ahead of the app (never more), so a client that
  sent ``Expect: 100-continue`` gets its ``100 Continue`` at once.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import weakref
from collections import deque
from collections.abc import Iterable
from typing import Final

import orjson
from prometheus_client import REGISTRY, CollectorRegistry
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .coalescer import Coalescer
from .errors import ConfigError, EventTooLargeError, StreamHopError
from .events import SSEEvent
from .formats import FORMAT_NAMES, error_body, error_event
from .metrics import OTHER_MODEL, Metrics, StreamMetrics
from .pump import ClientStallError, StreamPump
from .sse_decoder import SSEDecoder

logger = logging.getLogger(__name__)

DEFAULT_ROUTE_LABEL: Final = "asgi"
"""The ``route`` label when neither ``route_label`` nor a framework route template is known."""
MODES: Final = ("coalesce", "passthrough")
MODEL_PEEK_BYTES: Final = 64 * 1024
"""Request body bytes kept to read the ``model`` field (only with a ``models`` allow-list)."""

_CONTROL_PREFIX: Final = b"x-streamhop-"
_FLUSH_HEADER: Final = b"x-streamhop-flush-interval-ms"
_MODE_HEADER: Final = b"x-streamhop-mode"
_DISCONNECT: Final[Message] = {"type": "http.disconnect"}
_INTERNAL_ERROR_MESSAGE: Final = "the server failed while streaming the response"

# One set of metric families per registry, so several middleware instances (several apps, or a
# rebuilt middleware stack) can share one registry without "Duplicated timeseries".
_FAMILIES: weakref.WeakKeyDictionary[CollectorRegistry, Metrics] = weakref.WeakKeyDictionary()


class OptionError(ConfigError, ValueError):
    """An invalid ``StreamHopMiddleware`` option; ``key`` names it."""


class _ControlHeaderError(StreamHopError):
    """An ``X-Streamhop-*`` request header with an unusable value (answered with 400)."""


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
            flush_ms, mode = _controls(scope["headers"])
        except _ControlHeaderError as exc:
            body = error_body(self.error_format, "bad_control_header", str(exc))
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ]
            await send({"type": "http.response.start", "status": 400, "headers": headers})
            await send({"type": "http.response.body", "body": body, "more_body": False})
            return
        if flush_ms is None:
            flush_ms = self.flush_interval_ms
        passthrough = (mode or self.mode) == "passthrough"
        await _Responder(self, scope, receive, send, flush_ms / 1000.0, passthrough).run()


class _Responder:
    """One HTTP request through the middleware: the app's task, the disconnect watcher, and (for
    an SSE response) the stream pump.

    The app gets :meth:`receive` and :meth:`send`; the server's own are ``_receive`` and
    ``_send``. Times are ``time.monotonic()`` seconds.
    """

    __slots__ = (
        "_arrived",
        "_body_peek",
        "_cancel_detected_at",
        "_cancel_latency",
        "_cancel_reason",
        "_complete",
        "_disconnected",
        "_ended",
        "_error_kind",
        "_flush_interval",
        "_in_send",
        "_inbox",
        "_mw",
        "_observed",
        "_passthrough",
        "_pump",
        "_receive",
        "_receive_error",
        "_received_at",
        "_scope",
        "_send",
        "_send_lock",
        "_stop_pending",
        "_stopping",
        "_taken",
        "_task",
        "_writer_error",
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
        self._receive = receive
        self._send = send
        self._flush_interval = flush_interval
        self._passthrough = passthrough
        self._received_at = time.monotonic()
        self._inbox: deque[Message] = deque()
        self._arrived = asyncio.Event()
        self._taken = asyncio.Event()
        self._disconnected = False
        self._receive_error: BaseException | None = None
        self._body_peek: bytearray | None = bytearray() if mw.models else None
        self._task: asyncio.Task[None] | None = None
        self._pump: StreamPump | None = None
        self._send_lock = asyncio.Lock()
        self._observed: StreamMetrics | None = None
        self._complete = False  # the final body message has gone (or is going) downstream
        self._ended = False  # an SSE stream took its last body (final, or ended with an error)
        self._stopping = False  # the middleware decided to stop the app (see _stop)
        self._stop_pending = False  # ... and waits for the app to leave send() to tell it
        self._in_send = 0  # the app's calls suspended inside our send()
        self._cancel_reason: str | None = None
        self._cancel_detected_at: float | None = None
        self._cancel_latency: float | None = None
        self._writer_error: BaseException | None = None
        self._error_kind: str | None = None

    # ---- the request's life

    async def run(self) -> None:
        """Run the app to its end; returns when its task is done.

        Raises:
            Whatever the app raised (after ending a started SSE stream with an error event),
            except what the middleware caused itself by cancelling it. ``CancelledError`` when
            the server cancelled this request (the app's task is cancelled and awaited first).
        """
        loop = asyncio.get_running_loop()
        self._task = task = loop.create_task(self._call_app(), name="streamhop-app")
        watcher = loop.create_task(self._watch(), name="streamhop-disconnect-watcher")
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
        if self._stopping:
            # We stopped it: the cancellation and the errors it caused are ours to swallow.
            if error is None or error is self._writer_error:
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
            try:
                await pump.finish()
            except Exception:
                logger.debug("flush after an unfinished response failed", exc_info=True)

    def _stop(self, reason: str | None) -> None:
        """Stop the app: close the pump and cancel the app's task, as soon as it is not suspended
        inside our ``send()`` (see :meth:`_deliver_stop`).

        Args:
            reason: the cancellation reason for the metrics (first one wins); ``None`` when the
                middleware ended the stream itself (an event too large).
        """
        if reason is not None and self._cancel_reason is None:
            self._cancel_reason = reason
            self._cancel_detected_at = time.monotonic()
        if self._pump is not None:
            self._pump.close()
        if self._stopping:
            return
        self._stopping = True
        if self._in_send and reason != "shutdown":
            # Delivered when the app leaves send(). Not on shutdown: the server is going away,
            # and a send() to a slow client that is still connected may not return soon.
            self._stop_pending = True
        else:
            self._deliver_stop()

    def _deliver_stop(self) -> None:
        """The app's ``receive()`` answers ``http.disconnect`` from now on, and its task is
        cancelled: the cancellation lands at its next await.

        Called only while the app is not suspended inside ``send()``: a streaming generator
        (Starlette's ``StreamingResponse`` body) is then suspended at an await of its own, so
        the cancellation runs its ``finally``/``async with`` and closes its upstream. Cancelled
        inside ``send()``, it would stay suspended at its ``yield``, never closed until garbage
        collection.
        """
        self._stop_pending = False
        self._disconnected = True
        self._arrived.set()
        task = self._task
        if task is not None and not task.done():
            task.cancel()

    def _left_send(self) -> None:
        self._in_send -= 1
        if self._stop_pending and not self._in_send:
            self._deliver_stop()

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
        try:
            await pump.finish([self._error_event("internal_error", _INTERNAL_ERROR_MESSAGE)])
            self._complete = True
            await self._send({"type": "http.response.body", "body": b"", "more_body": False})
        except Exception:
            logger.debug("could not end the stream after an app error", exc_info=True)

    # ---- receive: one reader of the server, the app fed through a one-message inbox

    async def _watch(self) -> None:
        """Read the server's ``receive`` for the app; on ``http.disconnect`` before the response
        is complete, cancel the app."""
        inbox = self._inbox
        try:
            while True:
                message = await self._receive()
                if message["type"] == "http.disconnect":
                    if self._complete:  # uvicorn says so once the response is complete
                        self._disconnected = True
                        self._arrived.set()
                    else:
                        self._stop("client_disconnect")
                    return
                peek = self._body_peek
                if peek is not None:
                    self._peek(peek, message)
                inbox.append(message)
                self._arrived.set()
                if message.get("more_body", False):
                    # Read ahead of the app by one message only: the body is never buffered.
                    while inbox:
                        self._taken.clear()
                        await self._taken.wait()
        except Exception as exc:  # the server's receive failed: the app's receive raises it
            self._receive_error = exc
            self._arrived.set()

    def _peek(self, peek: bytearray, message: Message) -> None:
        chunk = message.get("body", b"")
        if len(peek) + len(chunk) > MODEL_PEEK_BYTES:
            self._body_peek = None
        else:
            peek += chunk

    async def receive(self) -> Message:
        """The app's ``receive``: its ``http.request`` messages in order, then
        ``http.disconnect`` once the client is gone (or the response is complete)."""
        inbox = self._inbox
        while True:
            if inbox:
                message = inbox.popleft()
                self._taken.set()
                return message
            if self._disconnected:
                return dict(_DISCONNECT)
            if self._receive_error is not None:
                raise self._receive_error
            self._arrived.clear()
            await self._arrived.wait()

    # ---- send

    async def send(self, message: Message) -> None:
        """The app's ``send``: SSE body chunks go through the pump, the rest through as is.

        SSE body chunks sent after the client left (or after the middleware ended the stream)
        are dropped: the app's task is being cancelled, and the cancellation must land at the
        app's next await, not in here (see :meth:`_deliver_stop`).

        Raises:
            Whatever the server's ``send`` raises, for messages passed through; the writer's
            error (client gone or stalled) from the final body of an SSE response.
        """
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
        if self._ended or self._stopping or pump.writer.done():
            return
        body = message.get("body", b"")
        if body:
            coalescer = pump.coalescer
            before = coalescer.events_in
            try:
                pump.feed(body)
            except EventTooLargeError as exc:
                self._error_kind = "event_too_large"
                logger.warning("the app sent an SSE event too large: %s", exc)
                self._in_send += 1
                try:
                    await self._end_early(pump, "event_too_large", str(exc))
                finally:
                    self._left_send()
                self._stop(None)  # the app's upstream is closed as on a disconnect
                return
            if (coalescer.events_in == before and body[0] == 0x3A) or pump.over_limit:
                self._in_send += 1
                try:
                    if coalescer.events_in == before and body[0] == 0x3A:  # ":" a comment
                        await self._keep_alive(pump, body)
                    if pump.over_limit:
                        await pump.wait_for_room()
                finally:
                    self._left_send()
        if message.get("more_body", False):
            return
        self._ended = True
        tail: list[SSEEvent] = []
        pump.decoder.receive_data(b"")
        if pump.decoder.truncated:
            self._error_kind = "truncated"
            message_text = "the app's SSE response ended in the middle of an event"
            logger.warning("%s", message_text)
            tail.append(self._error_event("upstream_truncated", message_text))
        await pump.finish(tail)
        self._complete = True
        await self._send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _start(self, message: Message) -> None:
        """``http.response.start``: begin re-chunking an SSE response, else pass it through."""
        raw = message.get("headers") or []
        if not isinstance(raw, list):  # any iterable is allowed; read it only once
            raw = message["headers"] = list(raw)
        headers = Headers(raw=raw)
        media_type = headers.get("content-type", "").partition(";")[0].strip().lower()
        encoding = headers.get("content-encoding", "identity").strip().lower()
        if (
            media_type != "text/event-stream"
            or self._scope["method"] == "HEAD"
            or encoding not in ("identity", "")
        ):
            await self._send(message)
            return
        mw = self._mw
        out = MutableHeaders(raw=[(bytes(k), bytes(v)) for k, v in raw])
        del out["content-length"]
        out.setdefault("cache-control", "no-cache")
        out["x-accel-buffering"] = "no"
        await self._send({**message, "headers": out.raw})
        self._observed = observed = StreamMetrics(mw.metrics, self._route(), self._model())
        observed.active.inc()
        coalescer = Coalescer(
            format=mw.format,
            flush_interval=self._flush_interval,
            max_flush_bytes=mw.max_flush_bytes,
            passthrough=self._passthrough,
        )
        self._pump = pump = StreamPump(
            self._write,
            coalescer,
            SSEDecoder(mw.max_event_bytes),
            max_pending_bytes=mw.max_pending_bytes,
            stall_timeout=mw.stall_timeout_s,
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

    async def _keep_alive(self, pump: StreamPump, body: bytes) -> None:
        """Forward a comment-only chunk (a keep-alive) when the stream is idle."""
        if pump.coalescer.deadline is not None or self._send_lock.locked():
            return  # data is flowing: the connection is not idle
        if not _comment_only(body):
            return
        async with self._send_lock:
            await self._send({"type": "http.response.body", "body": body, "more_body": True})

    async def _end_early(self, pump: StreamPump, code: str, text: str) -> None:
        """Write what is held and a terminal error event, then the final body."""
        self._ended = True
        try:
            await pump.finish([self._error_event(code, text)])
        except Exception:
            return  # the writer failed: the client is gone, cancellation follows
        self._complete = True
        await self._send({"type": "http.response.body", "body": b"", "more_body": False})

    def _error_event(self, code: str, text: str) -> SSEEvent:
        pump = self._pump
        fmt = pump.coalescer.format_name if pump is not None else None
        return error_event(fmt or self._mw.error_format, code, text)

    # ---- metrics and the stream log line

    def _route(self) -> str:
        label = self._mw.route_label
        if label is not None:
            return label
        path = getattr(self._scope.get("route"), "path", None)
        return path if isinstance(path, str) and path else DEFAULT_ROUTE_LABEL

    def _model(self) -> str:
        peek = self._body_peek
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
        coalescer = pump.coalescer
        if pump.first_content_write_at is not None:
            observed.ttft(pump.first_content_write_at - received)
        if coalescer.first_content_at is not None:
            observed.upstream_ttft(coalescer.first_content_at - received)
        observed.duration(now - received)
        if self._error_kind is not None:
            observed.upstream_error(self._error_kind)
        if coalescer.malformed:
            observed.upstream_error("malformed_event", coalescer.malformed)
        logger.info(
            "stream end route=%s model=%s format=%s outcome=%s events_in=%d events_out=%d "
            "writes=%d bytes_in=%d bytes_out=%d duration_s=%.6f",
            observed.route,
            observed.model,
            coalescer.format_name,
            reason or self._error_kind or ("complete" if self._complete else "unfinished"),
            coalescer.events_in,
            coalescer.events_out,
            pump.writes,
            pump.bytes_in,
            pump.bytes_out,
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


def _controls(raw: Iterable[tuple[bytes, bytes]]) -> tuple[float | None, str | None]:
    """The request's ``X-Streamhop-Flush-Interval-Ms`` (ms) and ``X-Streamhop-Mode``, as the
    sidecar reads them.

    Raises:
        _ControlHeaderError: a value the sidecar would also refuse.
    """
    flush: float | None = None
    mode: str | None = None
    for name, value in raw:
        if not name.startswith(_CONTROL_PREFIX):
            continue
        if name == _FLUSH_HEADER:
            text = value.decode("latin-1").strip()
            try:
                flush = float(text)
            except ValueError:
                raise _ControlHeaderError(
                    f"X-Streamhop-Flush-Interval-Ms must be a number of milliseconds, got {text!r}"
                ) from None
            if not flush >= 0 or flush == math.inf:
                raise _ControlHeaderError(
                    f"X-Streamhop-Flush-Interval-Ms must be a finite number >= 0, got {text!r}"
                )
        elif name == _MODE_HEADER:
            text = value.decode("latin-1").strip()
            if text not in MODES:
                raise _ControlHeaderError(
                    f"X-Streamhop-Mode must be 'coalesce' or 'passthrough', got {text!r}"
                )
            mode = text
    return flush, mode


def _comment_only(body: bytes) -> bool:
    """True when ``body`` is whole SSE comment lines followed by a blank line."""
    text = body.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    if not text.endswith(b"\n\n"):
        return False
    for line in text[:-2].split(b"\n"):
        if line[:1] != b":":
            return False
    return True
