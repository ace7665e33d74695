"""The sidecar holds provider keys: probes an attacker would try, against a real sidecar.

One ``streamhop serve`` process with short limits, two recording aiohttp upstreams on loopback
("provider" behind the routes, "elsewhere" on another port a request must never reach), and raw
sockets where a client library would refuse to send what an attacker sends.
"""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any

import aiohttp
import anthropic
import openai
import orjson
import pytest
import websockets
from aiohttp import web

from streamhop.middleware.errors import ConfigError
from streamhop.sidecar.config import config_from_dict
from tests.sidecar.upstreams import chat_chunk, chat_delta, until_closed
from tests.support import BackgroundAiohttp, StreamhopProcess, serve, sse_pairs, wait_for

KEY = "sk-secret-route-key"
ALLOWED = "https://app.example.com"


class Recorder:
    """Requests an upstream saw: ``(method, raw path, headers as raw bytes)``."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, list[tuple[bytes, bytes]]]] = []

    def paths(self) -> list[str]:
        return [path for _, path, _ in self.seen]


def provider_app(rec: Recorder) -> web.Application:
    """The provider: echoes, streams, misbehaves; records every request."""

    async def handle(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        rec.seen.append((request.method, request.raw_path, list(request.raw_headers)))
        path = request.path
        if path.endswith("/cors"):
            return web.json_response({"ok": True}, headers={"Access-Control-Allow-Origin": "*"})
        if "/sse/" not in path:
            return web.json_response(
                {
                    "path": request.raw_path,
                    "headers": [[k.decode("latin-1"), v.hex()] for k, v in request.raw_headers],
                    "body": body.decode(errors="replace"),
                }
            )
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        kind = path.rsplit("/", 1)[-1]
        if kind == "chat":
            await resp.write(chat_chunk("hello ") + chat_chunk("world") + b"data: [DONE]\n\n")
        elif kind == "no-done":
            await resp.write(chat_chunk("cut ") + chat_chunk("short"))
        elif kind == "anthropic-no-stop":
            await resp.write(
                b'event: message_start\ndata: {"type":"message_start","message":{"id":"m",'
                b'"type":"message","role":"assistant","model":"c","content":[],'
                b'"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":1,'
                b'"output_tokens":1}}}\n\n'
                b'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
                b'"content_block":{"type":"text","text":""}}\n\n'
                b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
                b'"delta":{"type":"text_delta","text":"cut"}}\n\n'
            )
        elif kind == "hang":
            await resp.write(chat_chunk("before the hang"))
            await until_closed(request)
            return resp
        elif kind == "ping-then-hang":
            await resp.write(b": ping\n\n")
            await until_closed(request)
            return resp
        elif kind == "tool-args-then-hang":
            call = {"index": 0, "id": "call_1", "type": "function"}
            await resp.write(
                chat_delta({"tool_calls": [{**call, "function": {"name": "f", "arguments": ""}}]})
            )
            await resp.write(
                chat_delta({"tool_calls": [{"index": 0, "function": {"arguments": '{"q'}}]})
            )
            await until_closed(request)
            return resp
        elif kind == "invalid-utf8":
            await resp.write(b"data: caf\xe9 \xff\xfe ok\n\n" + b'data: {"x": "\xc3"}\n\n')
        await resp.write_eof()
        return resp

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


@pytest.fixture(scope="module")
def provider() -> Iterator[tuple[BackgroundAiohttp, Recorder]]:
    rec = Recorder()
    with BackgroundAiohttp(provider_app(rec)) as server:
        yield server, rec


@pytest.fixture(scope="module")
def elsewhere() -> Iterator[tuple[BackgroundAiohttp, Recorder]]:
    rec = Recorder()
    with BackgroundAiohttp(provider_app(rec)) as server:
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
max_header_bytes = 16384
max_headers = 40
header_timeout_s = 1
max_request_bytes = 65536
max_streams = 4

[[routes]]
prefix = "/x"
upstream = "{url}"
[routes.headers]
Authorization = "Bearer {KEY}"

[[routes]]
prefix = "/a"
upstream = "{url}/base"

[[routes]]
prefix = "/slow"
upstream = "{url}"
read_timeout_s = 0.5
keepalive_interval_s = 0.2
timeout_s = 1.5

[[routes]]
prefix = "/deadline"
upstream = "{url}"
timeout_s = 0.5
read_timeout_s = 30

[[routes]]
prefix = "/leaky"
upstream = "http://user:hunter2@127.0.0.1:9"
connect_timeout_s = 1
retries = 0

[resume]
enabled = true

[[routes]]
prefix = "/other"
upstream = "{url}"
"""
    proc = serve(tmp_path_factory.mktemp("security"), config, log_level="info")
    yield proc
    proc.stop()


def _raw(side: StreamhopProcess, request: bytes, bound_s: float = 10.0) -> bytes:
    """Send raw bytes (ending with ``Connection: close``), return everything the sidecar
    answers until it closes; bounded by ``bound_s`` seconds per read."""
    host, port = side.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=bound_s) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def _get(side: StreamhopProcess, path: str, *headers: str, method: str = "GET") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *headers, "Connection: close"]
    return _raw(side, ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))


# --- 1. routing on one normalised path --------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "upstream_path"),
    [
        ("/%78/v1/models", "/v1/models"),
        ("/x/v1/../v1/models", "/v1/models"),
        ("/x/./v1/models", "/v1/models"),
        ("/%61/v1/models", "/base/v1/models"),
        ("/x/v1/models%3Aa", "/v1/models%3Aa"),
    ],
)
def test_encoded_prefix_reaches_only_the_configured_upstream(
    side: StreamhopProcess,
    provider: tuple[BackgroundAiohttp, Recorder],
    elsewhere: tuple[BackgroundAiohttp, Recorder],
    path: str,
    upstream_path: str,
) -> None:
    answer = _get(side, path)
    assert _status(answer) == 200, answer
    body = orjson.loads(answer.partition(b"\r\n\r\n")[2])
    assert body["path"] == upstream_path
    assert elsewhere[1].seen == []


@pytest.mark.parametrize("path", ["/x/%2F..%2F..", "/x/a%2fb", "/..", "/x/../../v1", "/%2e%2e/x"])
def test_encoded_slash_and_climbing_dot_segments_get_400(
    side: StreamhopProcess, provider: tuple[BackgroundAiohttp, Recorder], path: str
) -> None:
    before = len(provider[1].seen)
    answer = _get(side, path)
    assert _status(answer) == 400, answer
    assert b"bad_path" in answer
    assert len(provider[1].seen) == before


# --- 2. browser origins and Host --------------------------------------------------------------


def test_foreign_origin_is_refused_even_for_a_simple_request(
    side: StreamhopProcess, provider: tuple[BackgroundAiohttp, Recorder]
) -> None:
    before = len(provider[1].seen)
    answer = _raw(
        side,
        b"POST /x/v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Origin: https://evil.example\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n"
        b"Connection: close\r\n\r\n{}",
    )
    assert _status(answer) == 403
    assert b"origin_not_allowed" in answer
    assert b"access-control-allow-origin" not in answer.lower()
    assert len(provider[1].seen) == before


def test_cross_site_navigation_without_origin_is_refused(side: StreamhopProcess) -> None:
    answer = _get(side, "/x/v1/models", "Sec-Fetch-Site: cross-site")
    assert _status(answer) == 403


def test_preflight_is_answered_here_never_forwarded(
    side: StreamhopProcess, provider: tuple[BackgroundAiohttp, Recorder]
) -> None:
    before = len(provider[1].seen)
    allowed = _get(
        side,
        "/x/v1/chat/completions",
        f"Origin: {ALLOWED}",
        "Access-Control-Request-Method: POST",
        "Access-Control-Request-Headers: authorization, content-type",
        method="OPTIONS",
    )
    assert _status(allowed) == 204
    head = allowed.lower()
    assert f"access-control-allow-origin: {ALLOWED}".encode() in head
    assert b"access-control-allow-headers: authorization, content-type" in head
    refused = _get(
        side,
        "/x/v1/chat/completions",
        "Origin: https://evil.example",
        "Access-Control-Request-Method: POST",
        method="OPTIONS",
    )
    assert _status(refused) == 403
    assert len(provider[1].seen) == before


def test_allowed_origin_gets_streamhops_cors_headers_not_the_upstreams(
    side: StreamhopProcess,
) -> None:
    answer = _get(side, "/x/cors", f"Origin: {ALLOWED}").lower()
    assert _status(answer) == 200
    assert answer.count(b"access-control-allow-origin") == 1
    assert f"access-control-allow-origin: {ALLOWED}".encode() in answer
    # Without an Origin (a server-side SDK) the upstream's '*' is dropped too.
    plain = _get(side, "/x/cors").lower()
    assert b"access-control-allow-origin" not in plain


def test_foreign_host_gets_421_dns_rebinding(side: StreamhopProcess) -> None:
    port = side.url.rsplit(":", 1)[1]
    answer = _raw(
        side,
        f"GET /x/v1/models HTTP/1.1\r\nHost: rebind.evil.example:{port}\r\n"
        "Connection: close\r\n\r\n".encode(),
    )
    assert _status(answer) == 421
    ok = _raw(
        side,
        f"GET /x/v1/models HTTP/1.1\r\nHost: localhost:{port}\r\n"
        "Connection: close\r\n\r\n".encode(),
    )
    assert _status(ok) == 200


def test_websocket_from_a_foreign_origin_is_refused(side: StreamhopProcess) -> None:
    url = side.url.replace("http://", "ws://") + "/x/v1/chat/completions"

    async def attempt(origin: str) -> int | None:
        try:
            async with websockets.connect(
                url, origin=websockets.Origin(origin), open_timeout=10
            ) as ws:
                await ws.close()
                return None
        except websockets.InvalidStatus as exc:
            return exc.response.status_code

    assert asyncio.run(attempt("https://evil.example")) == 403
    assert asyncio.run(attempt(ALLOWED)) is None


# --- 3. resume bound to the caller ------------------------------------------------------------


def test_resume_needs_the_same_route_and_credentials(
    side: StreamhopProcess, provider: tuple[BackgroundAiohttp, Recorder]
) -> None:
    async def scenario() -> dict[str, int]:
        async with aiohttp.ClientSession() as session:
            url = side.url + "/other/sse/chat"
            mine = {"Authorization": "Bearer caller-a"}
            async with session.post(url, json={}, headers=mine) as resp:
                stream_id = resp.headers["X-Streamhop-Stream-Id"]
                await resp.read()
            resume = {"Last-Event-ID": f"{stream_id}:0"}
            out = {}
            for name, path, headers in [
                ("same", "/other/sse/chat", {**mine, **resume}),
                ("no_credentials", "/other/sse/chat", resume),
                ("other_credentials", "/other/sse/chat", {"Authorization": "Bearer b", **resume}),
                ("other_route", "/x/sse/chat", {**mine, **resume}),
            ]:
                async with session.post(side.url + path, json={}, headers=headers) as resp:
                    out[name] = resp.status
                    await resp.read()
            return out

    before = len(provider[1].seen)
    assert asyncio.run(scenario()) == {
        "same": 200,
        "no_credentials": 404,
        "other_credentials": 404,
        "other_route": 404,
    }
    assert len(provider[1].seen) == before + 1  # resumes never reach the provider


def test_stream_ids_are_not_logged_at_info(side: StreamhopProcess) -> None:
    # The path marks this request's log line: other requests on this sidecar log lines too.
    marker = uuid.uuid4().hex

    async def scenario() -> str:
        async with (
            aiohttp.ClientSession() as session,
            session.post(side.url + f"/other/sse/{marker}/chat", json={}) as resp,
        ):
            await resp.read()
            return resp.headers["X-Streamhop-Stream-Id"]

    stream_id = asyncio.run(scenario())

    def logged() -> dict[str, Any] | None:
        for line in side.stderr.splitlines():
            if marker in line:
                return dict(orjson.loads(line[line.index("{") :]))
        return None

    # Its end is logged (with a request id), and only then can the absence of its id be seen.
    line = wait_for(logged, 10, "the stream's log line")
    assert line["event"] == "stream_end" and line["request_id"]
    assert stream_id not in side.stderr


# --- 4. every stream ends with an end ---------------------------------------------------------


def _post_sse(side: StreamhopProcess, path: str, **headers: str) -> tuple[int, bytes, float]:
    async def scenario() -> tuple[int, bytes, float]:
        started = time.monotonic()
        async with (
            aiohttp.ClientSession() as session,
            session.post(side.url + path, json={}, headers=headers) as resp,
        ):
            return resp.status, await resp.read(), time.monotonic() - started

    return asyncio.run(scenario())


def test_provider_that_hangs_ends_with_upstream_timeout(side: StreamhopProcess) -> None:
    status, body, _ = _post_sse(side, "/slow/sse/hang")
    events = sse_pairs(body)
    assert status == 200
    assert orjson.loads(events[0][1])["choices"][0]["delta"]["content"] == "before the hang"
    assert orjson.loads(events[-1][1])["error"]["code"] == "upstream_timeout"


def test_provider_closing_without_done_ends_with_upstream_incomplete(
    side: StreamhopProcess,
) -> None:
    status, body, _ = _post_sse(side, "/x/sse/no-done")
    assert status == 200
    assert orjson.loads(sse_pairs(body)[-1][1])["error"]["code"] == "upstream_incomplete"
    assert b"\ndata: [DONE]\n" not in body


def test_sdks_see_an_error_for_an_incomplete_stream(side: StreamhopProcess) -> None:
    with (
        openai.OpenAI(base_url=side.url + "/x/sse/no-done#", api_key="k", max_retries=0) as client,
        pytest.raises(openai.APIError, match="before it was finished"),
    ):
        for _ in client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], stream=True
        ):
            pass
    with (
        anthropic.Anthropic(
            base_url=side.url + "/x/sse/anthropic-no-stop#", api_key="k", max_retries=0
        ) as claude,
        pytest.raises(anthropic.APIError, match="before it was finished"),
        claude.messages.stream(
            model="c", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
        ) as stream,
    ):
        for _ in stream:
            pass


def test_keepalive_comments_while_the_provider_is_silent(side: StreamhopProcess) -> None:
    # /slow: keepalive_interval_s = 0.2, read_timeout_s = 0.5, so a silent provider gets its
    # own ': ping' forwarded, then streamhop's keep-alives, then upstream_timeout.
    status, body, _ = _post_sse(side, "/slow/sse/ping-then-hang")
    assert status == 200
    assert body.startswith(b": ping\n\n")
    assert b": keep-alive\n\n" in body
    assert orjson.loads(sse_pairs(body)[-1][1])["error"]["code"] == "upstream_timeout"


# --- 5. bounded inputs ------------------------------------------------------------------------


def test_huge_header_gets_431(side: StreamhopProcess) -> None:
    answer = _get(side, "/x/v1/models", "X-Big: " + "a" * 100_000)
    assert _status(answer) == 431


def test_too_many_headers_get_431(side: StreamhopProcess) -> None:
    answer = _get(side, "/x/v1/models", *(f"X-H{i}: v" for i in range(60)))
    assert _status(answer) == 431


def test_slowloris_is_cut_after_header_timeout(side: StreamhopProcess) -> None:
    host, port = side.url.removeprefix("http://").split(":")
    socks = []
    try:
        for _ in range(20):
            sock = socket.create_connection((host, int(port)), timeout=10)
            sock.sendall(b"GET /x/v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: a")
            socks.append(sock)
        started = time.monotonic()
        answers = [sock.recv(4096) for sock in socks]  # blocks until the sidecar answers
        elapsed = time.monotonic() - started
    finally:
        for sock in socks:
            sock.close()
    assert all(_status(a) == 408 for a in answers), answers[:2]
    assert elapsed < 9  # header_timeout_s = 1; the socket timeout would say 10


def test_body_over_max_request_bytes_gets_413(side: StreamhopProcess) -> None:
    status, _, _ = _post_sse(side, "/x/v1/chat/completions")
    assert status == 200

    async def big() -> int:
        async with (
            aiohttp.ClientSession() as session,
            session.post(side.url + "/x/v1/x", data=b"x" * 70_000) as resp,
        ):
            return resp.status

    assert asyncio.run(big()) == 413


def test_uploads_count_toward_max_streams_from_their_first_byte(side: StreamhopProcess) -> None:
    host, port = side.url.removeprefix("http://").split(":")
    socks = []
    try:
        for _ in range(4):  # max_streams = 4: four unfinished uploads hold every slot
            sock = socket.create_connection((host, int(port)), timeout=10)
            sock.sendall(
                b"POST /x/v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Length: 60000\r\n\r\n" + b"x" * 1000
            )
            socks.append(sock)
        # Once the sidecar has read the uploads' first bytes, a fifth request is refused.
        wait_for(lambda: _status(_get(side, "/x/v1/models")) == 503, 10, "a 503 at max_streams")
    finally:
        for sock in socks:
            sock.close()
    wait_for(lambda: _status(_get(side, "/x/v1/models")) == 200, 10, "the slots to be free")


# --- 6. redaction ------------------------------------------------------------------------------


def test_upstream_userinfo_never_reaches_responses_frames_or_logs(side: StreamhopProcess) -> None:
    answer = _get(side, "/leaky/v1/models")
    assert _status(answer) == 502
    assert b"hunter2" not in answer
    assert b"***@" in answer

    async def ws_error() -> str:
        url = side.url.replace("http://", "ws://") + "/leaky/v1/chat/completions"
        async with websockets.connect(url, open_timeout=10) as ws:
            await ws.send(orjson.dumps({"type": "request", "body": {"model": "m"}}).decode())
            frames = []
            while True:
                frame = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
                frames.append(frame)
                if frame["type"] == "done":
                    return orjson.dumps(frames).decode()

    frames = asyncio.run(ws_error())
    assert "upstream_connect" in frames
    assert "hunter2" not in frames
    assert "hunter2" not in side.stderr


def test_redis_password_is_not_echoed_in_config_errors() -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict({"resume": {"redis_url": "http://user:s3cret@redis:6379"}})
    assert "s3cret" not in str(info.value)
    with pytest.raises(ConfigError) as info:
        config_from_dict({"routes": [{"prefix": "/", "upstream": "ftp://u:s3cret@host"}]})
    assert "s3cret" not in str(info.value)


# --- 7. X-Streamhop-Timeout-Ms only shortens ---------------------------------------------------


def test_timeout_header_cannot_extend_the_routes_timeout(side: StreamhopProcess) -> None:
    # /deadline: timeout_s = 0.5, read_timeout_s = 30. Asking for a day still ends at the
    # route's deadline (the pytest timeout, not this bound, would catch a 100000 s wait).
    status, body, elapsed = _post_sse(
        side, "/deadline/sse/hang", **{"X-Streamhop-Timeout-Ms": "86400000"}
    )
    assert status == 200
    assert orjson.loads(sse_pairs(body)[-1][1])["error"]["code"] == "timeout"
    assert elapsed < 25  # the route's 0.5 s, far below read_timeout_s = 30
    for value in ("1e300", "86400001", "0", "inf"):
        answer = _get(side, "/x/v1/models", f"X-Streamhop-Timeout-Ms: {value}")
        assert _status(answer) == 400, value


# --- 8. bytes pass untouched unless merged ----------------------------------------------------


def test_invalid_utf8_passes_through_byte_for_byte(side: StreamhopProcess) -> None:
    status, body, _ = _post_sse(side, "/x/sse/invalid-utf8")
    assert status == 200
    assert b"data: caf\xe9 \xff\xfe ok\n\n" in body
    assert b'data: {"x": "\xc3"}\n\n' in body
    assert "\ufffd".encode() not in body


def test_non_ascii_request_headers_reach_the_provider_unchanged(side: StreamhopProcess) -> None:
    answer = _raw(
        side,
        b"GET /x/echo HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Note: caf\xc3\xa9 \xe2\x80\xa6\r\n"
        b"Connection: close\r\n\r\n",
    )
    body: Any = orjson.loads(answer.partition(b"\r\n\r\n")[2])
    seen = {name.lower(): bytes.fromhex(value) for name, value in body["headers"]}
    assert seen["x-note"] == b"caf\xc3\xa9 \xe2\x80\xa6"
    latin1 = _raw(
        side,
        b"GET /x/echo HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Note: caf\xe9\r\nConnection: close\r\n\r\n",
    )
    assert _status(latin1) == 400  # cannot be forwarded unchanged: said, not corrupted


# --- what a client sees first -----------------------------------------------------------------


def test_first_tool_argument_bytes_are_not_held_a_window(side: StreamhopProcess) -> None:
    """A tool call's announcement is not the stream's first content: the first argument
    fragment goes out at once even with a 60 s window (it used to wait for the window)."""

    async def scenario() -> list[str]:
        headers = {"X-Streamhop-Flush-Interval-Ms": "60000"}
        async with (
            aiohttp.ClientSession() as session,
            session.post(side.url + "/x/sse/tool-args-then-hang", json={}, headers=headers) as resp,
        ):
            seen = b""
            async with asyncio.timeout(20):  # a bound far below the window
                while not any('{\\"q' in data for _, data in sse_pairs(seen)):
                    seen += await resp.content.readany()
            return [data for _, data in sse_pairs(seen)]

    events = asyncio.run(scenario())
    args = orjson.loads(events[-1])["choices"][0]["delta"]["tool_calls"][0]["function"]
    assert args["arguments"] == '{"q'
