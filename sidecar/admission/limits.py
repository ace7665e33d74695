"""Request-head limits uvicorn does not have: header bytes, header count, header-read time.

uvicorn's own limits are used where it has them (``ws_max_size`` for WebSocket frames,
``timeout_keep_alive`` for idle connections between requests, ``h11_max_incomplete_event_size``
only for its h11 parser); its httptools parser, the fast one streamhop runs, buffers a request
head without bound and waits for it forever. :func:`limited_httptools_protocol` makes a subclass
of uvicorn's ``HttpToolsProtocol`` that adds, per request head:

* ``max_header_bytes``: bytes received before the head is complete; past it the client gets
  ``431 Request Header Fields Too Large`` (RFC 6585 §5) and the connection is closed. The check
  runs per read, so at most one read (≤ 256 KiB) more than the limit is ever buffered;
* ``max_headers``: header fields; one more gets ``431``;
* ``header_timeout_s``: seconds from the connection's start (or the end of the previous response
  on a kept-alive connection, once a byte of the next request arrived) to a complete head; past
  it the client gets ``408 Request Timeout`` (a connection that sent nothing is just closed).
  This ends slowloris connections, which otherwise stay open holding a socket each. A head
  pipelined behind a response still being written (an SSE stream) is timed from the end of that
  response.

Two things uvicorn's protocol does that a proxy holding keys must not:

* **A second response inside a live one.** A refusal (``408``, ``431``, uvicorn's ``400`` for
  an unparsable head) of a pipelined request while an earlier response is being written would
  land in the middle of its chunked body. It is written once the responses before it are
  complete (RFC 9112 §9.3.2: responses in request order), then the connection is closed; the
  client's further bytes are dropped meanwhile.
* **Trailers as headers.** uvicorn appends every header field the parser reports to the
  request's ``scope["headers"]``, including the trailer fields of a chunked body (RFC 9112
  §7.1.2), which arrive after the app has the scope: a trailer ``Authorization`` would reach
  the upstream. Trailers are dropped. httptools buffers a trailer field whole, outside the body
  limit, so a trailer section is bounded by ``max_header_bytes`` like a head: past it the
  request gets ``431`` (its connection is just closed if its response has begun).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


@dataclass(frozen=True, slots=True)
class HeadLimits:
    """Bounds of one request head (see the module docstring)."""

    max_header_bytes: int
    max_headers: int
    header_timeout_s: float


class _HeadLimitExceeded(Exception):
    """Raised from a parser callback to stop parsing; answered with 431."""


LINGER_S = 2.0
"""Seconds a refused connection is kept half-closed, dropping input, before it is closed."""

_REASONS = {400: b"Bad Request", 408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


def limited_httptools_protocol(limits: HeadLimits) -> type[HttpToolsProtocol]:
    """A uvicorn HTTP protocol class (pass it as ``uvicorn.Config(http=...)``) with ``limits``."""

    class LimitedHttpToolsProtocol(HttpToolsProtocol):
        """uvicorn's httptools protocol with :class:`HeadLimits` on every request head."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._head_bytes = 0
            self._head_fields = 0
            self._head_size = 0
            # Bytes received now count toward a head and are timed: from the start, and from
            # the end of each request (or of a response that ended before its request did).
            self._in_head = True
            self._head_started = False  # the parser is inside a head (message begun)
            self._in_body = False  # between a head's end and its message's end
            # Bytes received since a chunk header without chunk data: the trailer section.
            self._trailer_bytes: int | None = None
            self._head_timer: asyncio.TimerHandle | None = None
            self._over_limit = False
            self._discarding = False
            self._deferred: tuple[int, str] | None = None  # a refusal due after the response
            self._linger: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            if self._linger is not None:
                self._linger.cancel()
            super().connection_lost(exc)

        def eof_received(self) -> None:
            if self._discarding:
                if self._deferred is None:  # else closed after the response and the refusal
                    self.transport.close()
                return
            super().eof_received()

        def data_received(self, data: bytes) -> None:
            if self._discarding:
                return  # lingering close: read and drop what the refused client still sends
            if self._in_head:
                if self._head_bytes > limits.max_header_bytes:
                    self._refuse(431, "request head is over max_header_bytes")
                    return
                self._head_bytes += len(data)
                if self._head_timer is None and not self._answering():
                    self._arm()
            elif self._trailer_bytes is not None:
                if self._trailer_bytes > limits.max_header_bytes:
                    self._trailers_too_large()
                    return
                self._trailer_bytes += len(data)
            super().data_received(data)

        def send_400_response(self, msg: str) -> None:
            if self._over_limit:
                self._refuse(431, "request head over max_headers or max_header_bytes")
                return
            if self._answering():
                if not self._in_body:
                    self._refuse(400, msg)  # a pipelined head: answered after the response
                    return
                if self.cycle.response_started or self.pipeline:
                    self.transport.close()  # in a body whose (or an earlier) answer is written
                    return
            super().send_400_response(msg)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._in_head = True
            self._head_started = True
            self._head_fields = 0
            self._head_size = 0

        def on_url(self, url: bytes) -> None:
            self._head_size += len(url)
            if self._head_size > limits.max_header_bytes:
                self._over_limit = True
                raise _HeadLimitExceeded
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            if self._in_body:
                return  # a trailer field: never one of the request's headers
            self._head_fields += 1
            self._head_size += len(name) + len(value) + 4
            if self._head_fields > limits.max_headers or self._head_size > limits.max_header_bytes:
                self._over_limit = True
                raise _HeadLimitExceeded
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            self._in_head = False
            self._head_started = False
            self._in_body = True
            self._head_bytes = 0
            self._disarm()
            super().on_headers_complete()

        def on_chunk_header(self) -> None:
            self._trailer_bytes = 0  # reset by the chunk's data; none comes after the last one

        def on_body(self, body: bytes) -> None:
            self._trailer_bytes = None
            super().on_body(body)

        def on_chunk_complete(self) -> None:
            self._trailer_bytes = None

        def on_message_complete(self) -> None:
            self._in_body = False
            self._trailer_bytes = None
            # The next request's head is timed from its first byte (idle time between requests
            # is uvicorn's timeout_keep_alive).
            self._in_head = True
            self._head_bytes = 0
            super().on_message_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if self.transport.is_closing() or self._answering():
                return  # a pipelined response runs: this is called again at its end
            if self._deferred is not None:
                status, message = self._deferred
                self._deferred = None
                self._write_refusal(status, message)
                return
            if not self._in_head:
                # The response ended before its request's body did (a 413): what the client
                # still sends is bounded and timed as a head is.
                self._in_head = True
                self._head_bytes = 0
            elif self._head_started and self._head_timer is None:
                # A head pipelined behind the response: timed from the response's end.
                self._unset_keepalive_if_required()
                self._arm()

        def _answering(self) -> bool:
            """A response is being written, or is due, before anything else may be written."""
            cycle = self.cycle
            return cycle is not None and not cycle.response_complete and not cycle.disconnected

        def _arm(self) -> None:
            self._disarm()
            self._head_timer = self.loop.call_later(limits.header_timeout_s, self._head_timeout)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timeout(self) -> None:
            self._head_timer = None
            if not self._in_head or self.transport.is_closing() or self._answering():
                return  # (armed again when the response is complete)
            if self._head_bytes == 0 and self.cycle is None:
                self.transport.close()  # never sent a byte: nothing to answer
                return
            self._refuse(408, "request head not received within header_timeout_s")

        def _trailers_too_large(self) -> None:
            cycle = self.cycle
            if cycle.response_started or self.pipeline:
                self.transport.close()  # its answer (or an earlier one) is being written
                return
            # The app waits for the rest of the body: it sees a disconnect, and writes nothing.
            cycle.disconnected = True
            cycle.message_event.set()
            self._refuse(431, "request trailer section is over max_header_bytes")

        def _refuse(self, status: int, message: str) -> None:
            if self.transport.is_closing():
                return
            self._in_head = False
            self._disarm()
            self._discarding = True
            if self._answering():
                # A pipelined request, refused while an earlier response is being written (an
                # SSE stream): its answer follows that response, never inside it.
                self._deferred = (status, message)
                return
            self._write_refusal(status, message)

        def _write_refusal(self, status: int, message: str) -> None:
            body = message.encode("ascii")
            self.transport.write(
                b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\n"
                b"content-length: %d\r\nconnection: close\r\n\r\n%s"
                % (status, _REASONS[status], len(body), body)
            )
            # Lingering close (as nginx's lingering_close): closing with unread bytes in the
            # receive buffer would reset the connection and could destroy the answer before
            # the client reads it. Half-close, drop what still comes, close at EOF or later.
            if self.transport.can_write_eof():
                self.transport.write_eof()
            self._linger = self.loop.call_later(LINGER_S, self.transport.close)

    return LimitedHttpToolsProtocol
