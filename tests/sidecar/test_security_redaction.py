"""Credentials in upstream and Redis URLs ("Hardening, round 3"), against a real sidecar.

* Userinfo is everything before the **last** ``@`` of the authority (as yarl, and so aiohttp,
  parse it): ``http://svc:p@ssw0rd-Secret@host`` must never show ``ssw0rd-Secret``. Such an
  ambiguous URL (more than one unescaped ``@``) is refused at config load, naming the key and
  asking for ``%40``.
* Upstream userinfo is the route's credential: it is sent as ``Authorization: Basic`` and
  replaces a client's ``Authorization`` (it used to make aiohttp raise, a 500 with a traceback).

One ``streamhop serve`` process with a recording aiohttp upstream, both on loopback.
"""

from __future__ import annotations

import asyncio
import base64
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import websockets
from aiohttp import web

from streamhop.middleware.errors import ConfigError
from streamhop.sidecar.config import config_from_dict, redact_url, route_for_upstream
from tests.sidecar.upstreams import chat_chunk
from tests.support import BackgroundAiohttp, StreamhopProcess, serve, wait_for

SECRET = "ssw0rd-Secret"
USERINFO = f"svc:p%40{SECRET}"  # the unambiguous spelling of user "svc", password "p@ssw0rd-…"
BASIC = "Basic " + base64.b64encode(f"svc:p@{SECRET}".encode()).decode()
CLIENT_TOKEN = "client-token-must-not-travel"


# --- 1. redaction: userinfo ends at the authority's last "@" ---------------------------------


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        (f"http://svc:p@{SECRET}@host:8080/v1", "http://***@host:8080/v1"),
        (
            f"cannot connect to upstream http://svc:p@{SECRET}@127.0.0.1:9: refused",
            "cannot connect to upstream http://***@127.0.0.1:9: refused",
        ),
        (f"redis://:p@{SECRET}@redis:6379/0 down", "redis://***@redis:6379/0 down"),
        (f"url=URL('https://a:b@{SECRET}@[::1]:8443/x')", "url=URL('https://***@[::1]:8443/x')"),
        (f"got x_http://svc:p@{SECRET}@h", "got x_http://***@h"),
        (f"http://{USERINFO}@h/a@b", "http://***@h/a@b"),  # an "@" in the path is not userinfo
        ("http://h/a@b", "http://h/a@b"),
        ("http://h:1/x and https://api.example.com", "http://h:1/x and https://api.example.com"),
    ],
)
def test_redact_url_hides_everything_before_the_last_at(text: str, shown: str) -> None:
    assert redact_url(text) == shown


@pytest.mark.parametrize(
    "text",
    [
        f"http://svc:p@{SECRET}@host:port",  # no valid port: yarl cannot split it
        f"http://svc:p@{SECRET}@[::1/x",  # broken IPv6 literal
    ],
)
def test_redact_url_hides_the_whole_authority_of_an_unparsable_url(text: str) -> None:
    assert SECRET not in redact_url(text)
    assert "svc" not in redact_url(text)


@pytest.mark.parametrize(
    ("section", "key"),
    [
        (
            {"routes": [{"prefix": "/", "upstream": f"http://svc:p@{SECRET}@host:8080"}]},
            "routes[0].upstream",
        ),
        ({"resume": {"redis_url": f"redis://:p@{SECRET}@redis:6379/0"}}, "resume.redis_url"),
    ],
    ids=["upstream", "redis_url"],
)
def test_an_ambiguous_authority_is_refused_at_load(section: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict(section)
    assert info.value.key == key
    assert "%40" in info.value.reason
    assert SECRET not in str(info.value)


def test_upstream_flag_and_unparsable_urls_are_refused_without_the_secret() -> None:
    with pytest.raises(ConfigError) as info:
        route_for_upstream(f"http://svc:p@{SECRET}@127.0.0.1:9")
    assert info.value.key == "--upstream"
    assert SECRET not in str(info.value)
    for bad in (f"http://svc:p@{SECRET}@host:port", f"http://svc:p@{SECRET}@[::1/x"):
        with pytest.raises(ConfigError) as info:
            config_from_dict({"routes": [{"prefix": "/", "upstream": bad}]})
        assert info.value.key == "routes[0].upstream"
        assert SECRET not in str(info.value)


def test_serve_refuses_an_ambiguous_upstream_and_names_the_key(tmp_path: Path) -> None:
    path = tmp_path / f"streamhop-{uuid.uuid4().hex[:8]}.toml"
    path.write_text(
        '[server]\nlisten = "127.0.0.1:0"\nadmin_listen = "127.0.0.1:0"\n\n'
        f'[[routes]]\nprefix = "/"\nupstream = "http://svc:p@{SECRET}@127.0.0.1:9"\n'
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamhop.sidecar.cli", "serve", "--config", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:  # it started serving: the refusal is missing
            proc.kill()
            proc.communicate()
    assert proc.returncode == 2
    text = (out + err).decode(errors="replace")
    assert "invalid config routes[0].upstream" in text
    assert "%40" in text
    assert SECRET not in text


# --- 2. upstream userinfo is the route's credential ------------------------------------------


def test_userinfo_and_an_authorization_route_header_are_refused_together() -> None:
    route = {
        "prefix": "/",
        "upstream": f"http://{USERINFO}@127.0.0.1:9",
        "headers": {"authorization": "Bearer route-key"},
    }
    with pytest.raises(ConfigError) as info:
        config_from_dict({"routes": [route]})
    assert info.value.key == "routes[0].upstream"
    assert SECRET not in str(info.value)
    assert "route-key" not in str(info.value)


class Recorder:
    """The ``Authorization`` values each upstream request carried."""

    def __init__(self) -> None:
        self.auth: list[list[str]] = []


def recording_app(rec: Recorder) -> web.Application:
    async def handle(request: web.Request) -> web.StreamResponse:
        await request.read()
        rec.auth.append(request.headers.getall("Authorization", []))
        if request.method != "POST":
            return web.json_response({"ok": True})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(chat_chunk("hello") + b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[BackgroundAiohttp, Recorder]]:
    rec = Recorder()
    with BackgroundAiohttp(recording_app(rec)) as server:
        yield server, rec


@pytest.fixture(scope="module")
def side(
    upstream: tuple[BackgroundAiohttp, Recorder], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[StreamhopProcess]:
    host = upstream[0].url.removeprefix("http://")
    config = f"""
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
drain_timeout_s = 1

[[routes]]
prefix = "/basic"
upstream = "http://{USERINFO}@{host}"

[[routes]]
prefix = "/down"
upstream = "http://{USERINFO}@127.0.0.1:9"
connect_timeout_s = 1
retries = 0
"""
    proc = serve(tmp_path_factory.mktemp("redaction"), config, log_level="info")
    yield proc
    proc.stop()


def _stream_ends(side: StreamhopProcess, route: str) -> int:
    """How many ``stream_end`` log lines of ``route`` the sidecar wrote so far."""
    return sum(
        '"event":"stream_end"' in line and f'"route":"{route}"' in line
        for line in side.stderr.splitlines()
    )


def _no_secret_in_logs(side: StreamhopProcess) -> None:
    """No traceback and no credential (route's or client's) in the sidecar's log so far."""
    logs = side.stderr
    assert "Traceback" not in logs
    for secret in (SECRET, "p%40ssw0rd", BASIC.removeprefix("Basic "), CLIENT_TOKEN):
        assert secret not in logs


async def _ws_frames(
    side: StreamhopProcess, path: str, headers: dict[str, str]
) -> list[dict[str, Any]]:
    """The frames a WebSocket ``request`` message gets, up to ``done``."""
    url = side.url.replace("http://", "ws://") + path
    async with websockets.connect(url, open_timeout=10) as ws:
        request = {"type": "request", "body": {"model": "m", "messages": []}, "headers": headers}
        await ws.send(orjson.dumps(request).decode())
        frames: list[dict[str, Any]] = []
        while True:
            frame = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
            frames.append(frame)
            if frame["type"] == "done":
                return frames


def _http(side: StreamhopProcess, method: str, path: str, **headers: str) -> tuple[int, bytes]:
    """One request through the sidecar: ``(status, body)``."""
    body = b'{"model": "m", "stream": true}' if method == "POST" else None

    async def go() -> tuple[int, bytes]:
        async with (
            aiohttp.ClientSession() as session,
            session.request(method, side.url + path, headers=headers, data=body) as resp,
        ):
            return resp.status, await resp.read()

    return asyncio.run(go())


def test_route_userinfo_replaces_the_clients_authorization(
    side: StreamhopProcess, upstream: tuple[BackgroundAiohttp, Recorder]
) -> None:
    rec = upstream[1]
    before = len(rec.auth)
    ends = _stream_ends(side, "/basic")
    status, body = _http(side, "GET", "/basic/v1/models", Authorization=f"Bearer {CLIENT_TOKEN}")
    assert status == 200, body
    assert orjson.loads(body) == {"ok": True}
    status, _ = _http(
        side, "POST", "/basic/v1/chat/completions", Authorization=f"Bearer {CLIENT_TOKEN}"
    )
    assert status == 200
    status, _ = _http(side, "GET", "/basic/v1/models")  # no client credential: the same
    assert status == 200
    assert rec.auth[before:] == [[BASIC]] * 3
    wait_for(lambda: _stream_ends(side, "/basic") >= ends + 3, 10, "three stream_end lines")
    _no_secret_in_logs(side)


def test_route_userinfo_replaces_a_websocket_requests_authorization(
    side: StreamhopProcess, upstream: tuple[BackgroundAiohttp, Recorder]
) -> None:
    rec = upstream[1]
    before = len(rec.auth)
    frames = asyncio.run(
        _ws_frames(side, "/basic/v1/chat/completions", {"Authorization": f"Bearer {CLIENT_TOKEN}"})
    )
    assert frames[-1]["reason"] == "complete", frames
    assert rec.auth[before:] == [[BASIC]]
    _no_secret_in_logs(side)


def test_userinfo_never_reaches_error_bodies_frames_or_logs(side: StreamhopProcess) -> None:
    status, body = _http(side, "GET", "/down/v1/models")
    assert status == 502
    assert b"***@127.0.0.1:9" in body
    frames = orjson.dumps(asyncio.run(_ws_frames(side, "/down/v1/chat/completions", {}))).decode()
    assert "upstream_connect" in frames
    assert "***@127.0.0.1:9" in frames
    for text in (body.decode(), frames):
        assert SECRET not in text
        assert "svc" not in text
    wait_for(lambda: "upstream http://***@127.0.0.1:9" in side.stderr, 10, "the connect error log")
    _no_secret_in_logs(side)
