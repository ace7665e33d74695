"""Spike relay (b): raw asyncio Protocols on uvloop, httptools (llhttp) on both sides.

The shape the sidecar's hot path would take (uvicorn's ``httptools_impl`` is the model):

* :class:`Downstream` is the server protocol: ``data_received`` feeds an
  ``httptools.HttpRequestParser``; on message complete it renders the upstream request (method,
  path, the client's headers minus hop-by-hop, ``host``, ``content-length``) as one ``bytes`` and
  hands it to the pool;
* :class:`Pool` keeps idle keep-alive upstream connections (LIFO); a miss opens one through the
  loop (the only place a task is made, once per new connection, not per request or packet);
* :class:`Upstream` is the client protocol: its ``data_received`` feeds an
  ``httptools.HttpResponseParser`` whose ``on_body`` writes straight to the client transport,
  with our own chunked framing (``content-length`` bodies are relayed as they are);
* flow control is the transports' own: the client transport over its high-water mark calls
  ``Downstream.pause_writing``, which pauses reading the upstream; ``resume_writing`` resumes;
* a client that disconnects mid-answer closes its upstream connection (the upstream sees the
  cancel); an upstream that breaks mid-answer closes the client connection.

Deliberately missing (a spike, not the sidecar): TLS, pipelining (a second request on a busy
connection is answered 400), request-body streaming (bodies are buffered, bounded at 1 MiB),
timeouts, retries, limits beyond the header sizes llhttp enforces.
"""

from __future__ import annotations

import asyncio
from typing import cast

import httptools
import uvloop

from bench.spike.common import HOP_BY_HOP, parse_args

MAX_BODY = 1 << 20
HIGH_WATER = 64 * 1024
BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
BAD_GATEWAY = b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
REASONS = {200: b"OK", 400: b"Bad Request", 404: b"Not Found", 500: b"Internal Server Error"}
HOP = frozenset(h.encode() for h in HOP_BY_HOP)


class Pool:
    """Idle keep-alive connections to the one upstream."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.idle: list[Upstream] = []
        self.host_line = f"host: {host}:{port}\r\n".encode()

    def acquire(self, client: Downstream, request: bytes) -> None:
        """Send ``request`` for ``client`` on an idle connection, or on a new one."""
        while self.idle:
            up = self.idle.pop()
            if not up.closed:
                up.start(client, request)
                return
        loop = asyncio.get_running_loop()
        task = loop.create_task(
            loop.create_connection(lambda: Upstream(self), self.host, self.port)
        )
        task.add_done_callback(lambda t: self._connected(t, client, request))

    def _connected(
        self, task: asyncio.Task[tuple[object, object]], client: Downstream, request: bytes
    ) -> None:
        if task.cancelled() or task.exception() is not None:
            client.fail(BAD_GATEWAY)
            return
        up = cast(Upstream, task.result()[1])
        if client.closed:
            self.release(up)
        else:
            up.start(client, request)

    def release(self, up: Upstream) -> None:
        self.idle.append(up)


class Upstream(asyncio.Protocol):
    """One keep-alive connection to the upstream; relays one response at a time."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.client: Downstream | None = None
        self.closed = False
        self.chunked = True
        self.content_type = b""
        self.length: bytes | None = None

    def start(self, client: Downstream, request: bytes) -> None:
        assert self.transport is not None
        self.client = client
        client.upstream = self
        self.content_type = b""
        self.length = None
        self.transport.write(request)

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._broken()

    def eof_received(self) -> bool | None:
        return None  # close; a response framed by EOF is not relayed by this spike

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.client is not None:
            client, self.client = self.client, None
            client.upstream = None
            client.abort()

    def pause_writing(self) -> None:
        if self.client is not None:
            self.client.pause_reading()

    def resume_writing(self) -> None:
        if self.client is not None:
            self.client.resume_reading()

    def _broken(self) -> None:
        self.closed = True
        assert self.transport is not None
        self.transport.abort()

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        lower = name.lower()
        if lower == b"content-type":
            self.content_type = value
        elif lower == b"content-length":
            self.length = value

    def on_headers_complete(self) -> None:
        client = self.client
        if client is None:
            return
        status = self.parser.get_status_code()
        self.chunked = self.length is None
        framing = (
            b"transfer-encoding: chunked\r\n"
            if self.chunked
            else b"content-length: " + cast(bytes, self.length) + b"\r\n"
        )
        client.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\n%s\r\n"
            % (status, REASONS.get(status, b"Status"), self.content_type, framing)
        )

    def on_body(self, body: bytes) -> None:
        client = self.client
        if client is None:
            return
        if self.chunked:
            client.write(b"%x\r\n%s\r\n" % (len(body), body))
        else:
            client.write(body)

    def on_message_complete(self) -> None:
        client, self.client = self.client, None
        keep = self.parser.should_keep_alive()
        if client is not None:
            if self.chunked:
                client.write(b"0\r\n\r\n")
            client.exchange_done()
        if keep and not self.closed:
            self.pool.release(self)
        else:
            self.closed = True
            assert self.transport is not None
            self.transport.close()


class Downstream(asyncio.Protocol):
    """One client connection; parses requests and hands them to the pool."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.upstream: Upstream | None = None
        self.closed = False
        self.busy = False
        self.url = b""
        self.head: list[bytes] = []
        self.body: list[bytes] = []
        self.body_size = 0
        self.keep_alive = True

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(high=HIGH_WATER)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.fail(BAD_REQUEST)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        up, self.upstream = self.upstream, None
        if up is not None:
            # Mid-answer: the upstream connection cannot be reused; closing it is the cancel.
            up.client = None
            up.closed = True
            if up.transport is not None:
                up.transport.close()

    def pause_writing(self) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.resume_reading()

    # used by Upstream
    def write(self, data: bytes) -> None:
        if not self.closed:
            assert self.transport is not None
            self.transport.write(data)

    def pause_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def exchange_done(self) -> None:
        self.upstream = None
        self.busy = False
        if not self.keep_alive and self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def fail(self, response: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(response)
            self.transport.close()
        self.closed = True

    # httptools callbacks
    def on_message_begin(self) -> None:
        if self.busy:
            raise httptools.HttpParserError("pipelined request on a busy connection")
        self.url = b""
        self.head = []
        self.body = []
        self.body_size = 0

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() not in HOP:
            self.head.append(b"%s: %s\r\n" % (name, value))

    def on_body(self, body: bytes) -> None:
        self.body_size += len(body)
        if self.body_size > MAX_BODY:
            raise httptools.HttpParserError("request body over 1 MiB")
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.busy = True
        self.keep_alive = self.parser.should_keep_alive()
        body = b"".join(self.body)
        request = b"".join(
            [
                self.parser.get_method(),
                b" ",
                self.url,
                b" HTTP/1.1\r\n",
                self.pool.host_line,
                *self.head,
                b"content-length: %d\r\n\r\n" % len(body),
                body,
            ]
        )
        self.pool.acquire(self, request)


async def serve(port: int, upstream_host: str, upstream_port: int) -> None:
    pool = Pool(upstream_host, upstream_port)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Downstream(pool), "127.0.0.1", port, backlog=2048)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    args = parse_args(__doc__.split("\n")[0])
    uvloop.run(serve(args.port, args.upstream_host, args.upstream_port))
