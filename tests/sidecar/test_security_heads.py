"""Ambiguous request heads are refused, and a refusal never lands inside another response.

Against a real ``streamhop serve`` on loopback, with raw sockets (a client library would not
send these heads):

* ``Host`` (RFC 9112 §3.2): an HTTP/1.1 request without one, with two, or with a value that is
  not a host name or ``[IPv6]`` literal with an optional ``:port`` gets ``400 bad_host`` on the
  proxy port, the admin port and the WebSocket handshake: a guard that reads one spelling while
  something else reads another is a DNS-rebinding bypass.
* Two ``Origin`` or two ``Sec-Fetch-Site`` fields get ``403``, whatever their order.
* A refusal for a pipelined request (a head cut short, too big, or invalid) is written after
  the response in progress, never into its chunked body.
* Trailer fields of a chunked request body never reach the upstream as headers, and a trailer
  section is bounded like a head.

docs/security.md ("DNS rebinding: Host", "Browsers", "Bounded inputs").
"""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Iterator

import orjson
import pytest
from aiohttp import web

from tests.sidecar.upstreams import chat_chunk, until_closed
from tests.support import (
    BackgroundAiohttp,
    StreamhopProcess,
    raw_connect,
    read_to_eof,
    serve,
    url_address,
)

KEY = "sk-secret-route-key"
ALLOWED = "https://app.example.com"
READ_BOUND_S = 10.0
"""Seconds one socket read may block; every answer here comes within ~3 s."""
HEADER_TIMEOUT_S = 0.5
READ_TIMEOUT_S = 2.0
"""The SSE route's read_timeout_s: how long the stream a pipelined head waits behind lasts."""
MAX_HEADER_BYTES = 16384


class Recorder:
    """Header lists (raw bytes) of the requests the upstream saw."""

    def __init__(self) -> None:
        self.seen: list[list[tuple[bytes, bytes]]] = []


@pytest.fixture(scope="module")
def provider() -> Iterator[tuple[BackgroundAiohttp, Recorder]]:
    rec = Recorder()

    async def handle(request: web.Request) -> web.StreamResponse:
        await request.read()
        rec.seen.append(list(request.raw_headers))
        if "/sse/" not in request.path:
            return web.json_response({"ok": True})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(chat_chunk("hello"))
        await until_closed(request)
        return resp

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    with BackgroundAiohttp(app) as server:
        yield server, rec


@pytest.fixture(scope="module")
def side(
    provider: tuple[BackgroundAiohttp, Recorder], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[StreamhopProcess]:
    url = provider[0].url
    config = f"""
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
drain_timeout_s = 1
allowed_origins = ["{ALLOWED}"]
max_header_bytes = {MAX_HEADER_BYTES}
max_headers = 40
header_timeout_s = {HEADER_TIMEOUT_S}

[[routes]]
prefix = "/x"
upstream = "{url}"
[routes.headers]
Authorization = "Bearer {KEY}"

[[routes]]
prefix = "/slow"
upstream = "{url}"
read_timeout_s = {READ_TIMEOUT_S}
keepalive_interval_s = 0.2
"""
    proc = serve(tmp_path_factory.mktemp("heads"), config)
    yield proc
    proc.stop()


def _raw(url: str | None, request: bytes) -> bytes:
    """Send ``request`` (ending with ``Connection: close``), return the answer up to the close."""
    with raw_connect(url, READ_BOUND_S) as sock:
        sock.sendall(request)
        return read_to_eof(sock)


def _head(*lines: str, version: str = "1.1", path: str = "/x/v1/models") -> bytes:
    """A GET head with exactly ``lines`` as its header fields (no Host unless given)."""
    text = "\r\n".join([f"GET {path} HTTP/{version}", *lines, "Connection: close"])
    return (text + "\r\n\r\n").encode("latin-1")


def _status(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1.1 "), answer[:200]
    return int(answer.split(b" ", 2)[1])


# --- 1. Host -----------------------------------------------------------------------------------


def test_http11_request_without_host_gets_400_http10_passes(
    side: StreamhopProcess, provider: tuple[BackgroundAiohttp, Recorder]
) -> None:
    before = len(provider[1].seen)
    answer = _raw(side.url, _head())
    assert _status(answer) == 400, answer
    assert b"bad_host" in answer
    assert len(provider[1].seen) == before
    # HTTP/1.0 has no Host requirement (and a browser always sends one).
    assert _status(_raw(side.url, _head(version="1.0"))) == 200


def _malformed_hosts(port: int) -> list[str]:
    return [
        f"127.0.0.1:{port}@rebind.evil.example",  # a userinfo-like tail: "127.0.0.1" read first
        "[::1]rebind.evil.example",  # text after the IPv6 literal
        f"[::1]:{port}x",
        "127.0.0.1 rebind.evil.example",
        f"localhost:{port}:{port}",
        "localhost:",
        "[127.0.0.1]",  # brackets hold IPv6 only
        "::1",  # an IPv6 address must be bracketed: is ::1:8787 a port or a hextet?
        "",
    ]


@pytest.mark.parametrize("case", range(9))
def test_malformed_host_gets_400(
    side: StreamhopProcess, provider: tuple[BackgroundAiohttp, Recorder], case: int
) -> None:
    host = _malformed_hosts(url_address(side.url)[1])[case]
    before = len(provider[1].seen)
    answer = _raw(side.url, _head(f"Host: {host}"))
    assert _status(answer) == 400, (host, answer)
    assert b"bad_host" in answer
    assert len(provider[1].seen) == before


@pytest.mark.parametrize("order", ["allowed_first", "foreign_first"])
def test_two_host_fields_get_400(side: StreamhopProcess, order: str) -> None:
    hosts = ["Host: 127.0.0.1", "Host: rebind.evil.example"]
    if order == "foreign_first":
        hosts.reverse()
    answer = _raw(side.url, _head(*hosts))
    assert _status(answer) == 400, answer
    assert b"bad_host" in answer


def test_valid_hosts_still_pass_and_foreign_still_421(side: StreamhopProcess) -> None:
    port = url_address(side.url)[1]
    for host in (f"127.0.0.1:{port}", "127.0.0.1", f"localhost:{port}", f"[::1]:{port}", "[::1]"):
        assert _status(_raw(side.url, _head(f"Host: {host}"))) == 200, host
    assert _status(_raw(side.url, _head(f"Host: rebind.evil.example:{port}"))) == 421


def test_admin_listener_refuses_ambiguous_hosts_with_400(side: StreamhopProcess) -> None:
    port = url_address(side.admin_url)[1]
    for lines in (
        (),
        ("Host: 127.0.0.1", "Host: rebind.evil.example"),
        (f"Host: 127.0.0.1:{port}@rebind.evil.example",),
        ("Host: [::1]rebind.evil.example",),
    ):
        answer = _raw(side.admin_url, _head(*lines, path="/metrics"))
        assert _status(answer) == 400, (lines, answer)
    assert _status(_raw(side.admin_url, _head(f"Host: 127.0.0.1:{port}", path="/metrics"))) == 200
    assert _status(_raw(side.admin_url, _head("Host: 10.1.2.3", path="/healthz"))) == 200


# --- 2. Origin and Sec-Fetch-Site ------------------------------------------------------------


@pytest.mark.parametrize(
    "lines",
    [
        (f"Origin: {ALLOWED}", "Origin: https://evil.example"),
        ("Origin: https://evil.example", f"Origin: {ALLOWED}"),
        ("Sec-Fetch-Site: cross-site", "Sec-Fetch-Site: same-origin"),
        ("Sec-Fetch-Site: same-origin", "Sec-Fetch-Site: cross-site"),
    ],
)
def test_two_origin_or_fetch_site_fields_get_403(
    side: StreamhopProcess, provider: tuple[BackgroundAiohttp, Recorder], lines: tuple[str, str]
) -> None:
    before = len(provider[1].seen)
    answer = _raw(side.url, _head("Host: 127.0.0.1", *lines))
    assert _status(answer) == 403, answer
    assert len(provider[1].seen) == before
    # One of each is answered as before.
    assert _status(_raw(side.url, _head("Host: 127.0.0.1", f"Origin: {ALLOWED}"))) == 200


# --- 3. the WebSocket handshake has the same checks -------------------------------------------


def _handshake(*lines: str) -> bytes:
    text = "\r\n".join(
        [
            "GET /x/v1/chat/completions HTTP/1.1",
            *lines,
            "Upgrade: websocket",
            "Connection: Upgrade",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Version: 13",
        ]
    )
    return (text + "\r\n\r\n").encode("latin-1")


def _handshake_status(side: StreamhopProcess, *lines: str) -> int:
    with raw_connect(side.url, READ_BOUND_S) as sock:
        sock.sendall(_handshake(*lines))
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    return _status(answer)


def test_websocket_handshake_refuses_ambiguous_heads(side: StreamhopProcess) -> None:
    port = url_address(side.url)[1]
    assert _handshake_status(side, f"Host: 127.0.0.1:{port}") == 101
    for lines in (
        (),
        ("Host: 127.0.0.1", "Host: rebind.evil.example"),
        (f"Host: 127.0.0.1:{port}@rebind.evil.example",),
        ("Host: [::1]rebind.evil.example",),
        ("Host: 127.0.0.1", "Origin: https://evil.example", f"Origin: {ALLOWED}"),
        ("Host: 127.0.0.1", "Sec-Fetch-Site: same-origin", "Sec-Fetch-Site: cross-site"),
    ):
        assert _handshake_status(side, *lines) in (400, 403), lines


# --- 4. no response inside another ------------------------------------------------------------


class _Reader:
    """Reads one HTTP/1.1 response with a chunked body from a socket, strictly."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        assert chunk, f"closed inside a response; read so far: {self.buf[-300:]!r}"
        self.buf += chunk

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            self._fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def exact(self, size: int) -> bytes:
        while len(self.buf) < size:
            self._fill()
        data, self.buf = self.buf[:size], self.buf[size:]
        return data

    def head(self) -> bytes:
        lines = []
        while line := self.line():
            lines.append(line)
        return b"\r\n".join(lines)

    def chunk(self) -> bytes:
        """One chunk's data (``b""`` for the last chunk)."""
        size_line = self.line()
        assert size_line and all(c in b"0123456789abcdefABCDEF" for c in size_line), (
            f"not a chunk size inside the response body: {size_line[:200]!r}"
        )
        data = self.exact(int(size_line, 16))
        assert self.exact(2) == b"\r\n"
        return data


_PIPELINED = {
    # A head that stops: the 408 timer must not fire while the SSE response is written.
    408: [b"GET /x/v1/models HTTP/1.1\r\n", b"Host: 127.0.0.1\r\nX-Slow: a"],
    # A field over max_header_bytes (complete once the next field starts): 431.
    431: [b"GET /x/v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 20000 + b"\r\nX: 1"],
    # Not HTTP: uvicorn's own 400.
    400: [b"NOT HTTP AT ALL\r\n\r\n"],
}


@pytest.mark.parametrize("status", sorted(_PIPELINED))
def test_refusal_of_a_pipelined_head_waits_for_the_response_in_progress(
    side: StreamhopProcess, status: int
) -> None:
    """The SSE response of the first request runs READ_TIMEOUT_S (keep-alives every 0.2 s,
    then ``upstream_timeout``), well past header_timeout_s; the second request's refusal comes
    after its last chunk, and then the connection closes."""
    body = b"{}"
    first = (
        b"POST /slow/sse/hang HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    with raw_connect(side.url, READ_BOUND_S) as sock:
        sock.sendall(first)
        reader = _Reader(sock)
        head = reader.head()
        assert head.startswith(b"HTTP/1.1 200"), head
        assert b"transfer-encoding: chunked" in head.lower()
        started = time.monotonic()
        events = [reader.chunk()]
        for piece in _PIPELINED[status]:
            # Each piece in its own read: wait for the next chunk of the stream before sending.
            sock.sendall(piece)
            events.append(reader.chunk())
        while data := reader.chunk():
            events.append(data)
        elapsed = time.monotonic() - started
        rest = reader.buf + read_to_eof(sock)
    stream = b"".join(events)
    assert b"HTTP/1.1" not in stream
    assert b"upstream_timeout" in stream  # the stream ran to its own end
    assert elapsed > HEADER_TIMEOUT_S  # long enough for the head timer to have fired
    assert _status(rest) == status, rest[:200]
    assert b"connection: close" in rest.lower()


# --- 5. trailers --------------------------------------------------------------------------------


def test_request_trailers_do_not_reach_the_upstream_as_headers(
    side: StreamhopProcess, provider: tuple[BackgroundAiohttp, Recorder]
) -> None:
    before = len(provider[1].seen)
    answer = _raw(
        side.url,
        b"POST /x/v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n"
        b"\r\n2\r\n{}\r\n0\r\nX-Evil: 1\r\nAuthorization: Bearer evil\r\n\r\n",
    )
    assert _status(answer) == 200, answer
    assert orjson.loads(answer.partition(b"\r\n\r\n")[2]) == {"ok": True}
    (seen,) = provider[1].seen[before:]
    names = [name.lower() for name, _ in seen]
    assert b"x-evil" not in names
    assert [v for n, v in seen if n.lower() == b"authorization"] == [f"Bearer {KEY}".encode()]


def test_a_trailer_section_is_bounded_like_a_head(
    side: StreamhopProcess, provider: tuple[BackgroundAiohttp, Recorder]
) -> None:
    """An endless trailer value is buffered by the parser, outside the body limit: it gets 431
    once more than max_header_bytes of it came, and the upstream is not called."""
    before = len(provider[1].seen)
    total = 8 * 1024 * 1024
    piece = b"a" * 65536
    sent = 0
    with raw_connect(side.url, READ_BOUND_S) as sock:
        sock.sendall(
            b"POST /x/v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\nX-Big: "
        )
        while sent < total:
            try:
                sock.sendall(piece)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(piece)
            if select.select([sock], [], [], 0)[0]:
                break
        assert sent < total, "the sidecar read an 8 MiB trailer without answering"
        answer = read_to_eof(sock)
    assert _status(answer) == 431, answer[:200]
    assert len(provider[1].seen) == before
