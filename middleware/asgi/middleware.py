"""``StreamHopMiddleware``: the stream engine around an existing ASGI app's ``send``/``receive``.

The middleware object holds only what all requests share (the app, the options, the metric
families); every HTTP request gets its own :class:`~.responder.Responder` (the shape of
Starlette's ``GZipMiddleware``/``GZipResponder``), which owns, in its own modules:

* the request's phase, from waiting for ``http.response.start`` to complete or stopped
  (:mod:`.responder`): stopping the app when its client leaves (or stalls, or the server shuts
  down), the ASGI way first, and cancelling its task as the last resort;
* the one reader of the server's ``receive`` (:mod:`.receive`);
* the re-chunking of the app's ``text/event-stream`` responses with the sidecar's engine
  (:mod:`.rechunk`): every other response, every WebSocket and lifespan message passes through
  as the very same message object; backpressure pushes back on the app's ``send``;
* the metrics of :mod:`streamhop.middleware.observe.metrics` and one log line per re-chunked
  stream (:mod:`.record`).

Options are checked when the middleware is created (:mod:`.options`).

Deliberate divergences from the sidecar and from a plain ASGI stack, each documented in
``docs/middleware.md``:

* An exception the app raises after an SSE response started ends the stream with a terminal error
  event in the stream's format (``code: "internal_error"``, no details leak), then the final body;
  the exception is **re-raised** afterwards, as Starlette's ``ServerErrorMiddleware`` does, so the
  server and error trackers still see it.
* SSE comments (``: ping``) are dropped by the decoder like any comment, except while nothing is
  held and no write is in flight: then the app's own comment lines are forwarded verbatim (a
  keep-alive of an idle stream, sse-starlette's ping), and after ``keepalive_interval_s``
  without a write the middleware writes ``: keep-alive`` itself, so idle timeouts of proxies in
  between still see traffic.
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

from collections.abc import Iterable

from prometheus_client import REGISTRY, CollectorRegistry
from starlette.types import ASGIApp, Receive, Scope, Send

from streamhop.middleware import defaults
from streamhop.middleware.asgi.errors import ClientDisconnectedError
from streamhop.middleware.asgi.options import (
    MiddlewareOptions,
    OptionError,
    check_registry,
    model_names,
)
from streamhop.middleware.asgi.phase import Phase
from streamhop.middleware.asgi.record import DEFAULT_ROUTE_LABEL, MODEL_PEEK_BYTES, families
from streamhop.middleware.asgi.responder import Responder
from streamhop.middleware.controls import ControlHeaderError, parse_controls
from streamhop.middleware.rechunk.formats import error_body

__all__ = [
    "DEFAULT_ROUTE_LABEL",
    "MODEL_PEEK_BYTES",
    "ClientDisconnectedError",
    "OptionError",
    "Phase",
    "StreamHopMiddleware",
]


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
        keepalive_interval_s: **seconds** an SSE response may go without a write before the
            middleware writes a ``: keep-alive`` comment line (so idle timeouts of proxies and
            load balancers in between do not cut a stream whose model is still thinking);
            ``None``: never.
        burst_gap_ms, burst_events: the upstream burst detector's thresholds (**milliseconds**
            of silence, then at least this many events within 1 ms: a buffering hop between the
            app and its provider; ``streamhop_upstream_bursts_total``).
        flush_boundary: where a window write may cut merged text: ``"none"`` (anywhere),
            ``"word"``, ``"sentence"`` or ``"line"`` (Unicode UAX #29; docs/rechunking.md); a
            request's ``X-Streamhop-Flush-Boundary`` overrides it.
        max_boundary_wait_ms: **milliseconds** text may be held past its window waiting for a
            boundary before it is written anyway.
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
        flush_interval_ms: float = defaults.FLUSH_INTERVAL_MS,
        max_flush_bytes: int = defaults.MAX_FLUSH_BYTES,
        max_event_bytes: int = defaults.MAX_EVENT_BYTES,
        max_pending_bytes: int = defaults.MAX_PENDING_BYTES,
        stall_timeout_s: float = defaults.STALL_TIMEOUT_S,
        stop_grace_s: float = 1.0,
        keepalive_interval_s: float | None = defaults.KEEPALIVE_INTERVAL_S,
        burst_gap_ms: float = 500.0,
        burst_events: int = 20,
        flush_boundary: str = "none",
        max_boundary_wait_ms: float = 250.0,
        mode: str = "coalesce",
        format: str = "auto",
        registry: CollectorRegistry | None = None,
        models: Iterable[str] = (),
        route_label: str | None = None,
    ) -> None:
        self.app = app
        self.options = options = MiddlewareOptions(
            flush_interval_ms=flush_interval_ms,
            max_flush_bytes=max_flush_bytes,
            max_event_bytes=max_event_bytes,
            max_pending_bytes=max_pending_bytes,
            stall_timeout_s=stall_timeout_s,
            stop_grace_s=stop_grace_s,
            keepalive_interval_s=keepalive_interval_s,
            burst_gap_ms=burst_gap_ms,
            burst_events=burst_events,
            flush_boundary=flush_boundary,
            max_boundary_wait_ms=max_boundary_wait_ms,
            mode=mode,
            format=format,
            models=model_names(models),
            route_label=route_label,
        )
        """The validated options (:class:`~.options.MiddlewareOptions`)."""
        registry = check_registry(registry)
        self.metrics = families(REGISTRY if registry is None else registry)
        """The metric families (``metrics.registry`` is where they are registered)."""
        # Each option also as an attribute of its own name (``mw.flush_interval_ms``).
        self.flush_interval_ms = options.flush_interval_ms
        self.max_flush_bytes = options.max_flush_bytes
        self.max_event_bytes = options.max_event_bytes
        self.max_pending_bytes = options.max_pending_bytes
        self.stall_timeout_s = options.stall_timeout_s
        self.stop_grace_s = options.stop_grace_s
        self.keepalive_interval_s = options.keepalive_interval_s
        self.burst_gap_ms = options.burst_gap_ms
        self.burst_events = options.burst_events
        self.flush_boundary = options.flush_boundary
        self.max_boundary_wait_ms = options.max_boundary_wait_ms
        self.mode = options.mode
        self.format = options.format
        self.models = options.models
        self.route_label = options.route_label

    @property
    def error_format(self) -> str | None:
        """The format of errors answered before a stream's format is known (``None``: OpenAI)."""
        return self.options.error_format

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            controls = parse_controls(scope["headers"])
        except ControlHeaderError as exc:
            body = error_body(self.error_format, "bad_control_header", str(exc), 400)
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ]
            await send({"type": "http.response.start", "status": 400, "headers": headers})
            await send({"type": "http.response.body", "body": body, "more_body": False})
            return
        options = self.options
        responder = Responder(
            self.app,
            options,
            self.metrics,
            options.pump_options(controls),
            scope,
            receive,
            send,
        )
        await responder.run()
