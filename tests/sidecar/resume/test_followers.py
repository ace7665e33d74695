"""Followers (``GET <prefix>/streamhop/v1/streams/<id>``, docs/resume.md "Followers"): several
readers of one generation, against real sidecar processes in front of the real simulator, with
the official ``openai`` SDK as the original client; the memory store, and a real
``redis-server`` where one is installed."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx2
import openai
import orjson
import pytest

from tests.cluster import redis_server
from tests.support import (
    CHAT,
    SLOW_SIM,
    Received,
    StartSidecar,
    StreamhopProcess,
    chat_body,
    metric,
    sse_events,
    url_address,
    wait_for,
)

pytestmark = pytest.mark.integration

BOUND_S = 30.0
KEY = "caller-a"
MINE = {"authorization": f"Bearer {KEY}"}
SSE = {"accept": "text/event-stream"}
RESUME = "[resume]\nenabled = true\nwindow_s = 60\n"
LONG = {"x-sim-events-per-second": "200", "x-sim-tokens-per-second": "20000"}
"""A stream of about 1.5 s and 30000 tokens (190 kB re-chunked): longer than the followers take
to attach, and larger than the buffers between the sidecar and a follower that reads nothing."""


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with redis_server() as url:
        yield url


def _url(side: StreamhopProcess, stream_id: str) -> str:
    return f"{side.url}/streamhop/v1/streams/{stream_id}"


def _events(answer: Received) -> list[dict[str, str]]:
    """The SSE events of a follower's whole answer."""
    events, rest = sse_events(answer.body)
    assert rest == b""
    return events


def _code(answer: Received) -> str:
    """The ``error.code`` of a JSON error answer."""
    return str(orjson.loads(answer.body)["error"]["code"])


def _follow(side: StreamhopProcess, stream_id: str, **headers: str) -> Received:
    """A fast follower: GET the stream and read everything as it comes."""
    with (
        httpx2.Client(timeout=BOUND_S) as http,
        http.stream("GET", _url(side, stream_id), headers=headers) as response,
    ):
        body = b"".join(response.iter_raw())
    return Received(response.status_code, body, dict(response.headers))


def _slow_follow(
    side: StreamhopProcess, stream_id: str, attached: threading.Event, go: threading.Event
) -> tuple[Received, float]:
    """A slow follower on a raw socket with a small receive buffer: read the first bytes, then
    nothing at all until ``go`` (the original client finished), then the rest in small reads.
    Returns the answer and ``time.monotonic()`` when it was read to its end."""
    host, port = url_address(side.url)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
        sock.settimeout(BOUND_S)
        sock.connect((host, port))
        head = (
            f"GET /streamhop/v1/streams/{stream_id} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Accept: text/event-stream\r\nAuthorization: Bearer {KEY}\r\n"
            "Connection: close\r\n\r\n"
        )
        sock.sendall(head.encode())
        first = sock.recv(512)
        attached.set()
        assert go.wait(BOUND_S), "the original client did not finish while a follower waited"
        chunks = [first]
        while chunk := sock.recv(512):
            chunks.append(chunk)
        done_at = time.monotonic()
    return _parse_response(b"".join(chunks)), done_at


def _parse_response(raw: bytes) -> Received:
    """Status, headers and de-chunked body of a raw HTTP/1.1 response."""
    head, _, rest = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines)}
    assert headers.get("transfer-encoding") == "chunked", headers
    body = b""
    while True:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        body, rest = body + rest[:size], rest[size + 2 :]
    return Received(int(status_line.split()[1]), body, headers)


def _followers_open(side: StreamhopProcess) -> float:
    assert side.admin_url is not None
    return metric(side.admin_url, "streamhop_followers", route="/")


def _chunk_datas(chunks: list[Any]) -> list[dict[str, Any]]:
    return [chunk.to_dict() for chunk in chunks]


def _event_datas(events: list[dict[str, str]]) -> list[dict[str, Any]]:
    return [orjson.loads(e["data"]) for e in events if e.get("data") not in (None, "[DONE]")]


def _text(datas: list[dict[str, Any]]) -> str:
    return "".join(
        choice["delta"].get("content") or "" for data in datas for choice in data["choices"]
    )


@pytest.mark.parametrize("store", ["memory", "redis"])
def test_two_followers_at_different_speeds_get_the_original_stream(
    simulator: StreamhopProcess,
    start_sidecar: StartSidecar,
    store: str,
    request: pytest.FixtureRequest,
) -> None:
    sections = RESUME
    if store == "redis":
        url = request.getfixturevalue("redis_url")
        sections += f'store = "redis"\nbinding_key = "k"\nredis_url = "{url}"\n'
    side = start_sidecar(simulator.url, sections=sections)
    assert side.admin_url is not None
    attached, go = threading.Event(), threading.Event()
    client = openai.OpenAI(base_url=side.url + "/v1", api_key=KEY, max_retries=0, timeout=BOUND_S)
    with client, ThreadPoolExecutor(2) as pool:
        stream = client.chat.completions.create(
            model="sim",
            messages=[{"role": "user", "content": f"follow {uuid.uuid4().hex}"}],
            max_tokens=30000,
            stream=True,
            extra_headers=LONG,
        )
        with stream:
            stream_id = stream.response.headers["x-streamhop-stream-id"]
            chunks = []
            for chunk in stream:
                chunks.append(chunk)
                if len(chunks) == 2:
                    # Two followers attach while the generation runs: one reads everything as
                    # it comes, one reads its first bytes and then nothing until the end.
                    fast = pool.submit(_follow, side, stream_id, **SSE, **MINE)
                    slow = pool.submit(_slow_follow, side, stream_id, attached, go)
                    assert attached.wait(BOUND_S)
                    wait_for(lambda: _followers_open(side) == 2, BOUND_S, "two followers")
            original_done_at = time.monotonic()
        go.set()
        followed = fast.result(BOUND_S)
        held, held_done_at = slow.result(BOUND_S)
    # The original client finished while the slow follower read nothing: it cannot slow the
    # generation. Then the slow follower still got every byte the fast one got.
    assert original_done_at < held_done_at
    assert followed.status == held.status == 200
    assert followed.headers["content-type"].startswith("text/event-stream")
    assert held.headers["x-streamhop-stream-id"] == stream_id
    assert held.body == followed.body
    events = _events(followed)
    assert [e["id"] for e in events] == [f"{stream_id}:{n}" for n in range(1, len(events) + 1)]
    assert events[-1]["data"] == "[DONE]"
    # Exactly the original client's events, in order, with the same text.
    assert _event_datas(events) == _chunk_datas(chunks)
    assert len(_text(_event_datas(events))) > 1000
    # A follower after the end gets the whole stream too.
    late = _follow(side, stream_id, **SSE, **MINE)
    assert late.body == followed.body
    wait_for(lambda: _followers_open(side) == 0, BOUND_S, "no follower open")
    sent = len(followed.body) + len(held.body) + len(late.body)
    assert metric(side.admin_url, "streamhop_follower_bytes_total", route="/") == sent


def test_followers_are_bound_to_the_caller_and_refuse_what_they_cannot_serve(
    simulator: StreamhopProcess, start_sidecar: StartSidecar
) -> None:
    # The route forwards POST only: the stream path is streamhop's own, GET and DELETE work.
    side = start_sidecar(simulator.url, sections=RESUME, route='methods = ["POST"]')
    assert side.admin_url is not None
    with httpx2.Client(timeout=BOUND_S) as http:
        done = http.post(side.url + CHAT, json=chat_body("bound", 60), headers=MINE)
    assert done.status_code == 200
    stream_id = done.headers["x-streamhop-stream-id"]
    whole = _follow(side, stream_id, **SSE, **MINE)
    assert whole.status == 200
    assert whole.body == done.content
    # Another caller, no credentials, an unknown stream: the same 404.
    for refused in (
        _follow(side, stream_id, **SSE, authorization="Bearer caller-b"),
        _follow(side, stream_id, **SSE),
        _follow(side, "0123456789abcdef", **SSE, **MINE),
        _follow(side, stream_id, **SSE, **MINE, **{"x-api-key": "another"}),
    ):
        assert (refused.status, _code(refused)) == (404, "stream_not_found")
    # Not asking for an event stream: 406, before anything else.
    for accept in ({}, {"accept": "*/*"}, {"accept": "application/json"}):
        refused = _follow(side, stream_id, **accept, **MINE)
        assert (refused.status, _code(refused)) == (406, "not_acceptable")
    listed = _follow(side, stream_id, accept="application/json, text/event-stream;q=0.9", **MINE)
    assert listed.body == whole.body
    # Last-Event-ID: the events after it; one of another stream is refused.
    after = _follow(side, stream_id, **SSE, **MINE, **{"last-event-id": f"{stream_id}:3"})
    assert _events(after) == _events(whole)[3:]
    other = _follow(side, stream_id, **SSE, **MINE, **{"last-event-id": "fedcba9876543210:0"})
    assert (other.status, _code(other)) == (400, "bad_last_event_id")
    # Other methods are refused on the stream path, never proxied.
    with httpx2.Client(timeout=BOUND_S) as http:
        posted = http.post(_url(side, stream_id), json={}, headers=MINE)
        deleted = http.delete(_url(side, stream_id), headers=MINE)
    assert posted.status_code == 405
    assert posted.headers["allow"] == "GET, DELETE"
    assert deleted.status_code == 404  # finished: nothing to stop
    wait_for(lambda: _followers_open(side) == 0, BOUND_S, "no follower open")


def test_followers_count_toward_max_streams_and_see_a_stop(
    simulator: StreamhopProcess, start_sidecar: StartSidecar
) -> None:
    side = start_sidecar(simulator.url, server="max_streams = 2", sections=RESUME)
    assert side.admin_url is not None
    body = chat_body(f"limit {uuid.uuid4().hex}", 400)
    with (
        httpx2.Client(timeout=BOUND_S) as http,
        http.stream("POST", side.url + CHAT, json=body, headers={**SLOW_SIM, **MINE}) as original,
        ThreadPoolExecutor(1) as pool,
    ):
        assert original.status_code == 200
        stream_id = original.headers["x-streamhop-stream-id"]
        follower = pool.submit(_follow, side, stream_id, **SSE, **MINE)
        wait_for(lambda: _followers_open(side) == 1, BOUND_S, "the follower")
        # The generation and one follower: a second follower would be a third stream.
        refused = _follow(side, stream_id, **SSE, **MINE)
        assert (refused.status, _code(refused)) == (503, "too_many_streams")
        stopped = httpx2.delete(_url(side, stream_id), headers=MINE, timeout=BOUND_S)
        assert stopped.status_code == 204
        rest = b"".join(original.iter_raw())
        followed = follower.result(BOUND_S)
    assert followed.status == 200
    last = _events(followed)[-1]
    assert orjson.loads(last["data"])["error"]["code"] == "stream_cancelled"
    assert sse_events(rest)[0][-1] == last  # the original client got the same end
    wait_for(lambda: _followers_open(side) == 0, BOUND_S, "no follower open")


def test_following_needs_resume(sidecar: StreamhopProcess) -> None:
    """The session sidecar has ``[resume]`` off: nothing is logged, nothing can be followed."""
    url = f"{sidecar.url}/sim/streamhop/v1/streams/0123456789abcdef"
    with httpx2.Client(timeout=BOUND_S) as http:
        off = http.get(url, headers=SSE)
        no_accept = http.get(url)
    assert off.status_code == 409
    assert off.json()["error"]["code"] == "resume_disabled"
    assert no_accept.status_code == 406
