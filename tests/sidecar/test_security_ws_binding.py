"""The resume binding of a WebSocket generation: bound to the credentials that went upstream.

docs/websocket.md shows the browser pattern: no credentials on the handshake (a browser cannot
set ``Authorization`` there), ``Authorization`` in the ``request`` message. The log of such a
generation must be bound to that ``Authorization``, so a resume without it (HTTP
``Last-Event-ID`` or WebSocket ``resume``) finds nothing, and the caller's own resume with it
(HTTP header, or the ``resume`` message's ``headers``) finds the log.

Uses the real sidecar and recording provider of test_security.py (route ``/other``, resume on).
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson
import websockets

from tests.sidecar.test_security import provider, side  # noqa: F401  (module fixtures)
from tests.support import StreamhopProcess

BOUND_S = 10.0
VICTIM = {"Authorization": "Bearer victim-credentials"}


async def _frames(ws: Any) -> list[dict[str, Any]]:
    """Every frame up to and including the next ``done``."""
    out: list[dict[str, Any]] = []
    while True:
        frame = orjson.loads(await asyncio.wait_for(ws.recv(), BOUND_S))
        out.append(frame)
        if frame["type"] == "done":
            return out


def _ws_url(proc: StreamhopProcess) -> str:
    return proc.url.replace("http://", "ws://") + "/other/sse/chat"


async def _generate(proc: StreamhopProcess) -> str:
    """A generation started the browser way; returns its stream id."""
    async with websockets.connect(_ws_url(proc), open_timeout=BOUND_S) as ws:
        request = {"type": "request", "body": {"model": "m"}, "headers": VICTIM}
        await ws.send(orjson.dumps(request).decode())
        frames = await _frames(ws)
    assert frames[-1] == {"type": "done", "reason": "complete"}, frames
    ids = [f["id"] for f in frames if f["type"] == "event" and "id" in f]
    assert ids, "events carry ids with [resume] on"
    return str(ids[0]).rpartition(":")[0]


async def _ws_resume(proc: StreamhopProcess, stream_id: str, headers: dict[str, str]) -> str:
    async with websockets.connect(_ws_url(proc), open_timeout=BOUND_S) as ws:
        message: dict[str, Any] = {"type": "resume", "stream_id": stream_id, "after": 0}
        if headers:
            message["headers"] = headers
        await ws.send(orjson.dumps(message).decode())
        frames = await _frames(ws)
    errors = [f["error"]["code"] for f in frames if f["type"] == "error"]
    return errors[0] if errors else frames[-1]["reason"]


async def _http_resume(proc: StreamhopProcess, stream_id: str, headers: dict[str, str]) -> int:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            proc.url + "/other/sse/chat",
            json={},
            headers={**headers, "Last-Event-ID": f"{stream_id}:0"},
            timeout=aiohttp.ClientTimeout(total=BOUND_S),
        ) as resp,
    ):
        await resp.read()
        return resp.status


def test_a_generation_started_with_credentials_in_the_message_is_bound_to_them(
    side: StreamhopProcess,  # noqa: F811
) -> None:
    async def scenario() -> dict[str, object]:
        stream_id = await _generate(side)
        return {
            "http_without": await _http_resume(side, stream_id, {}),
            "http_other": await _http_resume(side, stream_id, {"Authorization": "Bearer b"}),
            "http_victim": await _http_resume(side, stream_id, VICTIM),
            "ws_without": await _ws_resume(side, stream_id, {}),
            "ws_victim": await _ws_resume(side, stream_id, VICTIM),
        }

    assert asyncio.run(scenario()) == {
        "http_without": 404,
        "http_other": 404,
        "http_victim": 200,
        "ws_without": "stream_not_found",
        "ws_victim": "complete",
    }
