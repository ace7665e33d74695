"""Spike relay (d1): uvicorn (httptools, uvloop) in, pyreqwest (Rust reqwest/hyper) up.

The same raw ASGI app as relay_uvicorn_aiohttp.py with the upstream client swapped: one pooled
``pyreqwest`` client (its default single-threaded Tokio runtime), ``build_streamed()`` and
``body_reader.read_chunk()`` per upstream chunk. Runs from build/spike-venv.
"""

from __future__ import annotations

from typing import Any

import uvicorn
from pyreqwest.client import Client, ClientBuilder

from bench.spike.common import HOP_BY_HOP, parse_args

ARGS = parse_args(__doc__.split("\n")[0])
_client: Client | None = None


def client() -> Client:
    global _client
    if _client is None:
        _client = ClientBuilder().gzip(False).build()
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
    headers = [(k.decode(), v.decode()) for k, v in scope["headers"] if k not in HOP_BY_HOP]
    url = ARGS.upstream + scope["raw_path"].decode()
    request = client().request(scope["method"], url).headers(headers).body_bytes(body)
    async with request.build_streamed() as resp:
        out = [(b"content-type", (resp.get_header("content-type") or "").encode())]
        length = resp.get_header("content-length")
        reader = resp.body_reader
        if length is not None:
            out.append((b"content-length", length.encode()))
            parts = []
            while (chunk := await reader.read_chunk()) is not None:
                parts.append(bytes(chunk))
            await send({"type": "http.response.start", "status": resp.status, "headers": out})
            await send({"type": "http.response.body", "body": b"".join(parts)})
            return
        await send({"type": "http.response.start", "status": resp.status, "headers": out})
        while (chunk := await reader.read_chunk()) is not None:
            await send({"type": "http.response.body", "body": bytes(chunk), "more_body": True})
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
