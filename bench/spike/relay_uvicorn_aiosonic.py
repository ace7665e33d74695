"""Spike relay (d2): uvicorn (httptools, uvloop) in, aiosonic up.

The same raw ASGI app as relay_uvicorn_aiohttp.py with the upstream client swapped: one
``aiosonic.HTTPClient`` whose pool holds up to 1,024 connections, ``stream=True`` and
``read_chunks()`` per upstream chunk. Runs from build/spike-venv.
"""

from __future__ import annotations

from typing import Any

import aiosonic
import uvicorn
from aiosonic.connectors import TCPConnector
from aiosonic.pools import PoolConfig

from bench.spike.common import HOP_BY_HOP, parse_args

ARGS = parse_args(__doc__.split("\n")[0])
_client: aiosonic.HTTPClient | None = None


def client() -> aiosonic.HTTPClient:
    global _client
    if _client is None:
        connector = TCPConnector(pool_configs={":default": PoolConfig(size=1024)})
        _client = aiosonic.HTTPClient(connector=connector)
    return _client


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    headers = {k.decode(): v.decode() for k, v in scope["headers"] if k not in HOP_BY_HOP}
    url = ARGS.upstream + scope["raw_path"].decode()
    resp = await client().request(
        url, method=scope["method"], headers=headers, data=body, stream=True
    )
    out = [(b"content-type", resp.headers.get("content-type", "").encode())]
    length = resp.headers.get("content-length")
    if length is not None:
        out.append((b"content-length", length.encode()))
        whole = await resp.content()
        await send({"type": "http.response.start", "status": resp.status_code, "headers": out})
        await send({"type": "http.response.body", "body": whole})
        return
    await send({"type": "http.response.start", "status": resp.status_code, "headers": out})
    async for chunk in resp.read_chunks():
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
