"""WebSocket generations survive a rolling restart too: with a shared Redis resume store, the
draining replica sends ``reconnect``; the client resumes on the other replica with a
``resume`` message and gets the rest, to ``done`` ``complete``, from one generation."""

from __future__ import annotations

import contextlib
import signal
import uuid
from typing import Any

import httpx2
import orjson
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.cluster import ReadyBalancer
from tests.support import (
    CHAT,
    SLOW_SIM,
    StartSidecar,
    StreamhopProcess,
    chat_body,
    chat_text,
    sim_record,
    sse_events,
)


async def _frames_until(ws: Any, stop: str) -> list[dict[str, Any]]:
    frames = []
    while True:
        frame = orjson.loads(await ws.recv())
        frames.append(frame)
        if frame["type"] == stop:
            return frames


async def test_reconnect_then_resume_on_another_replica(
    simulator: StreamhopProcess, start_sidecar: StartSidecar, shared_redis: str
) -> None:
    resume = (
        f'[resume]\nenabled = true\nstore = "redis"\nredis_url = "{shared_redis}"\n'
        'binding_key = "shared"\nhandoff_jitter_ms = 100\nwindow_s = 60'
    )
    a = start_sidecar(simulator.url, server="drain_timeout_s = 30", sections=resume)
    b = start_sidecar(simulator.url, server="drain_timeout_s = 30", sections=resume)
    rid = uuid.uuid4().hex
    body = chat_body(f"ws handoff {rid}", 200, stream=None)
    handshake = {"authorization": "Bearer caller-a"}
    with ReadyBalancer([a, b]) as balancer:
        url = balancer.url.replace("http://", "ws://") + CHAT
        async with connect(url, additional_headers=handshake, open_timeout=10) as ws:
            await ws.send(
                orjson.dumps(
                    {"type": "request", "body": body, "headers": {**SLOW_SIM, "x-request-id": rid}}
                ).decode()
            )
            before = []
            while len(before) < 4:
                frame = orjson.loads(await ws.recv())
                assert frame["type"] == "event", frame
                before.append(frame)
            a.proc.send_signal(signal.SIGTERM)
            rest = await _frames_until(ws, "reconnect")
            reconnect = rest[-1]
            before += [f for f in rest if f["type"] == "event"]
            with contextlib.suppress(ConnectionClosed):
                await ws.recv()  # the draining replica closes the socket
        assert reconnect["stream_id"] == before[0]["id"].partition(":")[0]
        assert reconnect["last_seq"] >= int(before[-1]["id"].partition(":")[2])
        # Reconnect (the balancer now routes to B) and resume after the last event we have.
        async with connect(url, additional_headers=handshake, open_timeout=10) as ws:
            after_seq = int(before[-1]["id"].partition(":")[2])
            await ws.send(
                orjson.dumps(
                    {"type": "resume", "stream_id": reconnect["stream_id"], "after": after_seq}
                ).decode()
            )
            after = await _frames_until(ws, "done")
        routed = list(balancer.routed)
    assert routed == [0, 1]
    assert after[-1] == {"type": "done", "reason": "complete"}
    events = before + [f for f in after if f["type"] == "event"]
    seqs = [int(f["id"].partition(":")[2]) for f in events]
    assert seqs == list(range(1, len(events) + 1))  # none lost, none repeated
    assert events[-1]["data"] == "[DONE]"
    direct = httpx2.post(simulator.url + CHAT, json={**body, "stream": True}, timeout=60)
    direct_text = chat_text(orjson.loads(e["data"]) for e in sse_events(direct.content)[0][:-1])
    assert chat_text(f["data"] for f in events[:-1]) == direct_text
    assert sim_record(simulator.url, rid)["outcome"] == "complete"
    records = httpx2.get(simulator.url + "/_simulator/streams", timeout=10).json()
    assert sum(1 for r in records if r["id"] == rid) == 1


async def test_resume_with_other_credentials_is_not_found(
    simulator: StreamhopProcess, start_sidecar: StartSidecar
) -> None:
    side = start_sidecar(simulator.url, sections="[resume]\nenabled = true")
    url = side.url.replace("http://", "ws://") + CHAT
    body = chat_body("ws resume", 20, stream=None)
    async with connect(url, additional_headers={"authorization": "Bearer a"}) as ws:
        await ws.send(orjson.dumps({"type": "request", "body": body}).decode())
        frames = await _frames_until(ws, "done")
    stream_id = frames[0]["id"].partition(":")[0]
    resume = orjson.dumps({"type": "resume", "stream_id": stream_id, "after": 2}).decode()
    async with connect(url, additional_headers={"authorization": "Bearer a"}) as ws:
        await ws.send(resume)
        again = await _frames_until(ws, "done")
    assert again[-1] == {"type": "done", "reason": "complete"}
    assert [f["id"] for f in again[:-1]] == [f["id"] for f in frames[2:-1]]
    async with connect(url, additional_headers={"authorization": "Bearer b"}) as ws:
        await ws.send(resume)
        refused = await _frames_until(ws, "done")
    assert refused[0]["type"] == "error" and refused[0]["error"]["code"] == "stream_not_found"
    assert refused[-1] == {"type": "done", "reason": "error"}
    # The same log over HTTP (Last-Event-ID), with the same credentials: one binding for both
    # transports, even with a per-process random binding key.
    over_http = httpx2.post(
        side.url + CHAT,
        json=body,
        headers={"authorization": "Bearer a", "last-event-id": frames[1]["id"]},
        timeout=30,
    )
    assert over_http.status_code == 200
    events, _ = sse_events(over_http.content)
    assert [e["id"] for e in events] == [f["id"] for f in frames[2:-1]]
