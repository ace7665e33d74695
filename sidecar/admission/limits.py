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
  This ends slowloris connections, which otherwise stay open holding a socket each.
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

_REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


def limited_httptools_protocol(limits: HeadLimits) -> type[HttpToolsProtocol]:
    """A uvicorn HTTP protocol class (pass it as ``uvicorn.Config(http=...)``) with ``limits``."""

    class LimitedHttpToolsProtocol(HttpToolsProtocol):
        """uvicorn's httptools protocol with :class:`HeadLimits` on every request head."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._head_bytes = 0
            self._head_fields = 0
            self._head_size = 0
            self._in_head = True
            self._head_timer: asyncio.TimerHandle | None = None
            self._over_limit = False
            self._discarding = False
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
                if self._head_timer is None:
                    self._arm()
            super().data_received(data)

        def send_400_response(self, msg: str) -> None:
            if self._over_limit:
                self._refuse(431, "request head over max_headers or max_header_bytes")
                return
            super().send_400_response(msg)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._in_head = True
            self._head_fields = 0
            self._head_size = 0

        def on_url(self, url: bytes) -> None:
            self._head_size += len(url)
            if self._head_size > limits.max_header_bytes:
                self._over_limit = True
                raise _HeadLimitExceeded
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._head_fields += 1
            self._head_size += len(name) + len(value) + 4
            if self._head_fields > limits.max_headers or self._head_size > limits.max_header_bytes:
                self._over_limit = True
                raise _HeadLimitExceeded
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            self._in_head = False
            self._head_bytes = 0
            self._disarm()
            super().on_headers_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            # The next request's head is timed from its first byte (idle time between requests
            # is uvicorn's timeout_keep_alive).
            self._in_head = True
            self._head_bytes = 0

        def _arm(self) -> None:
            self._disarm()
            self._head_timer = self.loop.call_later(limits.header_timeout_s, self._head_timeout)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timeout(self) -> None:
            self._head_timer = None
            if not self._in_head or self.transport.is_closing():
                return
            if self._head_bytes == 0 and self.cycle is None:
                self.transport.close()  # never sent a byte: nothing to answer
                return
            self._refuse(408, "request head not received within header_timeout_s")

        def _refuse(self, status: int, message: str) -> None:
            if self.transport.is_closing():
                return
            body = message.encode("ascii")
            self.transport.write(
                b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\n"
                b"content-length: %d\r\nconnection: close\r\n\r\n%s"
                % (status, _REASONS[status], len(body), body)
            )
            self._in_head = False
            self._disarm()
            # Lingering close (as nginx's lingering_close): closing with unread bytes in the
            # receive buffer would reset the connection and could destroy the answer before
            # the client reads it. Half-close, drop what still comes, close at EOF or later.
            self._discarding = True
            if self.transport.can_write_eof():
                self.transport.write_eof()
            self._linger = self.loop.call_later(LINGER_S, self.transport.close)

    return LimitedHttpToolsProtocol
