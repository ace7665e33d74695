"""Every upstream read and every client write has a timeout, on the non-streaming path too.

Found by the round-3 review: only SSE bodies had a read timeout. A non-streaming request whose
upstream never sends headers, or whose JSON body stops half way, hung past ``read_timeout_s``;
a client that never read a large JSON answer was held past ``stall_timeout_s``. A real sidecar
in front of a scripted aiohttp upstream, on loopback.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
from aiohttp import web

from tests.sidecar.upstreams import until_closed
from tests.support import BackgroundAiohttp, StreamhopProcess, metric, serve, wait_for

READ_TIMEOUT_S = 0.5
STALL_S = 0.5
BIG = 50 * 1024 * 1024


def _app() -> web.Application:
    async def no_headers(request: web.Request) -> web.StreamResponse:
        await request.read()
        await until_closed(request)
        return web.Response()

    async def half_json(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.content_length = 1000
        await resp.prepare(request)
        await resp.write(b'{"choices": [{"message": {"content": "half')
        await until_closed(request)
        return resp

    async def big_json(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.content_length = BIG
        await resp.prepare(request)
        piece = b" " * (1024 * 1024)
        try:
            for _ in range(BIG // len(piece)):
                await resp.write(piece)
        except ConnectionError:
            pass
        return resp

    app = web.Application()
    app.router.add_post("/no-headers", no_headers)
    app.router.add_post("/half-json", half_json)
    app.router.add_post("/big-json", big_json)
    return app


@pytest.fixture(scope="module")
def upstream() -> Iterator[BackgroundAiohttp]:
    with BackgroundAiohttp(_app()) as server:
        yield server


@pytest.fixture(scope="module")
def side(
    upstream: BackgroundAiohttp, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[StreamhopProcess]:
    config = f"""
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[backpressure]
stall_timeout_s = {STALL_S}

[[routes]]
prefix = "/"
upstream = "{upstream.url}"
read_timeout_s = {READ_TIMEOUT_S}
"""
    proc = serve(Path(tmp_path_factory.mktemp("timeouts")), config)
    yield proc
    proc.stop()


def test_a_non_streaming_answer_without_headers_ends_at_read_timeout(
    side: StreamhopProcess,
) -> None:
    started = time.monotonic()
    response = httpx2.post(side.url + "/no-headers", json={"model": "m"}, timeout=20)
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "upstream_headers_timeout"
    assert time.monotonic() - started < 15  # bounded by read_timeout_s, not by the client


def test_a_json_body_that_stops_half_way_ends_at_read_timeout(side: StreamhopProcess) -> None:
    started = time.monotonic()
    with pytest.raises(httpx2.HTTPError):  # the body ends incomplete: the honest signal
        httpx2.post(side.url + "/half-json", json={"model": "m"}, timeout=20)
    assert time.monotonic() - started < 15
    assert wait_for(
        lambda: (
            metric(side.admin_url or "", "streamhop_upstream_errors_total", kind="read_timeout")
            >= 1
        ),
        10,
        "the read timeout to be counted",
    )


def test_a_client_that_never_reads_a_large_json_answer_is_dropped(side: StreamhopProcess) -> None:
    host, port = side.url.removeprefix("http://").split(":")
    body = b'{"model": "m"}'
    request = (
        b"POST /big-json HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    with socket.create_connection((host, int(port)), timeout=20) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(request)
        # Never read: the sidecar's writes block once the socket buffers are full.
        assert wait_for(
            lambda: (
                metric(side.admin_url or "", "streamhop_cancellations_total", reason="stall") >= 1
            ),
            20,
            "the stalled client to be dropped",
        )
