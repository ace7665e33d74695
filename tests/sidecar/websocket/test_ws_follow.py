"""WebSocket followers (``{"type": "follow", ...}``, docs/websocket.md): another socket reads a
running generation from its first event, against a real sidecar in front of the real simulator;
an HTTP follower reads the same log."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx2
import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect

from streamhop.sidecar.websocket.messages import (
    MessageError,
    ResumeMessage,
    parse_client_frame,
)
from tests.support import StartSidecar, StreamhopProcess, chat_body, metric, sse_events, wait_for

pytestmark = pytest.mark.integration

BOUND_S = 20.0
CREDENTIALS = {"Authorization": "Bearer caller-a"}
PACE = {"x-sim-events-per-second": "100", "x-sim-tokens-per-second": "500"}
"""About a second for 500 tokens: a follower attaches while the generation runs."""


def test_follow_parses_as_a_follower_resume() -> None:
    parsed = parse_client_frame('{"type": "follow", "stream_id": "0123456789abcdef"}')
    assert parsed == ResumeMessage("0123456789abcdef", 0, (), follower=True)
    resumed = parse_client_frame('{"type": "resume", "stream_id": "0123456789abcdef"}')
    assert resumed == ResumeMessage("0123456789abcdef", 0, ())
    with pytest.raises(MessageError) as refused:
        parse_client_frame('{"type": "follow"}')
    assert refused.value.code == "invalid_message"
    assert "a follow needs 'stream_id'" in str(refused.value)


def _ws_url(side: StreamhopProcess) -> str:
    return "ws://" + side.url.removeprefix("http://") + "/v1/chat/completions"


async def _frames(ws: ClientConnection) -> list[str]:
    """Every frame's text up to and including the next ``done``."""
    texts = []
    while True:
        async with asyncio.timeout(BOUND_S):
            text = await ws.recv()
        assert isinstance(text, str)
        texts.append(text)
        if orjson.loads(text)["type"] == "done":
            return texts


async def _follow(side: StreamhopProcess, stream_id: str, headers: dict[str, str]) -> list[str]:
    async with connect(_ws_url(side), open_timeout=BOUND_S) as ws:
        message = {"type": "follow", "stream_id": stream_id, "headers": headers}
        await ws.send(orjson.dumps(message).decode())
        return await _frames(ws)


def _followers(side: StreamhopProcess) -> float:
    assert side.admin_url is not None
    return metric(side.admin_url, "streamhop_followers", route="/")


def test_a_second_socket_follows_a_running_generation(
    simulator: StreamhopProcess, start_sidecar: StartSidecar
) -> None:
    side = start_sidecar(simulator.url, sections="[resume]\nenabled = true\nwindow_s = 60")
    assert side.admin_url is not None

    async def scenario() -> tuple[list[str], list[str], list[str]]:
        async with connect(_ws_url(side), open_timeout=BOUND_S) as ws:
            request = {
                "type": "request",
                "body": chat_body("follow me", 500, model="sim", stream=None),
                "headers": {**CREDENTIALS, **PACE},
            }
            await ws.send(orjson.dumps(request).decode())
            async with asyncio.timeout(BOUND_S):
                first = await ws.recv()
            assert isinstance(first, str)
            stream_id = orjson.loads(first)["id"].rpartition(":")[0]
            follower = asyncio.create_task(_follow(side, stream_id, CREDENTIALS))
            original = [first, *await _frames(ws)]
            followed = await follower
        other = await _follow(side, stream_id, {"Authorization": "Bearer caller-b"})
        return original, followed, other

    original, followed, other = asyncio.run(scenario())
    # The follower got exactly the generation's messages, ids included, and the same end.
    assert followed == original
    events = [orjson.loads(t) for t in original[:-1]]
    assert all(e["type"] == "event" for e in events)
    assert orjson.loads(original[-1]) == {"type": "done", "reason": "complete"}
    stream_id = events[0]["id"].rpartition(":")[0]
    # Another caller: the same error as an unknown stream.
    assert [orjson.loads(t)["type"] for t in other] == ["error", "done"]
    assert orjson.loads(other[0])["error"]["code"] == "stream_not_found"
    # An HTTP follower reads the same log: the same events, by id.
    with httpx2.Client(timeout=BOUND_S) as http:
        answer = http.get(
            f"{side.url}/streamhop/v1/streams/{stream_id}",
            headers={"accept": "text/event-stream", **CREDENTIALS},
        )
    assert answer.status_code == 200
    sse, rest = sse_events(answer.content)
    assert rest == b""
    assert [e["id"] for e in sse] == [e["id"] for e in events]
    wait_for(lambda: _followers(side) == 0, BOUND_S, "no follower open")
    sent = sum(len(t.encode()) for t in followed + other) + len(answer.content)
    assert metric(side.admin_url, "streamhop_follower_bytes_total", route="/") == sent


def test_follow_with_resume_off_is_an_error(sidecar: StreamhopProcess) -> None:
    """The session sidecar has ``[resume]`` off."""

    async def scenario() -> dict[str, Any]:
        url = "ws://" + sidecar.url.removeprefix("http://") + "/sim/v1/chat/completions"
        async with connect(url, open_timeout=BOUND_S) as ws:
            await ws.send('{"type": "follow", "stream_id": "0123456789abcdef"}')
            async with asyncio.timeout(BOUND_S):
                reply: dict[str, Any] = orjson.loads(await ws.recv())
        return reply

    reply = asyncio.run(scenario())
    assert reply["type"] == "error"
    assert reply["error"]["code"] == "resume_disabled"
