"""Spike relay (a): uvicorn (httptools, uvloop) in, aiohttp client up — today's sidecar stack.

A raw ASGI app (no Starlette, no middleware): read the request body, POST it upstream through
one pooled ``aiohttp.ClientSession``, send the head, then one ``http.response.body`` message per
chunk ``iter_any()`` yields. A body with a ``content-length`` (non-streaming) is read whole
and sent in one message, as a real proxy would.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import uvicorn

from bench.spike.common import HOP_BY_HOP, parse_args

ARGS = parse_args(__doc__.split("\n")[0])
_session: aiohttp.ClientSession | None = None


def session() -> aiohttp.ClientSession:
    global _session
    if _session is None:
        connector = aiohttp.TCPConnector(limit=0, force_close=False)
        _session = aiohttp.ClientSession(
            connector=connector, auto_decompress=False, skip_auto_headers=("User-Agent",)
        )
    return _session


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    headers = [(k.decode(), v.decode()) for k, v in scope["headers"] if k not in HOP_BY_HOP]
    url = ARGS.upstream + scope["raw_path"].decode()
    async with session().request(scope["method"], url, data=body, headers=headers) as resp:
        out = [(b"content-type", resp.headers.get("content-type", "").encode())]
        length = resp.headers.get("content-length")
        if length is not None:
            out.append((b"content-length", length.encode()))
            whole = await resp.read()
            await send({"type": "http.response.start", "status": resp.status, "headers": out})
            await send({"type": "http.response.body", "body": whole})
            return
        await send({"type": "http.response.start", "status": resp.status, "headers": out})
        async for chunk in resp.content.iter_any():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})


if __name__ == "__main__":
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=ARGS.port,
        loop="uvloop",
        http="httptools",
        lifespan="off",
        access_log=False,
        log_level="warning",
        backlog=2048,
    )
