"""The WebSocket bridge against the real sidecar process and the real simulator (loopback only).

Protocol reference: docs/websocket.md. Every wait is bounded; texts are compared with the same
request made directly to the simulator over HTTP (its output is deterministic per request body).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from prometheus_client import CollectorRegistry
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from streamhop.middleware.observe.metrics import Metrics
from streamhop.sidecar.config import config_from_dict
from streamhop.sidecar.http.proxy import Proxy
from streamhop.sidecar.observe.record import StreamRecord
from streamhop.sidecar.upstream.edge import EdgeContext
from streamhop.sidecar.upstream.pool import UpstreamPool
from streamhop.sidecar.upstream.registry import SidecarState
from tests.support import (
    SLOW_SIM,
    Scrape,
    StreamhopProcess,
    chat_body,
    chat_text,
    delta,
    sim_record,
    sse_data,
    wait_idle,
)

pytestmark = pytest.mark.integration

BOUND_S = 20.0


def _chat(prompt: str, max_tokens: int = 60, model: str = "sim") -> dict[str, Any]:
    """A Chat Completions body as a WebSocket ``request`` carries it (``stream`` left out)."""
    return chat_body(prompt, max_tokens, model=model, stream=None)


def _anthropic(prompt: str, max_tokens: int = 60) -> dict[str, Any]:
    return {
        "model": "sim-claude",
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": prompt}],
    }


def _ws_url(sidecar: StreamhopProcess, path: str) -> str:
    return "ws://" + sidecar.url.removeprefix("http://") + path


@pytest.fixture
async def chat_ws(sidecar: StreamhopProcess) -> AsyncIterator[ClientConnection]:
    async with connect(_ws_url(sidecar, "/sim/v1/chat/completions")) as ws:
        yield ws


async def _recv(ws: ClientConnection) -> dict[str, Any]:
    async with asyncio.timeout(BOUND_S):
        message: dict[str, Any] = orjson.loads(await ws.recv())
    return message


async def _until_done(ws: ClientConnection) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every message up to and including the next ``done``: (others, done)."""
    seen: list[dict[str, Any]] = []
    while True:
        message = await _recv(ws)
        if message["type"] == "done":
            return seen, message
        seen.append(message)


def _anthropic_text(datas: list[Any]) -> str:
    text = []
    for data in datas:
        if isinstance(data, dict) and data.get("type") == "content_block_delta":
            text.append(data["delta"].get("text", ""))
    return "".join(text)


async def _direct(simulator: StreamhopProcess, path: str, body: dict[str, Any]) -> list[Any]:
    """The data of every SSE event the simulator sends for ``body`` over plain HTTP."""
    timeout = aiohttp.ClientTimeout(total=BOUND_S)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.post(simulator.url + path, json={**body, "stream": True}) as resp,
    ):
        assert resp.status == 200
        raw = await resp.read()
    return sse_data(raw)


async def _sim_outcome(simulator: StreamhopProcess, rid: str) -> dict[str, Any]:
    return await asyncio.to_thread(sim_record, simulator.url, rid, BOUND_S)


async def _idle(sidecar: StreamhopProcess) -> Scrape:
    """The session sidecar's metrics once nothing is in flight on ``/sim`` (other tests share
    it: a count taken between two idle scrapes is this test's alone)."""
    assert sidecar.admin_url is not None
    return await asyncio.to_thread(wait_idle, sidecar.admin_url, "/sim", BOUND_S)


async def test_chat_generation_completes_with_fewer_larger_events(
    simulator: StreamhopProcess, chat_ws: ClientConnection
) -> None:
    body = _chat("websocket chat", max_tokens=200)
    await chat_ws.send(orjson.dumps({"type": "request", "body": body}).decode())
    messages, done = await _until_done(chat_ws)

    assert done == {"type": "done", "reason": "complete"}
    assert all(m["type"] == "event" for m in messages)
    direct = await _direct(simulator, "/v1/chat/completions", body)
    datas = [m["data"] for m in messages]
    assert chat_text(datas) == chat_text(direct) != ""
    assert datas[-1] == "[DONE]"
    assert len(messages) < len(direct)


async def test_anthropic_generation_completes(
    simulator: StreamhopProcess, sidecar: StreamhopProcess
) -> None:
    body = _anthropic("websocket anthropic", max_tokens=150)
    async with connect(_ws_url(sidecar, "/sim/v1/messages")) as ws:
        await ws.send(orjson.dumps({"type": "request", "body": body}).decode())
        messages, done = await _until_done(ws)

    assert done["reason"] == "complete"
    direct = await _direct(simulator, "/v1/messages", body)
    assert _anthropic_text([m["data"] for m in messages]) == _anthropic_text(direct) != ""
    assert messages[0]["event"] == "message_start"
    assert messages[-1]["event"] == "message_stop"
    assert len(messages) < len(direct)


async def test_cancel_mid_stream_closes_upstream(
    simulator: StreamhopProcess, sidecar: StreamhopProcess, chat_ws: ClientConnection
) -> None:
    before = await _idle(sidecar)
    rid = f"ws-cancel-{uuid.uuid4().hex[:8]}"
    request = {
        "type": "request",
        "body": _chat("cancel me", max_tokens=2000),
        "headers": {**SLOW_SIM, "x-request-id": rid},
    }
    await chat_ws.send(orjson.dumps(request).decode())
    first = await _recv(chat_ws)
    assert first["type"] == "event"
    await chat_ws.send('{"type": "cancel"}')
    sent_cancel = time.monotonic()
    messages, done = await _until_done(chat_ws)

    assert done["reason"] == "cancelled"
    assert all(m["type"] == "event" for m in messages)
    record = await _sim_outcome(simulator, rid)
    assert record["outcome"] == "client_closed"
    assert record["ended"] - sent_cancel < 2.0
    after = await _idle(sidecar)
    name = "streamhop_cancellations_total"
    assert delta(before, after, name, route="/sim", reason="interrupt") == 1
    assert delta(before, after, name, route="/sim") == 1
    # The socket stays usable; nothing is left to cancel.
    await chat_ws.send('{"type": "cancel"}')
    error = await _recv(chat_ws)
    assert error["type"] == "error" and error["error"]["code"] == "nothing_to_cancel"


async def test_new_request_cuts_over_the_running_one(
    simulator: StreamhopProcess, chat_ws: ClientConnection
) -> None:
    rid = f"ws-cut-{uuid.uuid4().hex[:8]}"
    first = {
        "type": "request",
        "body": _chat("first generation", max_tokens=2000, model="sim-first"),
        "headers": {**SLOW_SIM, "x-request-id": rid},
    }
    second_body = _chat("second generation", max_tokens=80, model="sim-second")
    await chat_ws.send(orjson.dumps(first).decode())
    assert (await _recv(chat_ws))["type"] == "event"
    await chat_ws.send(orjson.dumps({"type": "request", "body": second_body}).decode())

    old, interrupted = await _until_done(chat_ws)
    assert interrupted["reason"] == "interrupted"
    assert all(m["data"]["model"] == "sim-first" for m in old)
    new, done = await _until_done(chat_ws)
    assert done["reason"] == "complete"
    models = {m["data"]["model"] for m in new if isinstance(m["data"], dict)}
    assert models == {"sim-second"}  # no event of the first after its done
    direct = await _direct(simulator, "/v1/chat/completions", second_body)
    assert chat_text([m["data"] for m in new]) == chat_text(direct)
    assert (await _sim_outcome(simulator, rid))["outcome"] == "client_closed"


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("this is not json", "invalid_json"),
        ("[1, 2]", "invalid_message"),
        ('{"kind": "request"}', "invalid_message"),
        ('{"type": "pause"}', "unknown_type"),
        ('{"type": "resume"}', "invalid_message"),
        ('{"type": "request"}', "invalid_body"),
        ('{"type": "request", "body": "hi"}', "invalid_body"),
        ('{"type": "request", "body": {}, "headers": {"x": 1}}', "invalid_headers"),
        ('{"type": "request", "body": {}, "headers": {"a b": "c"}}', "invalid_headers"),
        (
            '{"type": "request", "body": {}, "headers": {"x-streamhop-mode": "fast"}}',
            "bad_control_header",
        ),
        ('{"type": "cancel"}', "nothing_to_cancel"),
    ],
)
async def test_bad_frame_gets_error_and_socket_stays_usable(
    simulator: StreamhopProcess, chat_ws: ClientConnection, frame: str, code: str
) -> None:
    await chat_ws.send(frame)
    error = await _recv(chat_ws)
    assert error["type"] == "error"
    assert error["error"]["code"] == code
    assert error["error"]["message"]

    await chat_ws.send(orjson.dumps({"type": "request", "body": _chat("after", 20)}).decode())
    messages, done = await _until_done(chat_ws)
    assert done["reason"] == "complete"
    assert chat_text([m["data"] for m in messages])


async def test_closing_the_socket_mid_generation_closes_upstream(
    simulator: StreamhopProcess, sidecar: StreamhopProcess
) -> None:
    before = await _idle(sidecar)
    rid = f"ws-close-{uuid.uuid4().hex[:8]}"
    async with connect(_ws_url(sidecar, "/sim/v1/chat/completions")) as ws:
        request = {
            "type": "request",
            "body": _chat("leave early", max_tokens=2000),
            "headers": {**SLOW_SIM, "x-request-id": rid},
        }
        await ws.send(orjson.dumps(request).decode())
        assert (await _recv(ws))["type"] == "event"
    closed = time.monotonic()
    record = await _sim_outcome(simulator, rid)
    assert record["outcome"] == "client_closed"
    assert record["ended"] - closed < 2.0
    after = await _idle(sidecar)
    name = "streamhop_cancellations_total"
    assert delta(before, after, name, route="/sim", reason="client_disconnect") == 1
    assert delta(before, after, name, route="/sim") == 1


async def test_upstream_error_status_is_an_error_then_done(sidecar: StreamhopProcess) -> None:
    async with connect(_ws_url(sidecar, "/fault/status/v1/chat/completions")) as ws:
        await ws.send(orjson.dumps({"type": "request", "body": _chat("x")}).decode())
        messages, done = await _until_done(ws)
    assert done["reason"] == "error"
    [error] = messages
    assert error["error"]["code"] == "upstream_status"
    assert error["error"]["status"] == 429
    assert error["error"]["body"]["error"]["code"] == "rate_limit"


async def test_upstream_connect_failure_is_an_error_then_done(sidecar: StreamhopProcess) -> None:
    async with connect(_ws_url(sidecar, "/down/v1/chat/completions")) as ws:
        await ws.send(orjson.dumps({"type": "request", "body": _chat("x")}).decode())
        messages, done = await _until_done(ws)
    assert done["reason"] == "error"
    assert [m["error"]["code"] for m in messages] == ["upstream_connect"]


async def test_upstream_drop_mid_stream_sends_events_then_error(
    sidecar: StreamhopProcess,
) -> None:
    async with connect(_ws_url(sidecar, "/fault/drop/v1/chat/completions")) as ws:
        await ws.send(orjson.dumps({"type": "request", "body": _chat("x")}).decode())
        messages, done = await _until_done(ws)
    assert done["reason"] == "error"
    assert messages[-1]["type"] == "error"
    assert messages[-1]["error"]["code"] == "upstream_disconnected"
    assert chat_text([m["data"] for m in messages[:-1]]) == "one two "


async def test_headers_body_and_url_reach_the_upstream(sidecar: StreamhopProcess) -> None:
    """The echo upstream answers JSON (not a stream), so its echo comes back in the error."""
    handshake = {"Authorization": "Bearer from-handshake", "X-Trace-Me": "1"}
    async with connect(
        _ws_url(sidecar, "/echo/v1/chat/completions?x=1"), additional_headers=handshake
    ) as ws:
        request = {
            "type": "request",
            "body": {"model": "m", "stream": False},
            "headers": {"x-request-id": "abc", "x-trace-me": "2"},
        }
        await ws.send(orjson.dumps(request).decode())
        messages, done = await _until_done(ws)
    assert done["reason"] == "error"
    error = messages[0]["error"]
    assert error["code"] == "upstream_not_streaming"
    echo = error["body"]
    assert echo["method"] == "POST"
    assert echo["raw_path"] == "/echo/v1/chat/completions?x=1"
    assert orjson.loads(echo["body"]) == {"model": "m", "stream": True}
    headers = dict(echo["headers"])
    assert headers["authorization"] == "Bearer from-handshake"
    assert headers["x-request-id"] == "abc"
    assert headers["x-trace-me"] == "2"  # the message's header wins over the handshake's
    assert headers["content-type"] == "application/json"
    assert not any(name.startswith("sec-websocket") for name in headers)
    assert "upgrade" not in headers


async def test_route_headers_apply(sidecar: StreamhopProcess) -> None:
    async with connect(_ws_url(sidecar, "/with-key/v1/chat/completions")) as ws:
        request = {"type": "request", "body": {}, "headers": {"Authorization": "Bearer user"}}
        await ws.send(orjson.dumps(request).decode())
        messages, _ = await _until_done(ws)
    headers = dict(messages[0]["error"]["body"]["headers"])
    assert headers["authorization"] == "Bearer sk-test-123"


async def test_binary_frame_closes_with_1003(chat_ws: ClientConnection) -> None:
    await chat_ws.send(b'{"type": "cancel"}')
    with pytest.raises(ConnectionClosed) as closed:
        await _recv(chat_ws)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1003


async def test_deadline_ends_with_timeout_error(chat_ws: ClientConnection) -> None:
    request = {
        "type": "request",
        "body": _chat("too slow", max_tokens=2000),
        "headers": {**SLOW_SIM, "x-streamhop-timeout-ms": "300"},
    }
    await chat_ws.send(orjson.dumps(request).decode())
    messages, done = await _until_done(chat_ws)
    assert done["reason"] == "error"
    assert messages[-1]["error"]["code"] == "timeout"
    assert [m["type"] for m in messages[:-1]] == ["event"] * (len(messages) - 1)
    assert chat_text([m["data"] for m in messages[:-1]])


# ASGI level: the bridge in this process, driven with raw ASGI messages.


class _Socket:
    """Feeds ASGI ``receive`` from a queue and records every message sent."""

    def __init__(self) -> None:
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.sent: list[dict[str, Any]] = []
        self.changed = asyncio.Event()

    async def receive(self) -> dict[str, Any]:
        return await self.inbox.get()

    async def send(self, message: Any) -> None:
        self.sent.append(dict(message))
        self.changed.set()

    def text(self, data: str | bytes) -> None:
        key = "bytes" if isinstance(data, bytes) else "text"
        self.inbox.put_nowait({"type": "websocket.receive", key: data})

    async def wait_for(self, kind: str, **match: Any) -> dict[str, Any]:
        async with asyncio.timeout(BOUND_S):
            while True:
                for message in self.sent:
                    if message["type"] != kind:
                        continue
                    body = orjson.loads(message["text"]) if kind == "websocket.send" else message
                    if all(body.get(k) == v for k, v in match.items()):
                        return dict(body)
                self.changed.clear()
                await self.changed.wait()

    def frames(self) -> list[dict[str, Any]]:
        return [orjson.loads(m["text"]) for m in self.sent if m["type"] == "websocket.send"]


def _bridge(
    upstream: str, records: list[StreamRecord] | None = None, **server: Any
) -> tuple[Proxy, SidecarState, UpstreamPool]:
    config = config_from_dict(
        {"server": server, "routes": [{"prefix": "/sim", "upstream": upstream}]}
    )
    state = SidecarState()
    pool = UpstreamPool()
    on_finish = None if records is None else records.append
    edge = EdgeContext.build(config, pool, state, Metrics(CollectorRegistry()), on_finish)
    return Proxy(edge), state, pool


def _scope(path: str) -> dict[str, Any]:
    return {
        "type": "websocket",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(b"host", b"127.0.0.1"), (b"sec-websocket-key", b"x")],
    }


async def _run_socket(proxy: Proxy, path: str) -> tuple[_Socket, asyncio.Task[None]]:
    sock = _Socket()
    sock.inbox.put_nowait({"type": "websocket.connect"})
    task = asyncio.get_running_loop().create_task(proxy(_scope(path), sock.receive, sock.send))
    await sock.wait_for("websocket.accept")
    return sock, task


async def test_no_route_closes_with_1008() -> None:
    proxy, _, pool = _bridge("http://127.0.0.1:9")
    sock, task = await _run_socket(proxy, "/elsewhere/v1/chat/completions")
    close = await sock.wait_for("websocket.close")
    await asyncio.wait_for(task, BOUND_S)
    await pool.close()
    assert close["code"] == 1008
    assert "no route" in close["reason"]


async def test_draining_closes_with_1001() -> None:
    proxy, state, pool = _bridge("http://127.0.0.1:9")
    state.draining = True
    sock, task = await _run_socket(proxy, "/sim/v1/chat/completions")
    close = await sock.wait_for("websocket.close")
    await asyncio.wait_for(task, BOUND_S)
    await pool.close()
    assert close["code"] == 1001


async def test_oversized_frame_gets_error_then_1009() -> None:
    proxy, _, pool = _bridge("http://127.0.0.1:9", max_request_bytes=1000)
    sock, task = await _run_socket(proxy, "/sim/v1/chat/completions")
    sock.text(orjson.dumps({"type": "request", "body": {"pad": "x" * 2000}}).decode())
    close = await sock.wait_for("websocket.close")
    await asyncio.wait_for(task, BOUND_S)
    await pool.close()
    assert [f["error"]["code"] for f in sock.frames()] == ["message_too_large"]
    assert close["code"] == 1009


async def test_shutdown_stops_a_generation_with_error_then_done(
    simulator: StreamhopProcess,
) -> None:
    records: list[StreamRecord] = []
    proxy, state, pool = _bridge(simulator.url, records)
    sock, task = await _run_socket(proxy, "/sim/v1/chat/completions")
    request = {"type": "request", "body": _chat("stop me", 2000), "headers": SLOW_SIM}
    sock.text(orjson.dumps(request).decode())
    await sock.wait_for("websocket.send", type="event")
    assert state.active == 1
    assert state.stop_all("shutdown") == 1
    done = await sock.wait_for("websocket.send", type="done")
    assert done["reason"] == "error"
    assert sock.frames()[-2]["error"]["code"] == "shutdown"
    sock.inbox.put_nowait({"type": "websocket.disconnect", "code": 1000})
    await asyncio.wait_for(task, BOUND_S)
    await pool.close()
    assert state.active == 0
    [record] = records
    assert record.cancel_reason == "shutdown"
    assert record.cancel_latency_s is not None
    assert record.model == "sim" and record.sse and record.events_out > 0
