"""A scripted real aiohttp upstream for integration tests.

Routes (any method unless noted):

* ``POST /fx/{name}/pace/{ms}/...``: replays ``tests/fixtures/{name}.sse`` as
  ``text/event-stream``; ``ms`` = 0 writes the whole recording in one write (a burst), otherwise
  one event every ``ms`` milliseconds, each event in two writes cut inside a UTF-8 sequence
  when it has one, else in the middle.
* ``/echo/...``: answers JSON with the method, path, query and headers it received.
* ``GET /bytes/gzip``: a fixed gzip-compressed JSON body with ``Content-Encoding: gzip``.
* ``GET /bytes/plain``: fixed JSON bytes with odd spacing and multi-byte text.
* ``POST /fault/{kind}``: a provider misbehaving (see :func:`fault`); the time the upstream saw
  its connection close is kept in :data:`CLOSED` by the request's ``x-request-id``.
* ``POST /burst/{size}``: OpenAI chat chunks carrying ``size`` bytes of text, written as fast as
  the socket takes them (for the slow-client memory bound).
"""

from __future__ import annotations

import asyncio
import gzip
import time
from typing import Any

import orjson
from aiohttp import web

from tests.support import FIXTURES, wait_for

PLAIN_BODY = '{"a" : 1,  "text": "°C 日本語 👩‍💻", "z":[1, 2 ,3]}\n'.encode()
GZIP_BODY = gzip.compress(PLAIN_BODY, mtime=0)


def fixture_events(name: str) -> list[bytes]:
    """The recording's events, each with its blank-line terminator, bytes as recorded."""
    raw = (FIXTURES / f"{name}.sse").read_bytes()
    return [part + b"\n\n" for part in raw.split(b"\n\n") if part.strip()]


def _cut(event: bytes) -> int:
    """An offset inside a multi-byte UTF-8 sequence if there is one, else the middle."""
    for i, byte in enumerate(event):
        if byte >= 0xC0:
            return i + 1
    return len(event) // 2


async def replay(request: web.Request) -> web.StreamResponse:
    await request.read()
    name = request.match_info["name"]
    pace_ms = float(request.match_info["ms"])
    events = fixture_events(name)
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
    await resp.prepare(request)
    if pace_ms == 0:
        await resp.write(b"".join(events))
    else:
        loop = asyncio.get_running_loop()
        start = loop.time()
        for i, event in enumerate(events):
            cut = _cut(event)
            await resp.write(event[:cut])
            await resp.write(event[cut:])
            delay = start + (i + 1) * pace_ms / 1000 - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
    await resp.write_eof()
    return resp


async def echo(request: web.Request) -> web.Response:
    body = await request.read()
    return web.json_response(
        {
            "method": request.method,
            "path": request.path,
            "raw_path": request.raw_path,
            "headers": [[k.lower(), v] for k, v in request.headers.items()],
            "body": body.decode(errors="replace"),
        }
    )


async def gzip_bytes(request: web.Request) -> web.Response:
    return web.Response(
        body=GZIP_BODY,
        headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
    )


async def plain_bytes(request: web.Request) -> web.Response:
    return web.Response(body=PLAIN_BODY, headers={"Content-Type": "application/json"})


BURST_PIECE = "ab°c日本👩‍💻" * 50
"""The text of every ``/burst`` chunk: about 1 KiB of UTF-8 with multi-byte characters."""

CLOSED: dict[str, float] = {}
"""x-request-id -> ``time.monotonic()`` when a fault handler saw its client (the sidecar) close."""


def chat_chunk(text: str) -> bytes:
    """One OpenAI chat chunk event carrying ``text``."""
    return chat_delta({"content": text})


def chat_delta(delta: dict[str, Any]) -> bytes:
    """One OpenAI chat chunk event whose first choice carries ``delta``."""
    chunk = {
        "id": "chatcmpl-fault",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "fault",
        "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
    }
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


async def _sse(request: web.Request) -> web.StreamResponse:
    await request.read()
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    return resp


async def until_closed(request: web.Request, bound_s: float = 30.0) -> None:
    """Hang, as a stuck provider does, until the peer closes the connection (at most
    ``bound_s``). aiohttp tells a handler nothing when its client leaves, so the transport is
    looked at every 10 ms."""
    deadline = time.monotonic() + bound_s
    while time.monotonic() < deadline:
        transport = request.transport
        if transport is None or transport.is_closing():
            return
        await asyncio.sleep(0.01)


async def _hang_until_closed(request: web.Request) -> None:
    """:func:`until_closed`, then note when in :data:`CLOSED`."""
    try:
        await until_closed(request)
    finally:
        CLOSED[request.headers.get("x-request-id", "")] = time.monotonic()


def wait_closed(rid: str, bound_s: float = 10.0) -> float:
    """When (``time.monotonic()``) a fault handler saw request ``rid``'s connection close."""
    return wait_for(lambda: CLOSED.get(rid), bound_s, f"the upstream to see request {rid} close")


async def fault(request: web.Request) -> web.StreamResponse:
    """A provider fault, by ``kind``:

    * ``drop``: two text chunks, then the TCP connection is closed mid-stream;
    * ``hang-headers``: no response headers for 30 s;
    * ``hang-body``: one text chunk, then nothing until the peer closes;
    * ``malformed``: a chunk whose data is not JSON between two good ones, then ``[DONE]``;
    * ``huge``: one text chunk, then a 2 MiB event;
    * ``truncated``: one text chunk, then half an event and a clean end of body;
    * ``status``: 429 with a JSON error body and ``Retry-After``.
    """
    kind = request.match_info["kind"]
    if kind == "hang-headers":
        await _hang_until_closed(request)
        return web.Response(status=500)
    if kind == "status":
        await request.read()
        return web.json_response(
            {"error": {"message": "slow down", "type": "rate_limit", "code": "rate_limit"}},
            status=429,
            headers={"Retry-After": "7"},
        )
    resp = await _sse(request)
    if kind == "drop":
        await resp.write(chat_chunk("one ") + chat_chunk("two "))
        await asyncio.sleep(0.05)  # the provider's pace: it dies a moment after writing
        assert request.transport is not None
        request.transport.close()
        return resp
    if kind == "hang-body":
        await resp.write(chat_chunk("before the hang"))
        await _hang_until_closed(request)
        return resp
    if kind == "malformed":
        await resp.write(chat_chunk("good "))
        await resp.write(b"data: {not json at all\n\n")
        await resp.write(chat_chunk("after"))
        await resp.write(b"data: [DONE]\n\n")
    elif kind == "huge":
        await resp.write(chat_chunk("small "))
        try:
            await resp.write(b"data: " + b"x" * (2 * 1024 * 1024) + b"\n\n")
            await _hang_until_closed(request)
        except ConnectionError:
            CLOSED[request.headers.get("x-request-id", "")] = time.monotonic()
        return resp
    elif kind == "truncated":
        await resp.write(chat_chunk("whole "))
        await resp.write(b'data: {"choices": [{"delta": {"content": "ha')
    await resp.write_eof()
    return resp


async def burst(request: web.Request) -> web.StreamResponse:
    """``size`` bytes of text in 1 KiB chunk events, then ``[DONE]``, as fast as possible."""
    size = int(request.match_info["size"])
    resp = await _sse(request)
    event = chat_chunk(BURST_PIECE)
    step = len(BURST_PIECE.encode())
    sent = 0
    try:
        while sent < size:
            await resp.write(event)
            sent += step
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
    except (ConnectionError, asyncio.CancelledError):
        CLOSED[request.headers.get("x-request-id", "")] = time.monotonic()
        raise
    return resp


def make_app() -> web.Application:
    app = web.Application()
    app.router.add_post("/fx/{name}/pace/{ms}/{rest:.*}", replay)
    app.router.add_route("*", "/echo/{rest:.*}", echo)
    app.router.add_get("/bytes/gzip", gzip_bytes)
    app.router.add_get("/bytes/plain", plain_bytes)
    app.router.add_post("/fault/{kind:[^/]+}{rest:.*}", fault)
    app.router.add_post("/burst/{size}", burst)
    return app
