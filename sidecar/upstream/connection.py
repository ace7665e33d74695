"""One HTTP/1.1 connection to a provider: an asyncio ``Protocol`` over httptools (llhttp).

The upstream edge of the hot path (docs/performance.md, "Spike: the IO stack, measured"): a
response's body goes from ``data_received`` through the parser straight to whoever consumes it,
with no ``StreamReader`` and no task woken per packet. Two ways to consume a body:

* :meth:`UpstreamResponse.deliver`: every body chunk is handed to a callback inside
  ``data_received`` (the SSE relay: the pump decodes and coalesces synchronously); the consumer
  pauses and resumes reading (:meth:`UpstreamResponse.pause`) for backpressure;
* :meth:`UpstreamResponse.readany`: chunks are buffered (reading pauses above
  :data:`BUFFER_HIGH_BYTES`) and read by a task (copied bodies, error bodies).

Framing follows RFC 9112 as llhttp implements it: ``Content-Length``, ``chunked``, or a body
delimited by the connection's close (§6.3); no body for ``HEAD`` and for 1xx/204/304; interim 1xx
answers are skipped. A connection is reused (:mod:`.pool`) only once its response was read to
the end and both sides allow keep-alive; a response closed before its end aborts the connection,
so the provider sees the close at once (the cancellation promise). One request at a time per
connection: no pipelining.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, cast

import httptools

from streamhop.middleware.errors import StreamHopError

if TYPE_CHECKING:
    from streamhop.sidecar.upstream.pool import UpstreamPool

logger = logging.getLogger(__name__)

BUFFER_HIGH_BYTES: Final = 256 * 1024
"""A buffered body (:meth:`UpstreamResponse.readany`) stops reading from the provider above
this many unread bytes, and resumes once they are read."""

OnData = Callable[[bytes], None]
OnEnd = Callable[[], None]


class UpstreamBodyError(StreamHopError):
    """The provider's connection failed or sent a malformed answer after the request was sent.

    Attributes:
        cause: the transport's error, when there was one (an ``ssl.SSLError`` for a TLS alert).
    """

    def __init__(self, message: str, cause: BaseException | None = None) -> None:
        super().__init__(message)
        self.cause = cause


class UpstreamResponse:
    """The answer to one request on an :class:`UpstreamConnection`.

    Attributes:
        status: the HTTP status code (0 until the headers arrived).
        raw_headers: the response's header fields as received, ``(name, value)`` bytes.
    """

    __slots__ = (
        "_buffered",
        "_chunks",
        "_conn",
        "_error",
        "_headers",
        "_on_data",
        "_on_end",
        "_paused",
        "_waiter",
        "body_started",
        "eof",
        "raw_headers",
        "status",
    )

    def __init__(self, conn: UpstreamConnection) -> None:
        self._conn: UpstreamConnection | None = conn
        self.status = 0
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self._headers: dict[str, str] | None = None
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None
        self._on_data: OnData | None = None
        self._on_end: OnEnd | None = None
        self._error: UpstreamBodyError | None = None
        self.eof = False
        """True once the body was received to its end (a failure leaves it False)."""
        self.body_started = False
        """True once any byte of the response arrived (a reused connection that fails before
        that may be retried, see :mod:`.pool`)."""

    @property
    def headers(self) -> dict[str, str]:
        """The header fields by lower-case name (Latin-1 text); repeated fields joined with
        ``", "`` as RFC 9110 §5.3 allows. Look up with lower-case names."""
        headers = self._headers
        if headers is None:
            headers = {}
            for raw_name, raw_value in self.raw_headers:
                name = raw_name.decode("latin-1").lower()
                value = raw_value.decode("latin-1")
                headers[name] = f"{headers[name]}, {value}" if name in headers else value
            self._headers = headers
        return headers

    @property
    def closed(self) -> bool:
        """True once the response no longer holds its connection."""
        return self._conn is None

    @property
    def error(self) -> UpstreamBodyError | None:
        """Why the body could not be read to its end, once that happened."""
        return self._error

    def at_eof(self) -> bool:
        """True when the body was received to its end and every buffered byte was read."""
        return self.eof and not self._chunks

    # --- consuming the body -------------------------------------------------------------------

    def deliver(self, on_data: OnData, on_end: OnEnd) -> None:
        """Hand every body chunk to ``on_data`` as it arrives (called from the connection's
        ``data_received``; it must not raise), then call ``on_end`` once when the body ended or
        failed (:attr:`eof`, :attr:`error`). Chunks buffered before are delivered first."""
        chunks = self._chunks
        while chunks:
            on_data(chunks.popleft())
        self._buffered = 0
        self._on_data = on_data
        self._on_end = on_end
        if self.eof or self._error is not None:
            self._on_end = None
            on_end()
        elif self._paused:
            self.resume()

    def pause(self) -> None:
        """Stop reading from the provider (TCP then pushes back on it)."""
        if not self._paused:
            self._paused = True
            conn = self._conn
            if conn is not None:
                conn.pause_reading()

    def resume(self) -> None:
        """Read from the provider again."""
        if self._paused:
            self._paused = False
            conn = self._conn
            if conn is not None:
                conn.resume_reading()

    async def readany(self) -> bytes:
        """The body bytes received so far and not yet read (waits for some), ``b""`` at its end.

        Raises:
            UpstreamBodyError: the connection failed before the body's end.
        """
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self.eof:
                return b""
            self._waiter = waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self._waiter = None
        chunks = self._chunks
        data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._buffered = 0
        self.resume()
        return data

    def close(self) -> None:
        """Done with the response: a connection whose response was not read to its end is
        aborted (the provider sees the close; it is never reused)."""
        conn = self._conn
        if conn is None:
            return
        self._conn = None
        self._on_data = None
        self._on_end = None
        if not self.eof:
            conn.abort()

    # --- called by the connection -------------------------------------------------------------

    def _data(self, chunk: bytes) -> None:
        on_data = self._on_data
        if on_data is not None:
            on_data(chunk)
            return
        self._chunks.append(chunk)
        self._buffered += len(chunk)
        if self._buffered > BUFFER_HIGH_BYTES:
            self.pause()
        self._wake()

    def _end(self, error: UpstreamBodyError | None) -> None:
        if self.eof or self._error is not None:
            return
        if error is None:
            self.eof = True
        else:
            self._error = error
        # The connection may serve another request now: this response no longer steers it.
        self._conn = None
        self._paused = False
        on_end = self._on_end
        self._on_end = None
        self._on_data = None
        if on_end is not None:
            on_end()
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class UpstreamConnection(asyncio.Protocol):
    """An HTTP/1.1 client connection (one request at a time), made by :class:`.pool.UpstreamPool`.

    Lifecycle: connected → :meth:`send` → the response's headers (:attr:`headers_ready`) → its
    body → back to the pool (keep-alive, read to the end) or closed.
    """

    def __init__(self, pool: UpstreamPool, key: tuple[str, str, int, int]) -> None:
        self.pool = pool
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reused = False
        """True when the connection had served a request before the current one."""
        self.idle_since = 0.0
        """``time.monotonic()`` when it went back to the pool."""
        self.response: UpstreamResponse | None = None
        self.headers_ready: asyncio.Future[None] | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._head_only = False
        self._interim = False
        self._raw_headers: list[tuple[bytes, bytes]] = []

    # --- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        response = self.response
        if response is None:
            # Bytes on an idle connection (an answer to nothing): it cannot be trusted again.
            self.abort()
            return
        response.body_started = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail("the upstream switched protocols, which streamhop does not proxy")
        except httptools.HttpParserError as exc:
            self._fail(f"the upstream sent a malformed HTTP response ({exc})")
        except Exception as exc:  # a body consumer failed: a bug, not the provider's fault
            logger.exception("the consumer of an upstream body failed")
            self._fail(f"streamhop failed reading the upstream body ({type(exc).__name__})")

    def eof_received(self) -> bool | None:
        self._closed_by_peer(None)
        return None  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._closed_by_peer(exc)
        self.pool.forget(self)

    # --- httptools callbacks ------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self._raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200:
            # An interim answer (100 Continue, 103 Early Hints): the final one follows.
            self._interim = True
            self._raw_headers = []
            return
        response = self.response
        if response is None:
            return
        response.status = status
        response.raw_headers = self._raw_headers
        self._raw_headers = []
        ready = self.headers_ready
        if ready is not None and not ready.done():
            ready.set_result(None)
        if self._head_only:
            # llhttp cannot be told that a HEAD answer has no body: end it here, and never
            # reuse the connection (its parser may expect a body).
            self._head_only = False
            response._end(None)
            self.response = None
            self.abort()

    def on_body(self, body: bytes) -> None:
        response = self.response
        if response is not None:
            response._data(body)

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        response = self.response
        if response is None:
            return
        self.response = None
        self.headers_ready = None
        keep = self._parser.should_keep_alive() and not self.closed
        response._end(None)
        if keep:
            self.pool.release(self)
        else:
            self.abort()

    # --- used by the pool and the response ----------------------------------------------------

    def send(self, request: bytes, *, head_only: bool) -> UpstreamResponse:
        """Write one whole request (head and body); returns its response, whose headers are
        awaited on :attr:`headers_ready`."""
        transport = self.transport
        assert transport is not None and self.response is None
        self.response = response = UpstreamResponse(self)
        self.headers_ready = asyncio.get_running_loop().create_future()
        self._head_only = head_only
        self._interim = False
        self._raw_headers = []
        transport.resume_reading()
        transport.write(request)
        return response

    def pause_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def abort(self) -> None:
        """Close at once (no graceful TLS shutdown: the provider sees the close now)."""
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def _closed_by_peer(self, exc: Exception | None) -> None:
        response = self.response
        if response is None:
            return
        if response.status and not self._framed(response):
            # A body delimited by the connection's close (RFC 9112 §6.3, rule 8) ended.
            self.response = None
            response._end(None)
            return
        reason = f": {exc}" if exc is not None else ""
        if response.status:
            self._fail(f"the upstream closed the connection before the body's end{reason}", exc)
        else:
            self._fail(f"the upstream closed the connection before answering{reason}", exc)

    def _framed(self, response: UpstreamResponse) -> bool:
        """The response says where its body ends (``Content-Length`` or ``chunked``)."""
        headers = response.headers
        return "content-length" in headers or "chunked" in headers.get("transfer-encoding", "")

    def _fail(self, message: str, cause: BaseException | None = None) -> None:
        response = self.response
        self.response = None
        ready = self.headers_ready
        self.headers_ready = None
        error = UpstreamBodyError(message, cause)
        if ready is not None and not ready.done():
            ready.set_exception(error)
            ready.exception()  # retrieved: the pool re-raises it from the response
        if response is not None:
            response._end(error)
        self.abort()
