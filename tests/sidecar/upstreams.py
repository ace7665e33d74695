"""A scripted real aiohttp upstream for integration tests.

Routes (any method unless noted):

* ``POST /fx/{name}/pace/{ms}/...``: replays ``../shared/fixtures/{name}.sse`` as
  ``text/event-stream``; ``ms`` = 0 writes the whole recording in one write (a burst), otherwise
  one event every ``ms`` milliseconds, each event in two writes cut inside a UTF-8 sequence
  when it has one, else in the middle.
* ``/echo/...``: answers JSON with the method, path, query and headers it received.
* ``GET /bytes/gzip``: a fixed gzip-compressed JSON body with ``Content-Encoding: gzip``.
* ``GET /bytes/plain``: fixed JSON bytes with odd spacing and multi-byte text.
"""

from __future__ import annotations

import asyncio
import gzip

import orjson
from aiohttp import web

from tests.support import FIXTURES

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


def make_app() -> web.Application:
    app = web.Application()
    app.router.add_post("/fx/{name}/pace/{ms}/{rest:.*}", replay)
    app.router.add_route("*", "/echo/{rest:.*}", echo)
    app.router.add_get("/bytes/gzip", gzip_bytes)
    app.router.add_get("/bytes/plain", plain_bytes)
    return app


def dumps(obj: object) -> bytes:
    return orjson.dumps(obj)
