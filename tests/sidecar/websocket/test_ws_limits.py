"""WebSocket generations under the HTTP stream rules, and the bounds on sockets themselves.

Against a real ``streamhop serve`` in front of the real simulator (loopback only):

* ``DELETE <prefix>/streamhop/v1/streams/<id>`` stops a WebSocket generation of the same caller
  (bound to the handshake's headers with the ``request`` message's over them) as it stops an
  HTTP stream: 204 once the upstream is closed; the socket gets ``done`` ``cancelled``; also
  from another replica through a shared Redis store;
* a WebSocket generation counts toward ``[server] max_streams``, and so does a ``resume``
  replay (as an HTTP resume does);
* ``[server] max_websockets`` refuses the handshake with 503 past the limit;
* ``[server] websocket_idle_timeout_s`` closes a socket with nothing running and no message.

Every wait is bounded (docs/websocket.md, docs/security.md "Bounded inputs").
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import aiohttp
import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from streamhop.middleware.errors import ConfigError
from streamhop.sidecar.config import config_from_dict
from tests.support import (
    CHAT,
    SLOW_SIM,
    StartSidecar,
    StreamhopProcess,
    chat_body,
    scrape,
    sim_record,
    wait_for,
    wait_idle,
)

pytestmark = pytest.mark.integration

BOUND_S = 20.0
RESUME = "[resume]\nenabled = true\nwindow_s = 60"
STOPPED_WITHIN_S = 2.0
"""A stop answers once the upstream is closed: well under the 5 s the stop endpoint waits at
most (and then answers 202)."""


def _ws_url(side: StreamhopProcess, path: str = CHAT) -> str:
    return "ws://" + side.url.removeprefix("http://") + path


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


async def _slow_request(ws: ClientConnection, rid: str, headers: dict[str, str]) -> None:
    """Start a generation that runs for seconds (the simulator paced slowly)."""
    request = {
        "type": "request",
        "body": chat_body(f"slow {rid}", 2000, stream=None),
        "headers": {**SLOW_SIM, "x-request-id": rid, **headers},
    }
    await ws.send(orjson.dumps(request).decode())


async def _delete(side: StreamhopProcess, stream_id: str, **headers: str) -> int:
    timeout = aiohttp.ClientTimeout(total=BOUND_S)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.delete(f"{side.url}/streamhop/v1/streams/{stream_id}", headers=headers) as resp,
    ):
        await resp.read()
        return resp.status


# --- stop over HTTP -------------------------------------------------------------------------------


async def test_delete_stops_a_websocket_generation_of_the_same_caller(
    simulator: StreamhopProcess, start_sidecar: StartSidecar
) -> None:
    side = start_sidecar(simulator.url, sections=RESUME)
    assert side.admin_url is not None
    rid = uuid.uuid4().hex
    # The caller's credentials: the handshake's, with the message's over them.
    handshake = {"x-api-key": "key-from-handshake", "Authorization": "Bearer overridden"}
    mine = {"x-api-key": "key-from-handshake", "authorization": "Bearer caller-a"}
    async with connect(_ws_url(side), additional_headers=handshake) as ws:
        await _slow_request(ws, rid, {"Authorization": "Bearer caller-a"})
        first = await _recv(ws)
        assert first["type"] == "event"
        stream_id = first["id"].rpartition(":")[0]

        # Another caller, the handshake's credentials alone, or an unknown id: 404.
        assert await _delete(side, stream_id, authorization="Bearer caller-b") == 404
        assert await _delete(side, stream_id, **handshake) == 404
        assert await _delete(side, stream_id, authorization="Bearer caller-a") == 404
        assert await _delete(side, "0123456789abcdef", **mine) == 404
        # The owner stops it: 204 once its upstream is closed, as for an HTTP stream.
        sent = time.monotonic()
        assert await _delete(side, stream_id, **mine) == 204
        assert time.monotonic() - sent < STOPPED_WITHIN_S
        events, done = await _until_done(ws)
        assert done == {"type": "done", "reason": "cancelled"}
        assert all(m["type"] == "event" for m in events)

        record = await asyncio.to_thread(sim_record, simulator.url, rid, BOUND_S)
        assert record["outcome"] == "client_closed"
        assert record["ended"] - sent < STOPPED_WITHIN_S
        idle = await asyncio.to_thread(wait_idle, side.admin_url, "/", BOUND_S)
        assert idle.value("streamhop_cancellations_total", reason="stop") == 1
        assert await _delete(side, stream_id, **mine) == 404  # nothing runs any more

        # The socket stays usable: nothing is left to cancel, a new request runs.
        await ws.send('{"type": "cancel"}')
        error = await _recv(ws)
        assert error["error"]["code"] == "nothing_to_cancel"
        request = {"type": "request", "body": chat_body("after the stop", 20, stream=None)}
        await ws.send(orjson.dumps(request).decode())
        _, done = await _until_done(ws)
        assert done["reason"] == "complete"


async def test_delete_on_another_replica_stops_a_websocket_generation(
    simulator: StreamhopProcess, start_sidecar: StartSidecar, shared_redis: str
) -> None:
    """Behind a Service the DELETE may land on another replica: the stop travels through the
    shared store and reaches the socket's generation there."""
    resume = (
        f'[resume]\nenabled = true\nstore = "redis"\nredis_url = "{shared_redis}"\n'
        'binding_key = "shared"\nwindow_s = 60'
    )
    a = start_sidecar(simulator.url, sections=resume)
    b = start_sidecar(simulator.url, sections=resume)
    rid = uuid.uuid4().hex
    mine = {"authorization": "Bearer caller-a"}
    async with connect(_ws_url(a)) as ws:
        await _slow_request(ws, rid, mine)
        first = await _recv(ws)
        stream_id = first["id"].rpartition(":")[0]
        assert await _delete(b, stream_id, authorization="Bearer caller-b") == 404
        sent = time.monotonic()
        assert await _delete(b, stream_id, **mine) == 204
        assert time.monotonic() - sent < STOPPED_WITHIN_S
        _, done = await _until_done(ws)
        assert done == {"type": "done", "reason": "cancelled"}
    record = await asyncio.to_thread(sim_record, simulator.url, rid, BOUND_S)
    assert record["outcome"] == "client_closed"


async def test_a_websocket_generation_counts_toward_max_streams(
    simulator: StreamhopProcess, start_sidecar: StartSidecar
) -> None:
    side = start_sidecar(simulator.url, server="max_streams = 1")
    async with connect(_ws_url(side)) as ws, connect(_ws_url(side)) as other:
        await _slow_request(ws, uuid.uuid4().hex, {})
        assert (await _recv(ws))["type"] == "event"
        # The one slot is the generation's: an HTTP request and another socket's are refused.
        timeout = aiohttp.ClientTimeout(total=BOUND_S)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.post(side.url + CHAT, json=chat_body("http", 5)) as resp,
        ):
            assert resp.status == 503
            assert (await resp.json())["error"]["code"] == "too_many_streams"
        await other.send(orjson.dumps({"type": "request", "body": chat_body("x", 5)}).decode())
        refused = await _recv(other)
        assert refused["error"]["code"] == "too_many_streams"
        # The socket holding the slot may still cut over to a new generation.
        request = {"type": "request", "body": chat_body("cut over", 5, stream=None)}
        await ws.send(orjson.dumps(request).decode())
        _, interrupted = await _until_done(ws)
        assert interrupted["reason"] == "interrupted"
        _, done = await _until_done(ws)
        assert done["reason"] == "complete"


async def test_a_resume_replay_counts_toward_max_streams(
    simulator: StreamhopProcess, start_sidecar: StartSidecar
) -> None:
    """A ``resume`` replay holds a socket and follows a live tail like a stream, so it counts
    toward ``max_streams`` as an HTTP resume does: with a generation and a replay running, a
    third stream (HTTP, or another resume) is refused; a ``request`` on the replaying socket
    cuts the replay over and takes its slot, never one more."""
    side = start_sidecar(simulator.url, server="max_streams = 2", sections=RESUME)
    mine = {"authorization": "Bearer caller-a"}
    async with (
        connect(_ws_url(side)) as ws,
        connect(_ws_url(side)) as follower,
        connect(_ws_url(side)) as third,
    ):
        await _slow_request(ws, uuid.uuid4().hex, mine)
        first = await _recv(ws)
        stream_id = first["id"].rpartition(":")[0]
        resume = {"type": "resume", "stream_id": stream_id, "after": 0, "headers": mine}
        await follower.send(orjson.dumps(resume).decode())
        assert (await _recv(follower))["type"] == "event"
        # Full: a third resume is refused, and so is an HTTP request.
        await third.send(orjson.dumps(resume).decode())
        refused = await _recv(third)
        assert refused["type"] == "error" and refused["error"]["code"] == "too_many_streams"
        async with (
            aiohttp.ClientSession() as http,
            http.post(side.url + CHAT, json=chat_body("one too many", 5)) as response,
        ):
            assert response.status == 503
        # The replaying socket's request takes the replay's slot.
        request = {"type": "request", "body": chat_body("instead", 5, stream=None)}
        await follower.send(orjson.dumps(request).decode())
        while (message := await _recv(follower))["type"] == "event":
            pass  # the replay's last events, then its end
        assert message == {"type": "done", "reason": "interrupted"}, message
        _, done = await _until_done(follower)
        assert done["reason"] == "complete"


# --- bounds on sockets ----------------------------------------------------------------------------


def _open_sockets(side: StreamhopProcess, count: int) -> bool:
    assert side.admin_url is not None
    return scrape(side.admin_url).value("streamhop_websockets_open") == count


async def test_max_websockets_refuses_the_handshake_with_503(
    simulator: StreamhopProcess, start_sidecar: StartSidecar
) -> None:
    side = start_sidecar(simulator.url, server="max_websockets = 2")
    assert side.admin_url is not None
    before = scrape(side.admin_url)
    refused_name = "streamhop_websocket_refused_total"
    assert refused_name in before.families  # the series exists from the start, at 0
    assert before.value(refused_name, reason="max_websockets") == 0
    async with connect(_ws_url(side)) as first, connect(_ws_url(side)):
        with pytest.raises(InvalidStatus) as info:
            async with connect(_ws_url(side), open_timeout=BOUND_S):
                pass
        response = info.value.response
        assert response.status_code == 503
        assert response.headers["retry-after"] == "1"
        assert orjson.loads(response.body or b"{}")["error"]["code"] == "too_many_websockets"
        assert scrape(side.admin_url).value(refused_name, reason="max_websockets") == 1
        # The open sockets are not affected.
        await first.send(orjson.dumps({"type": "request", "body": chat_body("x", 5)}).decode())
        _, done = await _until_done(first)
        assert done["reason"] == "complete"
    # Closed sockets free their places.
    await asyncio.to_thread(wait_for, lambda: _open_sockets(side, 0), BOUND_S, "sockets closed")
    async with connect(_ws_url(side)), connect(_ws_url(side)):
        await asyncio.to_thread(wait_for, lambda: _open_sockets(side, 2), BOUND_S, "2 open")


async def test_an_idle_websocket_is_closed_after_websocket_idle_timeout_s(
    simulator: StreamhopProcess, start_sidecar: StartSidecar
) -> None:
    idle_s = 0.5
    side = start_sidecar(simulator.url, server=f"websocket_idle_timeout_s = {idle_s}")
    # Nothing sent at all.
    opened = time.monotonic()
    async with connect(_ws_url(side)) as ws:
        with pytest.raises(ConnectionClosed) as closed:
            await _recv(ws)
    assert time.monotonic() - opened >= idle_s
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1001
    assert "websocket_idle_timeout_s" in closed.value.rcvd.reason
    # A generation that runs longer than the timeout is not idle; the clock starts at its end.
    async with connect(_ws_url(side)) as ws:
        request = {
            "type": "request",
            "body": chat_body("longer than the idle timeout", 150, stream=None),
            "headers": SLOW_SIM,  # about 20 events a second: well over idle_s
        }
        started = time.monotonic()
        await ws.send(orjson.dumps(request).decode())
        _, done = await _until_done(ws)
        ended = time.monotonic()
        assert done["reason"] == "complete"
        assert ended - started > 2 * idle_s
        with pytest.raises(ConnectionClosed) as closed:
            await _recv(ws)
        assert time.monotonic() - ended < BOUND_S
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1001


# --- config ---------------------------------------------------------------------------------------


def test_websocket_limits_have_defaults_and_name_their_key_when_invalid() -> None:
    server = config_from_dict({}).server
    assert server.max_websockets == 1000
    assert server.websocket_idle_timeout_s == 300.0
    for data, key in [
        ({"max_websockets": 0}, "server.max_websockets"),
        ({"max_websockets": "many"}, "server.max_websockets"),
        ({"websocket_idle_timeout_s": 0}, "server.websocket_idle_timeout_s"),
    ]:
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            config_from_dict({"server": data})
