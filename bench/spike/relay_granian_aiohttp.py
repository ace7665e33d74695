"""Spike relay (c): granian's RSGI server (Rust, hyper) in, aiohttp client up.

Started by the runner as ``granian --interface rsgi bench.spike.relay_granian_aiohttp:app``
(working dir: the repository root) from build/spike-venv, one worker, uvloop, access log off;
the upstream URL comes from the ``SPIKE_UPSTREAM`` environment variable (granian owns the
command line). ``await proto()`` reads the request body; a streamed answer goes out through
``proto.response_stream()`` one ``send_bytes`` per chunk ``iter_any()`` yields; a body with a
``content-length`` is read whole and sent with ``response_bytes``.
"""

from __future__ import annotations

import os
from typing import Any

import aiohttp

from bench.spike.common import HOP_BY_HOP

UPSTREAM = os.environ.get("SPIKE_UPSTREAM", "http://127.0.0.1:1").rstrip("/")


class App:
    """The RSGI application; one aiohttp session per worker, made in ``__rsgi_init__``."""

    def __init__(self) -> None:
        self.session: aiohttp.ClientSession | None = None

    def __rsgi_init__(self, loop: Any) -> None:
        pass

    def _session(self) -> aiohttp.ClientSession:
        if self.session is None:
            self.session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0),
                auto_decompress=False,
                skip_auto_headers=("User-Agent",),
            )
        return self.session

    async def __rsgi__(self, scope: Any, proto: Any) -> None:
        body = await proto()
        headers = [(k, v) for k, v in scope.headers.items() if k.lower() not in HOP_BY_HOP]
        url = UPSTREAM + scope.path + (f"?{scope.query_string}" if scope.query_string else "")
        async with self._session().request(scope.method, url, data=body, headers=headers) as resp:
            out = [("content-type", resp.headers.get("content-type", ""))]
            length = resp.headers.get("content-length")
            if length is not None:
                whole = await resp.read()
                proto.response_bytes(resp.status, out, whole)
                return
            transport = proto.response_stream(resp.status, out)
            async for chunk in resp.content.iter_any():
                await transport.send_bytes(chunk)


app = App()
