"""The send side of a re-chunked response: which responses are SSE, and the pump behind one.

The ASGI part of re-chunking is small, and lives here, apart from the responder's plumbing
(Starlette's ``GZipResponder`` split, where ``apply_compression`` is all the gzip-specific code):

* :func:`sse_headers` decides at ``http.response.start`` whether a response is re-chunked — a
  ``text/event-stream`` (header names and the media type in any case, RFC 9110 §5.1: Django
  sends ``Content-Type``), not to a ``HEAD``, not compressed — and gives its new headers:
  ``content-length`` dropped (the body changes), ``cache-control: no-cache`` unless the app set
  one (sse-starlette's ``no-store`` is kept), ``x-accel-buffering: no`` (nginx must not buffer);
* :class:`SSEResponse` feeds the app's body chunks to a
  :class:`~streamhop.middleware.pump.StreamPump` and ends the stream: what is held, then a
  terminal error event when there is one. Its writes are ``more_body`` body messages to the
  server's ``send``; the final empty body is the responder's, which knows the response's phase.

Comments: the decoder drops SSE comments as a browser does, and the pump forwards the app's own
comment lines (sse-starlette's ``: ping``) only while nothing is held or being written, which is
when the stream idles and idle timeouts of proxies in between need traffic. After
``keepalive_interval_s`` without a write, the pump writes ``: keep-alive`` itself.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Sequence

from starlette.types import Message, Send

from streamhop.middleware.observe.metrics import StreamMetrics
from streamhop.middleware.pump import Fault, PumpOptions, PumpStats, Sink, StreamPump
from streamhop.middleware.sse.events import SSEEvent

logger = logging.getLogger(__name__)


def sse_headers(message: Message, method: str) -> list[tuple[bytes, bytes]] | None:
    """The headers to send for a re-chunked response, or ``None`` if it passes through.

    Args:
        message: the app's ``http.response.start``. Headers given as another iterable than a
            list are read once and stored back as a list, so the message can still be sent.
        method: the request's method (the response to a ``HEAD`` has no body to re-chunk).

    Returns:
        The app's headers in their order and case, without ``content-length`` and
        ``x-accel-buffering``, plus ``cache-control: no-cache`` unless the app set one, and
        ``x-accel-buffering: no``; ``None`` for a response that is not ``text/event-stream``,
        answers a ``HEAD``, or has a ``content-encoding`` other than ``identity``.
    """
    raw = message.get("headers") or []
    if not isinstance(raw, list):  # any iterable is allowed; read it only once
        raw = message["headers"] = list(raw)
    content_type = _header(raw, b"content-type") or b""
    media_type = content_type.partition(b";")[0].strip().lower()
    encoding = (_header(raw, b"content-encoding") or b"identity").strip().lower()
    if media_type != b"text/event-stream" or method == "HEAD" or encoding not in (b"identity", b""):
        return None
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


class SSEResponse:
    """The body of one re-chunked SSE response: the app's chunks in, merged events out.

    Args:
        send: the server's ``send``; it gets ``http.response.body`` messages with
            ``more_body: True``, one at a time.
        options: the pump's options for this request.
        observer: the stream's metric children.
        on_failure: called once if a write fails (client gone: the server's error;
            :class:`~streamhop.middleware.pump.ClientStallError`), with that error.
        error_format: the format of error events while the stream's own is not known.

    Must be created inside a running event loop.
    """

    __slots__ = ("_error_format", "_lock", "_on_failure", "_pump", "_send", "writer_error")

    def __init__(
        self,
        send: Send,
        options: PumpOptions,
        observer: StreamMetrics,
        on_failure: Callable[[BaseException], None],
        error_format: str | None,
    ) -> None:
        self._send = send
        self._lock = asyncio.Lock()
        self._on_failure = on_failure
        self._error_format = error_format
        self.writer_error: BaseException | None = None
        """The error the pump's write failed with, once it has (client gone or stalled)."""
        self._pump = StreamPump(Sink(self._write), options, observer=observer)
        self._pump.on_failure(self._write_failed)

    def __repr__(self) -> str:
        return f"<SSEResponse {self._pump!r}>"

    @property
    def writing(self) -> bool:
        """False once the pump's writes are over (finished, failed or closed)."""
        return not self._pump.is_done()

    @property
    def stats(self) -> PumpStats:
        """The pump's counters and times (:class:`~streamhop.middleware.pump.PumpStats`)."""
        return self._pump.stats

    async def feed(self, body: bytes) -> None:
        """Take a body chunk of the app (non-empty); waits while too much is held.

        Raises:
            StreamFault: an event larger than ``max_event_bytes`` (``event_too_large``).
        """
        await self._pump.feed(body)

    def feed_eof(self) -> Fault | None:
        """The app's body is over; the fault if it ended inside an event."""
        return self._pump.feed_eof()

    def error_events(self, fault: Fault) -> list[SSEEvent]:
        """The terminal error event for ``fault`` in the stream's format (none for ``sse``)."""
        return self._pump.error_events(fault, self._error_format)

    async def finish(self, tail: Sequence[SSEEvent] = ()) -> bool:
        """Write what is held, then ``tail``; False when the writer failed or was closed.

        Raises:
            CancelledError: only when the calling task itself is being cancelled.
        """
        try:
            await self._pump.finish(tail)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise
            return False  # the writer was stopped (the client left): no more can be written
        except Exception:
            logger.debug("the final writes of the stream failed", exc_info=True)
            return False
        return True

    def close(self) -> None:
        """Stop at once, writing nothing more (the response is stopped, or over)."""
        self._pump.close()

    async def _write(self, data: bytes) -> None:
        """The pump's write: one body chunk to the server."""
        async with self._lock:
            await self._send({"type": "http.response.body", "body": data, "more_body": True})

    def _write_failed(self, error: BaseException) -> None:
        self.writer_error = error
        self._on_failure(error)


def _header(raw: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """The value of the first header called ``name`` (lowercase), in any case, or ``None``."""
    for key, value in raw:
        if key.lower() == name:
            return bytes(value)
    return None
