"""The load client of bench/peers.py: many HTTP/1.1 streams from one process, stamped per read.

The client must stay light next to what it measures (it shares two cores with the simulator and
the proxy), so it is a raw asyncio protocol with httptools (uvicorn's C parser, already a
dependency of the project) instead of an HTTP client library: one ``time.monotonic()`` per
socket read, one parser call, and on the de-chunked body a ``count`` of event terminators and
one regex scan for content deltas. No JSON is decoded.

Times are ``time.monotonic()`` seconds: on Linux one system-wide clock, the same the simulator
stamps its stream log with, so client and simulator times can be subtracted.

What counts:

* an *event* is an SSE event, ended by a blank line (``\\n\\n``; every target here writes LF);
* a *content event* is one whose OpenAI chat delta carries non-empty ``content`` — the role
  chunk (``"content":""``), the finish chunk and ``[DONE]`` are not;
* an exchange's *arrivals* are ``(read time, content events completed in that read)``, so a
  content event is received when its last byte is.

A *watched* exchange (``watch=True``, the ``streams sustained`` scenario) also keeps the longest
gap between two consecutive socket reads from the read that completed its first content event
to the end of the response, and the text of its content deltas: their JSON string bodies are
kept as they came and decoded once at the end of the response (one ``json.loads``), so a proxy
that merges deltas (coalesce) is checked on the text it delivered, not on its event count.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import ssl
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

import httptools

# `"content":"` followed by anything but the closing quote: a non-empty content delta. A quote
# inside a JSON string is escaped (`\"`), so text that mentions "content" cannot match.
CONTENT = re.compile(rb'"content": ?"(?!")')
# The same, capturing the escaped string body (possessive: no backtracking on a broken event).
CONTENT_TEXT = re.compile(rb'"content": ?"((?:[^"\\]++|\\.)++)"')


@dataclass(slots=True)
class Exchange:
    """One request and what came back.

    Attributes:
        rid: the ``x-request-id`` sent (the simulator logs streams under it when it arrives).
        sent: monotonic s when the request was written.
        status: HTTP status, 0 before the head arrived.
        first_content: monotonic s of the read that completed the first content event.
        done: monotonic s of the end of the response (message complete), else ``None``.
        closed_at: monotonic s when the client closed the connection on purpose (cancel).
        events: SSE events received.
        content_events: content events received.
        arrivals: ``(monotonic s, content events completed by that read)``, when recorded.
        error: why the exchange failed, or ``None``.
        max_gap: watched: longest time between two consecutive reads, s, from the read that
            completed the first content event to the end of the response.
        content_chars: watched: length of the content text received (code points), -1 before
            the end or when it did not decode.
        content_hash: watched: ``hash()`` of that text (compare within one process only).
    """

    rid: str
    sent: float = 0.0
    status: int = 0
    first_content: float | None = None
    done: float | None = None
    closed_at: float | None = None
    events: int = 0
    content_events: int = 0
    arrivals: list[tuple[float, int]] = field(default_factory=list)
    error: str | None = None
    max_gap: float = 0.0
    content_chars: int = -1
    content_hash: int = 0

    @property
    def ok(self) -> bool:
        """True when a 200 response ended cleanly."""
        return self.error is None and self.status == 200 and self.done is not None


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where and how to send a chat completion to one target.

    Attributes:
        host: loopback address.
        port: TCP port.
        path: request path.
        headers: extra header lines, each ``b"name: value\\r\\n"``.
        tls: client TLS context when the target speaks HTTPS (``direct`` to a TLS upstream).
    """

    host: str
    port: int
    path: str = "/v1/chat/completions"
    headers: bytes = b""
    tls: ssl.SSLContext | None = field(default=None, compare=False)

    def request(self, body: bytes, rid: str) -> bytes:
        """Return the raw HTTP/1.1 request for ``body`` (JSON) with request id ``rid``."""
        return (
            f"POST {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: application/json\r\nAccept: text/event-stream\r\n"
            f"Content-Length: {len(body)}\r\nx-request-id: {rid}\r\n".encode()
            + self.headers
            + b"\r\n"
            + body
        )


class Connection(asyncio.Protocol):
    """One keep-alive connection; runs one exchange at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self._ex: Exchange | None = None
        self._parser: httptools.HttpResponseParser | None = None
        self._pending = b""
        self._now = 0.0
        self._waiter: asyncio.Future[None] | None = None
        self._record = False
        self._cancel_after = 0
        self._watch = False
        self._spans: list[bytes] = []
        self._last_read = 0.0
        self.keep_alive = True

    # --- driving ----------------------------------------------------------------------------
    def start(
        self,
        ex: Exchange,
        request: bytes,
        *,
        record_arrivals: bool,
        cancel_after: int = 0,
        watch: bool = False,
    ) -> asyncio.Future[None]:
        """Write ``request``; the returned future resolves when ``ex`` is finished.

        ``watch``: keep ``ex.max_gap`` and the content text (see the module docstring).
        """
        assert self.transport is not None
        self._ex = ex
        self._parser = httptools.HttpResponseParser(self)
        self._pending = b""
        self._record = record_arrivals
        self._cancel_after = cancel_after
        self._watch = watch
        self._spans = []
        self._last_read = 0.0
        self._waiter = asyncio.get_running_loop().create_future()
        ex.sent = time.monotonic()
        self.transport.write(request)
        return self._waiter

    def _finish(self, error: str | None = None) -> None:
        ex, waiter = self._ex, self._waiter
        self._ex = self._waiter = None
        if ex is not None and error is not None and ex.error is None:
            ex.error = error
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # --- asyncio.Protocol ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self._parser is None:
            return  # bytes after a cancel, or a server speaking out of turn
        ex = self._ex
        self._now = now = time.monotonic()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._finish("unexpected upgrade")
        except httptools.HttpParserError as exc:
            self.keep_alive = False
            self._finish(f"HTTP parse error: {exc}")
        if self._watch and ex is not None and ex.first_content is not None:
            if self._last_read and now - self._last_read > ex.max_gap:
                ex.max_gap = now - self._last_read
            self._last_read = now

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.keep_alive = False
        if self._ex is not None and self._ex.closed_at is None:
            self._finish(f"connection lost: {exc or 'EOF before the end of the response'}")
        else:
            self._finish()

    # --- httptools callbacks --------------------------------------------------------------------
    def on_headers_complete(self) -> None:
        assert self._parser is not None and self._ex is not None
        self._ex.status = self._parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        ex = self._ex
        if ex is None:
            return
        buf = self._pending + body if self._pending else body
        cut = buf.rfind(b"\n\n")
        if cut < 0:
            self._pending = buf
            return
        complete = buf[: cut + 2]
        self._pending = buf[cut + 2 :]
        ex.events += complete.count(b"\n\n")
        if self._watch:
            spans = CONTENT_TEXT.findall(complete)
            self._spans += spans
            n = len(spans)
        else:
            n = len(CONTENT.findall(complete))
        if not n:
            return
        if ex.first_content is None:
            ex.first_content = self._now
        ex.content_events += n
        if self._record:
            ex.arrivals.append((self._now, n))
        if self._cancel_after and ex.content_events >= self._cancel_after:
            self._parser = None
            self.keep_alive = False
            ex.closed_at = time.monotonic()
            assert self.transport is not None
            self.transport.close()
            self._finish()

    def on_message_complete(self) -> None:
        ex = self._ex
        if ex is None or self._parser is None:
            return
        ex.done = self._now
        self.keep_alive = self._parser.should_keep_alive()
        if self._watch:
            # Each span is a whole JSON string body, so their concatenation is one too.
            with contextlib.suppress(ValueError):
                text = json.loads(b'"' + b"".join(self._spans) + b'"')
                ex.content_chars, ex.content_hash = len(text), hash(text)
            self._spans = []
        self._finish()


async def connect(endpoint: Endpoint) -> Connection:
    """Open one keep-alive :class:`Connection` to ``endpoint`` (TLS when it has a context)."""
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(
        Connection, endpoint.host, endpoint.port, ssl=endpoint.tls
    )
    return conn


async def run_load(
    endpoint: Endpoint,
    make_body: Callable[[], bytes],
    *,
    concurrency: int,
    duration_s: float,
    grace_s: float,
    record_arrivals: bool,
    watch: bool = False,
) -> list[Exchange]:
    """Keep ``concurrency`` requests in flight for ``duration_s``, then let them finish.

    Each worker holds one keep-alive connection and starts its next request when the last one
    ends; starts are staggered over the first second so that streams do not tick in lockstep.
    Exchanges still running ``grace_s`` after the deadline are aborted and count as errors.

    Args:
        endpoint: the target.
        make_body: returns the JSON request body.
        concurrency: workers.
        duration_s: seconds during which new requests start.
        grace_s: seconds after that for the last ones to finish.
        record_arrivals: keep per-read arrival stamps (for transit).
        watch: keep each exchange's longest read gap and its content text (module docstring).

    Returns:
        Every exchange started, finished or not.
    """
    exchanges: list[Exchange] = []
    deadline = time.monotonic() + duration_s
    stagger_s = min(1.0, duration_s / 2) / concurrency

    async def worker(i: int) -> None:
        await asyncio.sleep(i * stagger_s)
        conn: Connection | None = None
        try:
            while time.monotonic() < deadline:
                ex = Exchange(uuid.uuid4().hex)
                exchanges.append(ex)
                try:
                    if conn is None or conn.lost or not conn.keep_alive:
                        if conn is not None and conn.transport is not None:
                            conn.transport.close()
                        conn = await connect(endpoint)
                    await conn.start(
                        ex,
                        endpoint.request(make_body(), ex.rid),
                        record_arrivals=record_arrivals,
                        watch=watch,
                    )
                except OSError as exc:
                    ex.error = f"connect: {exc}"
                    await asyncio.sleep(0.05)
                if ex.error is not None and conn is not None:
                    conn.keep_alive = False
        finally:
            if conn is not None and conn.transport is not None:
                conn.transport.abort()

    tasks = [asyncio.ensure_future(worker(i)) for i in range(concurrency)]
    _, pending = await asyncio.wait(tasks, timeout=duration_s + grace_s)
    for task in pending:
        task.cancel()
    for task in pending:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    for ex in exchanges:
        if ex.done is None and ex.error is None:
            ex.error = "unfinished: still running at the end of the grace period"
    return exchanges


async def run_together(
    endpoint: Endpoint,
    make_body: Callable[[], bytes],
    *,
    streams: int,
    duration_s: float,
    burst_timeout_s: float,
    record_arrivals: bool,
    pause_s: float = 0.2,
) -> tuple[list[Exchange], list[float]]:
    """Bursts of ``streams`` requests written in one event-loop pass, until ``duration_s``.

    Before each burst every connection is open (reused keep-alive, or new) and idle for
    ``pause_s``; then every request, rendered beforehand, is written by one loop over the
    connections with no ``await`` in between, so they all leave within about a millisecond.
    The burst ends when every stream has ended or after ``burst_timeout_s`` (the rest are
    aborted and count as errors). A burst that starts before the deadline always runs to its
    end, so the last one can run past ``duration_s``.

    Returns:
        Every exchange, and per burst the spread of its writes (last ``sent`` - first), s.
    """
    exchanges: list[Exchange] = []
    spreads: list[float] = []
    conns: list[Connection | None] = [None] * streams
    deadline = time.monotonic() + duration_s
    try:
        while time.monotonic() < deadline:
            for i, conn in enumerate(conns):
                if conn is not None and (conn.lost or not conn.keep_alive):
                    if conn.transport is not None:
                        conn.transport.abort()
                    conns[i] = None
            fresh = [i for i, conn in enumerate(conns) if conn is None]
            opened = await asyncio.gather(
                *(connect(endpoint) for _ in fresh), return_exceptions=True
            )
            for i, new in zip(fresh, opened, strict=True):
                if isinstance(new, BaseException):
                    ex = Exchange(uuid.uuid4().hex, error=f"connect: {new}")
                    exchanges.append(ex)
                else:
                    conns[i] = new
            await asyncio.sleep(pause_s)  # accepted by the target and idle
            ready = [c for c in conns if c is not None and not c.lost]
            batch = [Exchange(uuid.uuid4().hex) for _ in ready]
            requests = [endpoint.request(make_body(), ex.rid) for ex in batch]
            waiters = [
                conn.start(ex, request, record_arrivals=record_arrivals)
                for conn, ex, request in zip(ready, batch, requests, strict=True)
            ]
            exchanges += batch
            if batch:
                spreads.append(batch[-1].sent - batch[0].sent)
            _, late = await asyncio.wait(waiters, timeout=burst_timeout_s)
            if late:
                for conn, ex in zip(ready, batch, strict=True):
                    if ex.done is None and ex.error is None:
                        ex.error = "unfinished: still running at the end of the burst timeout"
                        conn.keep_alive = False
                        if conn.transport is not None:
                            conn.transport.abort()
    finally:
        for conn in conns:
            if conn is not None and conn.transport is not None:
                conn.transport.abort()
    return exchanges, spreads


async def cancel_once(endpoint: Endpoint, body: bytes, after_content: int) -> Exchange:
    """Open a stream on a new connection and close it after ``after_content`` content events.

    Returns:
        The exchange; ``closed_at`` is when the client closed (``None`` if it never got that far).
    """
    ex = Exchange(uuid.uuid4().hex)
    try:
        conn = await connect(endpoint)
    except OSError as exc:
        ex.error = f"connect: {exc}"
        return ex
    try:
        await asyncio.wait_for(
            conn.start(
                ex,
                endpoint.request(body, ex.rid),
                record_arrivals=False,
                cancel_after=after_content,
            ),
            timeout=30,
        )
    except TimeoutError:
        ex.error = "no content within 30 s"
    finally:
        if conn.transport is not None and not conn.transport.is_closing():
            conn.transport.abort()
    return ex
