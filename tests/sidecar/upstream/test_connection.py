"""The upstream HTTP/1.1 client (sidecar/upstream/connection.py, pool.py) against real servers
on loopback: an aiohttp upstream (plain and TLS with a local CA from trustme), and raw asyncio
servers where the test needs exact bytes on the wire (framing edge cases a library server would
not send). Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import trustme
from aiohttp import web
from yarl import URL

from streamhop.sidecar.config import RouteConfig, config_from_dict
from streamhop.sidecar.upstream.pool import (
    UpstreamBodyError,
    UpstreamConnectError,
    UpstreamPool,
    UpstreamResponse,
    UpstreamTimeoutError,
    UpstreamTiming,
    encode_request,
)
from tests.support import wait_for_async

BOUND_S = 10.0

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def route_for(upstream: str, **extra: object) -> RouteConfig:
    return config_from_dict({"routes": [{"prefix": "/", "upstream": upstream, **extra}]}).routes[0]


async def read_all(response: UpstreamResponse) -> bytes:
    chunks = []
    while chunk := await asyncio.wait_for(response.readany(), BOUND_S):
        chunks.append(chunk)
    return b"".join(chunks)


async def send(
    pool: UpstreamPool,
    route: RouteConfig,
    path: str = "/v1/x",
    *,
    method: str = "POST",
    body: bytes = b"{}",
    headers: list[tuple[str, str]] | None = None,
    headers_timeout: float | None = BOUND_S,
) -> UpstreamResponse:
    url = URL(route.upstream.rstrip("/") + path)
    return await asyncio.wait_for(
        pool.request(route, method, url, headers or [], body, UpstreamTiming(), headers_timeout),
        BOUND_S * 2,
    )


class RawServer:
    """A TCP server on 127.0.0.1 that runs ``handler`` per connection and remembers what came."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> RawServer:
        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            try:
                await self.handler(reader, writer)
            finally:
                writer.close()

        self.server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"


async def read_head(reader: asyncio.StreamReader) -> bytes:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), BOUND_S)
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            await reader.readexactly(int(line.split(b":")[1]))
    return head


@pytest.fixture
async def pool() -> AsyncIterator[UpstreamPool]:
    pool = UpstreamPool()
    yield pool
    await pool.close()


# --- against a real aiohttp upstream ---------------------------------------------------------


def echo_app() -> web.Application:
    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        peer = request.transport.get_extra_info("peername")[1] if request.transport else 0
        return web.json_response(
            {"peer": peer, "body": body.decode(), "headers": list(request.raw_headers)},
            dumps=lambda o: json.dumps(o, default=lambda b: b.decode("latin-1")),
        )

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for i in range(3):
            await response.write(b"data: %d\n\n" % i)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/v1/echo", echo)
    app.router.add_get("/v1/echo", echo)
    app.router.add_post("/v1/stream", stream)
    return app


@pytest.fixture
async def aiohttp_upstream(aiohttp_server: Callable[..., Awaitable[object]]) -> str:
    server = await aiohttp_server(echo_app(), host="127.0.0.1")
    return str(server.make_url("/")).rstrip("/")  # type: ignore[attr-defined]


async def test_a_connection_read_to_its_end_is_reused(
    pool: UpstreamPool, aiohttp_upstream: str
) -> None:
    route = route_for(aiohttp_upstream)
    peers = []
    for _ in range(3):
        response = await send(pool, route, "/v1/echo")
        assert response.status == 200
        peers.append(json.loads(await read_all(response))["peer"])
        response.close()
    assert len(set(peers)) == 1
    assert pool.open_connections == 1 and pool.idle_connections == 1


async def test_the_request_goes_as_the_client_sent_it(
    pool: UpstreamPool, aiohttp_upstream: str
) -> None:
    route = route_for(aiohttp_upstream)
    headers = [("X-One", "1"), ("x-utf8", "héllo"), ("X-One", "2")]
    response = await send(pool, route, "/v1/echo", body=b'{"a":1}', headers=headers)
    seen = json.loads(await read_all(response))
    names = [name for name, _ in seen["headers"]]
    # Host and Content-Length are added, nothing else (no User-Agent, Accept, Accept-Encoding).
    assert sorted(n.lower() for n in names) == [
        "content-length",
        "host",
        "x-one",
        "x-one",
        "x-utf8",
    ]
    assert ["X-One", "1"] in seen["headers"] and ["X-One", "2"] in seen["headers"]
    assert ["x-utf8", "héllo".encode().decode("latin-1")] in seen["headers"]
    assert seen["body"] == '{"a":1}'


async def test_an_sse_body_is_delivered_from_data_received(
    pool: UpstreamPool, aiohttp_upstream: str
) -> None:
    route = route_for(aiohttp_upstream)
    response = await send(pool, route, "/v1/stream")
    assert response.headers["content-type"] == "text/event-stream"
    got: list[bytes] = []
    ended = asyncio.Event()
    response.deliver(got.append, ended.set)
    await asyncio.wait_for(ended.wait(), BOUND_S)
    assert b"".join(got) == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"
    assert response.eof and response.error is None


async def test_a_header_value_with_a_line_break_is_refused_before_sending(
    pool: UpstreamPool, aiohttp_upstream: str
) -> None:
    route = route_for(aiohttp_upstream)
    with pytest.raises(UpstreamConnectError, match="CR, LF or NUL"):
        await send(pool, route, "/v1/echo", headers=[("X-Evil", "a\r\nHost: elsewhere")])
    assert pool.open_connections == 0


def test_encode_request_adds_host_and_content_length_only() -> None:
    url = URL("http://127.0.0.1:8080/v1/chat?x=1")
    assert encode_request("POST", url, [("A", "b")], b"xy") == (
        b"POST /v1/chat?x=1 HTTP/1.1\r\nhost: 127.0.0.1:8080\r\nA: b\r\ncontent-length: 2\r\n\r\nxy"
    )
    assert encode_request("GET", URL("https://api.example/v1"), [], b"") == (
        b"GET /v1 HTTP/1.1\r\nhost: api.example\r\n\r\n"
    )
    # A route that sets Host sends that one only.
    assert encode_request("POST", url, [("Host", "h")], b"").count(b"ost:") == 1


# --- TLS with a private CA ---------------------------------------------------------------------


@pytest.fixture
async def tls_upstream(
    aiohttp_server: Callable[..., Awaitable[object]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[str, trustme.CA]:
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    server = await aiohttp_server(echo_app(), host="127.0.0.1", ssl=server_ctx)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    port = server.port  # type: ignore[attr-defined]
    return f"https://localhost:{port}", ca


async def test_tls_upstream_verified_against_ssl_cert_file(
    pool: UpstreamPool, tls_upstream: tuple[str, trustme.CA]
) -> None:
    url, _ = tls_upstream
    route = route_for(url)
    response = await send(pool, route, "/v1/stream")
    got: list[bytes] = []
    ended = asyncio.Event()
    response.deliver(got.append, ended.set)
    await asyncio.wait_for(ended.wait(), BOUND_S)
    assert b"".join(got).count(b"data:") == 3


async def test_tls_upstream_with_an_untrusted_certificate_is_a_connect_error(
    tls_upstream: tuple[str, trustme.CA], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, _ = tls_upstream
    monkeypatch.delenv("SSL_CERT_FILE")  # the system store does not know the local CA
    pool = UpstreamPool()
    try:
        with pytest.raises(UpstreamConnectError, match="certificate of localhost is not trusted"):
            await send(pool, route_for(url, retries=0), "/v1/echo")
    finally:
        await pool.close()


# --- exact bytes from raw servers --------------------------------------------------------------


async def test_a_body_delimited_by_close_ends_cleanly_and_is_not_reused(pool: UpstreamPool) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\ndata: a\n\n")
        await writer.drain()

    async with RawServer(handler) as server:
        response = await send(pool, route_for(server.url))
        assert await read_all(response) == b"data: a\n\n"
        assert response.eof and response.error is None
        assert pool.idle_connections == 0


async def test_a_chunked_body_cut_short_is_an_error(pool: UpstreamPool) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n9\r\ndata: a\n\n\r\n")
        await writer.drain()

    async with RawServer(handler) as server:
        response = await send(pool, route_for(server.url))
        assert await response.readany() == b"data: a\n\n"
        with pytest.raises(UpstreamBodyError, match="before the body's end"):
            await read_all(response)
        assert not response.eof


async def test_interim_answers_are_skipped(pool: UpstreamPool) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Final: yes\r\n\r\nok"
        )
        await writer.drain()
        await reader.read()

    async with RawServer(handler) as server:
        response = await send(pool, route_for(server.url))
        assert response.status == 200
        assert response.headers["x-final"] == "yes" and "link" not in response.headers
        assert await read_all(response) == b"ok"


async def test_a_head_answer_has_no_body(pool: UpstreamPool) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
        await writer.drain()
        await reader.read()

    async with RawServer(handler) as server:
        response = await send(pool, route_for(server.url), method="HEAD", body=b"")
        assert response.status == 200
        assert await read_all(response) == b""


async def test_a_malformed_answer_is_a_connect_error(pool: UpstreamPool) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        await writer.drain()
        await reader.read()

    async with RawServer(handler) as server:
        with pytest.raises(UpstreamConnectError, match="malformed HTTP response"):
            await send(pool, route_for(server.url))


async def test_no_headers_in_time_is_a_timeout_and_the_connection_closes(
    pool: UpstreamPool,
) -> None:
    closed = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        await asyncio.wait_for(reader.read(), BOUND_S)  # b"" once the client closed
        closed.set()

    async with RawServer(handler) as server:
        with pytest.raises(UpstreamTimeoutError, match=r"no response headers within 0\.2 s"):
            await send(pool, route_for(server.url), headers_timeout=0.2)
        await asyncio.wait_for(closed.wait(), BOUND_S)
        assert pool.open_connections == 0


def closes_kept_alive_connection_unanswered() -> tuple[Handler, list[bytes]]:
    """Answers the first request of a connection with keep-alive; closes the connection on the
    second one without answering (the provider timed the idle connection out as it was
    reused). A new connection is answered again."""
    heads: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        heads.append(await read_head(reader))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        heads.append(await read_head(reader))  # ... and close without an answer

    return handler, heads


async def test_a_post_on_a_connection_the_provider_closed_is_not_sent_twice(
    pool: UpstreamPool,
) -> None:
    handler, heads = closes_kept_alive_connection_unanswered()
    async with RawServer(handler) as server:
        route = route_for(server.url)
        assert await read_all(await send(pool, route)) == b"ok"
        with pytest.raises(UpstreamConnectError, match="closed the connection before answering"):
            await send(pool, route)
        assert len(heads) == 2 and server.connections == 1


async def test_a_get_on_a_connection_the_provider_closed_is_retried_on_a_new_one(
    pool: UpstreamPool,
) -> None:
    handler, heads = closes_kept_alive_connection_unanswered()
    async with RawServer(handler) as server:
        route = route_for(server.url)
        assert await read_all(await send(pool, route, method="GET", body=b"")) == b"ok"
        response = await send(pool, route, method="GET", body=b"")
        assert await read_all(response) == b"ok"
        assert len(heads) == 3 and server.connections == 2


async def test_an_idle_connection_closed_by_the_provider_leaves_the_pool(
    pool: UpstreamPool,
) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()  # then close: the connection is idle in the pool

    async with RawServer(handler) as server:
        route = route_for(server.url)
        assert await read_all(await send(pool, route)) == b"ok"

        async def forgotten() -> bool:
            return pool.open_connections == 0

        await wait_for_async(forgotten, BOUND_S, "the pool to notice the close")
        assert await read_all(await send(pool, route)) == b"ok"
        assert server.connections == 2


async def test_a_refused_connect_is_retried_then_reported(pool: UpstreamPool) -> None:
    async with RawServer(read_head) as server:  # a free port: start, note, stop
        url = server.url
    route = route_for(url, retries=2)
    timing = UpstreamTiming()
    with pytest.raises(UpstreamConnectError, match="cannot connect to upstream"):
        await pool.request(route, "POST", URL(url + "/v1"), [], b"", timing, BOUND_S)
    assert timing.attempts == 3
