"""``StreamHopMiddleware`` at the ASGI level: raw message lists in and out, no sockets.

A fake server (:class:`.fake_server.Server`) scripts ``receive`` and records every message
``send`` gets, the way uvicorn behaves: after the response is complete, ``receive`` answers
``http.disconnect``.
Re-chunking is checked on content (the final message the official SDKs accumulate) and on
"fewer messages" only with generous bounds, so the tests hold on a loaded machine.

No test sleeps to let something happen: each waits, with a bound, on state it can see (what the
server got, a flag the app sets, whether a ``send()`` is suspended). The sleeps left are an
app's or a provider's pace, each marked so.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from prometheus_client import CollectorRegistry
from sse_starlette import EventSourceResponse
from sse_starlette.sse import SendTimeoutError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from streamhop.middleware import SSEEvent, StreamHopMiddleware, encode_events
from streamhop.middleware.asgi.middleware import ClientDisconnectedError

from ..accumulate import accumulate, anthropic_delta, chat_chunk
from ..conftest import FIXTURE_FORMATS, LONG_TEXT_FIXTURES, fixture_bytes, fixture_events
from .fake_server import (
    FINAL,
    SendProbe,
    Server,
    Suspended,
    body,
    http_scope,
    read_body,
    run,
    sample,
    sse_start,
    wait_until,
)

CHAT_FIXTURE = "openai_chat_json_multibyte_degree.sse"


def paced_app(data: bytes, seed: int = 0, pause_s: float = 0.001) -> ASGIApp:
    """An app streaming ``data`` as SSE in random-sized chunks (1..600 bytes) with pauses."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await read_body(receive)
        await send(sse_start())
        rng = random.Random(seed)
        i = 0
        while i < len(data):
            n = rng.randint(1, 600)
            await send(body(data[i : i + n]))
            i += n
            await asyncio.sleep(pause_s)  # the provider's pace (not synchronisation)
        await send(dict(FINAL))

    return app


def events_app(events: Sequence[SSEEvent], pause_s: float = 0.001) -> ASGIApp:
    """An app sending one body chunk per event, pausing between them."""
    return paced_chunks_app([encode_events([e]) for e in events], pause_s)


def paced_chunks_app(chunks: Sequence[bytes], pause_s: float = 0.001) -> ASGIApp:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await read_body(receive)
        await send(sse_start())
        for chunk in chunks:
            await send(body(chunk))
            await asyncio.sleep(pause_s)  # the provider's pace (not synchronisation)
        await send(dict(FINAL))

    return app


# ---- re-chunking


async def test_fixture_streams_are_rechunked_losslessly(fixture_name: str) -> None:
    registry = CollectorRegistry()
    data = fixture_bytes(fixture_name)
    upstream = fixture_events(fixture_name)
    server = Server()
    await run(paced_app(data, seed=len(data)), server, registry=registry)

    start, *middle, last = server.sent
    assert start["type"] == "http.response.start" and start["status"] == 200
    assert start["headers"] == [
        (b"content-type", b"text/event-stream; charset=utf-8"),
        (b"x-app", b"kept"),
        (b"cache-control", b"no-cache"),
        (b"x-accel-buffering", b"no"),
    ]
    assert last == FINAL
    assert all(m["type"] == "http.response.body" and m["more_body"] for m in middle)
    fmt = FIXTURE_FORMATS[fixture_name]
    assert accumulate(fmt, server.events) == accumulate(fmt, upstream)
    comments = data.count(b"\n\n:") + data.startswith(b":")  # forwarded while idle
    assert len(middle) <= len(upstream) + comments
    if fixture_name in LONG_TEXT_FIXTURES:
        assert len(middle) <= len(upstream) // 2, (len(middle), len(upstream))

    labels = {"route": "asgi", "model": "other"}
    assert sample(registry, "streamhop_events_total", **labels, direction="upstream") == len(
        upstream
    )
    assert sample(registry, "streamhop_events_total", **labels, direction="downstream") == len(
        server.events
    )
    assert sample(registry, "streamhop_bytes_total", **labels, direction="upstream") == len(data)
    assert sample(registry, "streamhop_bytes_total", **labels, direction="downstream") == sum(
        map(len, server.bodies)
    )
    assert sample(registry, "streamhop_time_to_first_token_seconds_count", **labels) == 1
    assert sample(registry, "streamhop_stream_duration_seconds_count", **labels) == 1
    assert sample(registry, "streamhop_streams_active", route="asgi") == 0


async def test_start_goes_out_before_the_first_body_and_the_first_token_at_once() -> None:
    release = asyncio.Event()
    first = chat_chunk({"content": "Hi"})

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send(sse_start())
        await send(body(encode_events([first])))
        await release.wait()  # the rest of the answer is slow to come
        await send(dict(FINAL))

    server = Server()
    task = asyncio.create_task(run(app, server, registry=CollectorRegistry()))
    await wait_until(lambda: len(server.sent) >= 2)
    assert server.sent[0]["type"] == "http.response.start"
    assert server.events == [first]
    release.set()
    await task


async def test_passthrough_header_forwards_every_event_unmerged() -> None:
    upstream = fixture_events(CHAT_FIXTURE)
    merged, unmerged = Server(), Server()
    await run(events_app(upstream), merged, registry=CollectorRegistry())
    scope = http_scope(headers=[(b"x-streamhop-mode", b"passthrough")])
    await run(events_app(upstream), unmerged, scope, registry=CollectorRegistry())
    assert unmerged.events == upstream
    assert len(merged.events) < len(upstream) // 2
    assert accumulate("openai-chat", merged.events) == accumulate("openai-chat", upstream)


async def test_flush_interval_header_sets_the_window() -> None:
    upstream = fixture_events(CHAT_FIXTURE)
    writes = {}
    for interval in (b"0", b"60000"):
        server = Server()
        scope = http_scope(headers=[(b"x-streamhop-flush-interval-ms", interval)])
        await run(events_app(upstream), server, scope, registry=CollectorRegistry())
        assert accumulate("openai-chat", server.events) == accumulate("openai-chat", upstream)
        writes[interval] = len(server.bodies)
    # 0: every event is written as it comes (the client here is never slow); 60 s: only
    # boundaries (role, first token, finish, usage, [DONE]) end a write.
    assert writes[b"0"] >= len(upstream) // 2, writes
    assert writes[b"60000"] <= 10, writes


@pytest.mark.parametrize(
    ("header", "value"),
    [
        (b"x-streamhop-flush-interval-ms", b"soon"),
        (b"x-streamhop-flush-interval-ms", b"-1"),
        (b"x-streamhop-flush-interval-ms", b"inf"),
        (b"x-streamhop-mode", b"turbo"),
    ],
)
async def test_bad_control_header_is_answered_400_without_calling_the_app(
    header: bytes, value: bytes
) -> None:
    called = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        called.append(scope)

    server = Server()
    await run(app, server, http_scope(headers=[(header, value)]))
    assert not called
    start, last = server.sent
    assert start["status"] == 400
    assert (b"content-type", b"application/json") in start["headers"]
    error = json.loads(last["body"])["error"]
    assert error["code"] == "bad_control_header"
    assert error["type"] == "invalid_request_error"
    assert value.decode() in error["message"]
    assert last["more_body"] is False


# ---- what passes through untouched


async def _plain_exchange(messages: list[Message], method: str = "GET") -> None:
    """Run an app that sends ``messages`` and check the server got the very same objects."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        for message in messages:
            await send(message)

    expected = [dict(m) for m in messages]
    server = Server()
    await run(app, server, http_scope(method=method), registry=CollectorRegistry())
    assert server.sent == expected
    assert all(a is b for a, b in zip(server.sent, messages, strict=True))


async def test_json_response_passes_through() -> None:
    payload = json.dumps({"answer": "東京 👩‍💻"}).encode()
    await _plain_exchange(
        [
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                ],
            },
            {"type": "http.response.body", "body": payload, "more_body": False},
        ]
    )


async def test_plain_text_streaming_passes_through() -> None:
    await _plain_exchange(
        [
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/plain")],
            },
            body(b"data: not sse\n\n"),
            body(b"data: still not\n\n"),
            dict(FINAL),
        ]
    )


async def test_head_of_an_sse_route_passes_through() -> None:
    await _plain_exchange([sse_start(), dict(FINAL)], method="HEAD")


async def test_compressed_sse_passes_through() -> None:
    headers = [(b"content-type", b"text/event-stream"), (b"content-encoding", b"gzip")]
    await _plain_exchange([sse_start(headers), body(b"\x1f\x8b\x08"), dict(FINAL)])


# ---- header names in any case (RFC 9110 §5.1; Django sends "Content-Type")


async def test_capitalised_sse_headers_are_recognised() -> None:
    upstream = fixture_events(CHAT_FIXTURE)
    headers = [
        (b"Content-Type", b"Text/Event-Stream; charset=utf-8"),
        (b"Content-Length", b"12345"),
        (b"Cache-Control", b"no-store"),
        (b"X-Accel-Buffering", b"yes"),
        (b"X-App", b"kept"),
    ]

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send(sse_start(headers))
        for event in upstream:
            await send(body(encode_events([event])))
            await asyncio.sleep(0.001)  # the provider's pace (not synchronisation)
        await send(dict(FINAL))

    server = Server()
    await run(app, server, registry=CollectorRegistry())
    assert server.sent[0]["headers"] == [
        (b"Content-Type", b"Text/Event-Stream; charset=utf-8"),
        (b"Cache-Control", b"no-store"),  # the app's own, not a second one
        (b"X-App", b"kept"),
        (b"x-accel-buffering", b"no"),
    ]
    assert accumulate("openai-chat", server.events) == accumulate("openai-chat", upstream)
    assert len(server.bodies) <= len(upstream) // 2, (len(server.bodies), len(upstream))


async def test_capitalised_content_encoding_passes_through() -> None:
    headers = [(b"content-type", b"text/event-stream"), (b"Content-Encoding", b"GZIP")]
    await _plain_exchange([sse_start(headers), body(b"\x1f\x8b\x08"), dict(FINAL)])


async def test_capitalised_control_header_is_read() -> None:
    upstream = fixture_events(CHAT_FIXTURE)
    server = Server()
    scope = http_scope(headers=[(b"X-Streamhop-Mode", b"passthrough")])
    await run(events_app(upstream), server, scope, registry=CollectorRegistry())
    assert server.events == upstream


@pytest.mark.parametrize("scope_type", ["websocket", "lifespan"])
async def test_websocket_and_lifespan_get_the_servers_own_callables(scope_type: str) -> None:
    seen: list[tuple[Receive, Send]] = []
    received: list[Message] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append((receive, send))
        received.append(await receive())
        await send({"type": f"{scope_type}.echo", "got": received[-1]})

    inbox = [{"type": f"{scope_type}.connect"}]
    sent: list[Message] = []

    async def receive() -> Message:
        return inbox.pop()

    async def send(message: Message) -> None:
        sent.append(message)

    await StreamHopMiddleware(app, registry=CollectorRegistry())(
        {"type": scope_type}, receive, send
    )
    assert seen == [(receive, send)]
    assert sent == [{"type": f"{scope_type}.echo", "got": {"type": f"{scope_type}.connect"}}]


async def test_fastapi_json_and_lifespan_are_byte_for_byte_unchanged() -> None:
    def make(with_middleware: bool) -> FastAPI:
        app = FastAPI()

        @app.get("/json")
        async def answer() -> JSONResponse:
            return JSONResponse({"text": "café 🇫🇷"}, headers={"x-custom": "1"})

        if with_middleware:
            app.add_middleware(StreamHopMiddleware, registry=CollectorRegistry())
        return app

    results = []
    for with_middleware in (False, True):
        app = make(with_middleware)
        server = Server()
        await app(http_scope("GET", "/json"), server.receive, server.send)
        life: list[Message] = []
        inbox = deque([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])

        async def receive(inbox: deque[Message] = inbox) -> Message:
            return inbox.popleft()

        async def send(message: Message, life: list[Message] = life) -> None:
            life.append(message)

        await app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send)
        results.append((server.sent, life))
    assert results[0] == results[1]
    assert results[1][1] == [
        {"type": "lifespan.startup.complete"},
        {"type": "lifespan.shutdown.complete"},
    ]


# ---- receive: the app keeps its body; disconnects cancel the handler


async def test_the_app_gets_every_request_body_message_in_order() -> None:
    requests = [
        {"type": "http.request", "body": b"part one, ", "more_body": True},
        {"type": "http.request", "body": "東京, ".encode(), "more_body": True},
        {"type": "http.request", "body": b"end", "more_body": False},
    ]
    got: list[Message] = []
    unread: list[int] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        # Once the relay has read a message, it must not keep the body nor read it ahead (one
        # message at most). The fake server's receive() returns without suspending, so a relay
        # that read on would have read everything by the time this sees the first one gone.
        await wait_until(lambda: len(server.requests) < len(requests))
        unread.append(len(server.requests))
        while True:
            message = await receive()
            got.append(message)
            if not message.get("more_body", False):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok", "more_body": False})

    server = Server([dict(m) for m in requests])
    await run(app, server, registry=CollectorRegistry())
    assert got == requests
    assert unread == [len(requests) - 1]


async def test_disconnect_mid_stream_cancels_the_handler() -> None:
    registry = CollectorRegistry()
    cleaned_up: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await read_body(receive)
        await send(sse_start())
        await send(body(encode_events([chat_chunk({"content": "Hello"})])))
        try:
            await asyncio.Event().wait()  # waiting on its upstream, never looking at receive
        finally:
            cleaned_up.append("upstream closed")

    server = Server()
    task = asyncio.create_task(run(app, server, registry=registry))
    await wait_until(lambda: len(server.bodies) == 1)
    server.disconnect.set()
    await task
    assert cleaned_up == ["upstream closed"]
    assert server.sent[-1]["more_body"] is True  # no final body after the client left
    labels = {"route": "asgi", "model": "other"}
    assert (
        sample(registry, "streamhop_cancellations_total", **labels, reason="client_disconnect") == 1
    )
    assert sample(registry, "streamhop_cancel_latency_seconds_count", **labels) == 1
    assert sample(registry, "streamhop_streams_active", route="asgi") == 0


async def test_disconnect_before_the_response_cancels_the_handler() -> None:
    registry = CollectorRegistry()
    cleaned_up: list[str] = []

    calling = asyncio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await read_body(receive)
        calling.set()
        try:
            await asyncio.Event().wait()  # a non-streamed upstream call that takes long
        finally:
            cleaned_up.append("upstream closed")

    server = Server()
    task = asyncio.create_task(run(app, server, registry=registry, route_label="chat"))
    async with asyncio.timeout(5):
        await calling.wait()
    server.disconnect.set()
    await task
    assert cleaned_up == ["upstream closed"]
    assert server.sent == []
    assert sample(
        registry, "streamhop_cancellations_total", route="chat", model="other",
        reason="client_disconnect",
    ) == 1  # fmt: skip


async def test_server_cancelling_the_request_cancels_the_handler_first() -> None:
    registry = CollectorRegistry()
    cleaned_up: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send(sse_start())
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.sleep(0.01)  # its cleanup awaits, too (the app's pace)
            cleaned_up.append("upstream closed")

    server = Server()
    mw = StreamHopMiddleware(app, registry=registry)
    task = asyncio.create_task(mw(http_scope(), server.receive, server.send))
    await wait_until(lambda: len(server.sent) == 1)
    task.cancel()  # a server's hard shutdown
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cleaned_up == ["upstream closed"]
    labels = {"route": "asgi", "model": "other"}
    assert sample(registry, "streamhop_cancellations_total", **labels, reason="shutdown") == 1


@pytest.mark.parametrize("sse", [True, False], ids=["sse", "json"])
async def test_disconnect_after_the_response_leaves_background_work_alone(sse: bool) -> None:
    registry = CollectorRegistry()
    finished: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if sse:
            await send(sse_start())
            await send(body(encode_events([chat_chunk({"content": "Hi"})])))
            await send(dict(FINAL))
        else:
            json_headers = [(b"content-type", b"application/json"), (b"content-length", b"2")]
            await send({"type": "http.response.start", "status": 200, "headers": json_headers})
            await send({"type": "http.response.body", "body": b"{}", "more_body": False})
        # A background task after the response, still running when the server says
        # http.disconnect (as uvicorn does after every response): it must not be stopped. The
        # middleware acts on the disconnect in the step that reads it, so a cancellation would
        # land at the next await.
        await wait_until(lambda: server.said_disconnect)
        await asyncio.sleep(0)
        finished.append("background")

    server = Server()
    await run(app, server, registry=registry)
    assert finished == ["background"]
    assert server.sent[-1]["more_body"] is False
    assert sample(
        registry, "streamhop_cancellations_total", route="asgi", model="other",
        reason="client_disconnect",
    ) is None  # fmt: skip


async def test_fastapi_streaming_handler_is_cancelled_on_disconnect_under_asgi_2_4() -> None:
    """Under ASGI 2.4 Starlette no longer listens for ``http.disconnect`` itself: a generator
    waiting on its upstream would wait on; the middleware cancels it."""
    cleaned_up: list[str] = []
    app = FastAPI()

    @app.post("/chat")
    async def chat() -> StreamingResponse:
        async def gen() -> AsyncIterator[bytes]:
            try:
                yield encode_events([chat_chunk({"content": "Hi"})])
                await asyncio.Event().wait()
            finally:
                cleaned_up.append("upstream closed")

        return StreamingResponse(gen(), media_type="text/event-stream")

    app.add_middleware(StreamHopMiddleware, registry=CollectorRegistry())
    server = Server()
    task = asyncio.create_task(
        app(http_scope("POST", "/chat", spec_version="2.4"), server.receive, server.send)
    )
    await wait_until(lambda: len(server.bodies) == 1)
    server.disconnect.set()
    async with asyncio.timeout(5):
        await task
    assert cleaned_up == ["upstream closed"]


def _held_generator_app(
    gens: list[AsyncIterator[bytes]],
    cleaned_up: list[str],
    upstream: asyncio.Event | None = None,
    suspended: Suspended | None = None,
    **options: Any,
) -> FastAPI:
    """A FastAPI SSE route whose generator the test holds, so that only a cancellation landing
    inside it (never garbage collection) can run its ``finally``; with ``suspended``, its
    ``send()`` calls suspended in the middleware are counted there."""
    app = FastAPI()

    @app.get("/chat")
    async def chat() -> StreamingResponse:
        async def gen() -> AsyncIterator[bytes]:
            try:
                for i in range(100_000):
                    if upstream is not None:
                        await upstream.wait()  # the next chunk from its provider
                        upstream.clear()
                    yield b"data: %06d\n\n" % i
                    await asyncio.sleep(0)
            finally:
                cleaned_up.append("upstream closed")

        stream = gen()
        gens.append(stream)
        return StreamingResponse(stream, media_type="text/event-stream")

    options.setdefault("registry", CollectorRegistry())
    if suspended is not None:
        app.add_middleware(SendProbe, suspended=suspended)  # added first: the inner one
    app.add_middleware(StreamHopMiddleware, format="sse", **options)
    return app


async def test_disconnect_while_the_app_waits_for_room_closes_its_generator() -> None:
    """The app is suspended in ``send()`` (backpressure) when the client leaves: cancelled
    there, Starlette would abandon its generator at ``yield``, upstream open."""
    gens: list[AsyncIterator[bytes]] = []
    cleaned_up: list[str] = []
    suspended = Suspended()
    app = _held_generator_app(gens, cleaned_up, suspended=suspended, max_pending_bytes=1000)
    server = Server(gate=asyncio.Event())  # a client that reads nothing
    task = asyncio.create_task(app(http_scope("GET", "/chat"), server.receive, server.send))
    try:
        await wait_until(lambda: suspended.count > 0)  # blocked in send(), waiting for room
        server.disconnect.set()
        async with asyncio.timeout(5):
            await task
        assert cleaned_up == ["upstream closed"]
    finally:
        for stream in gens:
            await stream.aclose()  # type: ignore[attr-defined]


class FailingServer(Server):
    """A server whose second body write fails (the client vanished), just as the app's next
    upstream chunk arrives."""

    def __init__(self, upstream: asyncio.Event) -> None:
        super().__init__()
        self.upstream = upstream

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.body" and len(self.bodies) == 1:
            self.upstream.set()
            raise ConnectionResetError("the client is gone")
        await super().send(message)


async def test_a_chunk_sent_after_a_failed_write_does_not_strand_the_generator() -> None:
    """The app's next chunk reaches ``send()`` after the write failed and before the app is
    cancelled: that ``send()`` must not fail, or Starlette abandons the generator at ``yield``."""
    registry = CollectorRegistry()
    gens: list[AsyncIterator[bytes]] = []
    cleaned_up: list[str] = []
    upstream = asyncio.Event()
    app = _held_generator_app(gens, cleaned_up, upstream, registry=registry)
    server = FailingServer(upstream)
    task = asyncio.create_task(app(http_scope("GET", "/chat"), server.receive, server.send))
    try:
        upstream.set()
        await wait_until(lambda: len(server.bodies) == 1)
        upstream.set()  # the second chunk: its write fails
        async with asyncio.timeout(5):
            await task
        assert cleaned_up == ["upstream closed"]
    finally:
        for stream in gens:
            await stream.aclose()  # type: ignore[attr-defined]
    labels = {"route": "/chat", "model": "other", "reason": "client_disconnect"}
    assert sample(registry, "streamhop_cancellations_total", **labels) == 1


class FlowControlledServer(Server):
    """Like uvicorn with a client that reads nothing: a body write waits for the socket to
    drain, and returns at once when the client is gone."""

    draining = 0
    """How many body writes wait for the socket to drain."""

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.body" and self.sent:
            self.draining += 1
            await self.disconnect.wait()
            self.draining -= 1
            return
        await super().send(message)


async def test_disconnect_while_the_server_send_waits_closes_a_plain_stream_generator() -> None:
    """Also for responses passed through: the app is inside the server's ``send()`` when the
    client leaves; the stop waits for that ``send()`` to return."""
    gens: list[AsyncIterator[bytes]] = []
    cleaned_up: list[str] = []
    app = FastAPI()

    @app.get("/text")
    async def text() -> StreamingResponse:
        # Once the watcher waits for the disconnect, it hears of it before the server's
        # send() returns (waiters wake in order): the stop must not land inside that send().
        await wait_until(lambda: server.listening)

        async def gen() -> AsyncIterator[bytes]:
            try:
                while True:
                    yield b"some plain text\n"
                    await asyncio.sleep(0)  # its upstream (a yield, not a wait)
            finally:
                cleaned_up.append("upstream closed")

        stream = gen()
        gens.append(stream)
        return StreamingResponse(stream, media_type="text/plain")

    app.add_middleware(StreamHopMiddleware, registry=CollectorRegistry())
    server = FlowControlledServer()
    scope = http_scope("GET", "/text", spec_version="2.4")  # Starlette does not watch receive
    task = asyncio.create_task(app(scope, server.receive, server.send))
    try:
        await wait_until(lambda: server.draining > 0)  # the app is inside the server's send()
        server.disconnect.set()
        async with asyncio.timeout(5):
            await task
        assert cleaned_up == ["upstream closed"]
    finally:
        for stream in gens:
            await stream.aclose()  # type: ignore[attr-defined]


# ---- frameworks that run the view in a child task (Django, Quart): told the ASGI way


def child_task_app(
    cleaned_up: list[str], errors: list[BaseException], *, listen: bool, pause_s: float = 0.01
) -> ASGIApp:
    """An app laid out like Django's and Quart's ASGI handlers: the view streams from a child
    task (closing its generator when ``send`` fails, as both do), a second child listens for
    ``http.disconnect`` (when ``listen``), and the app waits on them with ``asyncio.wait`` and
    cancels the view once the listener returns. Cancelling the app's task does not reach the
    children: ``asyncio.wait`` does not cancel what it waits on."""

    async def upstream() -> AsyncIterator[bytes]:
        try:
            for i in range(100_000):
                yield encode_events([chat_chunk({"content": f" {i}"})])
                await asyncio.sleep(pause_s)  # the provider's next token
        finally:
            cleaned_up.append("upstream closed")

    async def view(send: Send) -> None:
        await send(sse_start())
        try:
            async with contextlib.aclosing(upstream()) as chunks:
                async for chunk in chunks:
                    await send(body(chunk))
        except OSError as exc:
            errors.append(exc)
            return
        await send(dict(FINAL))

    async def listen_for_disconnect(receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await read_body(receive)
        tasks = [asyncio.create_task(view(send))]
        if listen:
            tasks.append(asyncio.create_task(listen_for_disconnect(receive)))
        _done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    return app


async def test_a_view_in_a_child_task_hears_the_disconnect_and_its_framework_stops_it() -> None:
    """Django and Quart: told through ``receive()``, the framework cancels the view itself,
    within milliseconds; cancelling the app's task (the old way) would orphan the view."""
    registry = CollectorRegistry()
    cleaned_up: list[str] = []
    errors: list[BaseException] = []
    app = child_task_app(cleaned_up, errors, listen=True)
    server = Server()
    # A grace far longer than the bound below: the app must stop by itself, not be cancelled.
    task = asyncio.create_task(run(app, server, registry=registry, stop_grace_s=60.0))
    await wait_until(lambda: len(server.bodies) >= 2)
    server.disconnect.set()
    await wait_until(lambda: bool(cleaned_up), timeout_s=2.0)
    async with asyncio.timeout(2.0):
        await task
    assert cleaned_up == ["upstream closed"]
    # Cancelled by its framework; had the view sent in the moment between its listener hearing
    # and the cancellation, that send() would have raised the middleware's OSError.
    assert all(isinstance(e, ClientDisconnectedError) for e in errors), errors
    labels = {"route": "asgi", "model": "other"}
    assert (
        sample(registry, "streamhop_cancellations_total", **labels, reason="client_disconnect") == 1
    )
    assert sample(registry, "streamhop_streams_active", route="asgi") == 0


async def test_a_view_its_framework_leaves_running_gets_an_oserror_from_send() -> None:
    """A framework that never listens: its task is cancelled at once, the view in its child
    task runs on, and its next ``send()`` raises an ``OSError`` (as the ASGI spec asks of
    servers) instead of returning silently, so it closes its generator."""
    cleaned_up: list[str] = []
    errors: list[BaseException] = []
    app = child_task_app(cleaned_up, errors, listen=False)
    server = Server()
    task = asyncio.create_task(run(app, server, registry=CollectorRegistry()))
    await wait_until(lambda: len(server.bodies) >= 2)
    server.disconnect.set()
    await wait_until(lambda: bool(cleaned_up), timeout_s=2.0)
    await task
    assert cleaned_up == ["upstream closed"]
    (error,) = errors
    assert isinstance(error, ClientDisconnectedError) and isinstance(error, OSError)
    assert error.reason == "client_disconnect"


async def test_receive_answers_disconnect_to_a_pending_and_every_later_call() -> None:
    """The raw ASGI contract after a disconnect: ``receive()`` says ``http.disconnect`` (the
    call already waiting, and every later one), then ``send()`` raises ``OSError``."""
    heard: list[str] = []
    refused: list[BaseException] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await read_body(receive)
        await send(sse_start())
        await send(body(encode_events([chat_chunk({"content": "Hi"})])))
        heard.append((await receive())["type"])  # waiting when the client leaves
        heard.append((await receive())["type"])
        heard.append((await receive())["type"])
        try:
            await send(body(encode_events([chat_chunk({"content": " there"})])))
        except OSError as exc:
            refused.append(exc)
            raise

    server = Server()
    task = asyncio.create_task(run(app, server, registry=CollectorRegistry()))
    await wait_until(lambda: len(server.bodies) == 1)
    server.disconnect.set()
    await task  # the OSError the app re-raised is the disconnect, not an app failure
    assert heard == ["http.disconnect"] * 3
    (error,) = refused
    assert isinstance(error, ClientDisconnectedError)
    assert len(server.bodies) == 1


async def test_an_app_that_hears_the_disconnect_and_does_nothing_is_cancelled_after_grace() -> None:
    """The last resort: the app is listening (so it gets its chance), but does not stop."""
    heard: list[str] = []
    stopped: list[float] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await read_body(receive)
        await send(sse_start())

        listening = asyncio.Event()

        async def listen() -> None:
            listening.set()  # ... and on into receive(), before the app runs again
            heard.append((await receive())["type"])

        listener = asyncio.create_task(listen())
        await listening.wait()
        await send(body(encode_events([chat_chunk({"content": "Hi"})])))
        try:
            await asyncio.Event().wait()  # its upstream, forever
        finally:
            stopped.append(time.monotonic())
            await listener

    server = Server()
    task = asyncio.create_task(run(app, server, registry=CollectorRegistry(), stop_grace_s=0.2))
    await wait_until(lambda: len(server.events) == 1)
    told_at = time.monotonic()
    server.disconnect.set()
    async with asyncio.timeout(5):
        await task
    assert heard == ["http.disconnect"]
    (stopped_at,) = stopped
    assert stopped_at - told_at >= 0.15  # not before the grace ran out


# ---- backpressure and stalls


async def test_slow_client_makes_the_apps_send_wait() -> None:
    gate = asyncio.Event()
    progress: list[int] = []
    event_size = 100

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send(sse_start())
        for i in range(200):
            await send(body(b"data: %0*d\n\n" % (event_size - 8, i)))
            progress.append(i)
        await send(dict(FINAL))

    server = Server(gate=gate)
    suspended = Suspended()
    options = {"max_pending_bytes": 1000, "format": "sse", "registry": CollectorRegistry()}
    task = asyncio.create_task(run(SendProbe(app, suspended), server, **options))
    # The app's send() waits for room; it stays suspended while the client takes nothing.
    await wait_until(lambda: suspended.count > 0)
    assert not task.done()
    # One write in flight, at most max_pending_bytes (+ one chunk) held: the app waits.
    assert len(progress) <= 2 * (1000 // event_size + 2), len(progress)
    gate.set()
    await task
    assert len(progress) == 200
    assert [int(e.data or "") for e in server.events] == list(range(200))


async def test_an_app_whose_send_timed_out_waiting_for_room_is_still_stopped() -> None:
    """An app that gives up on a ``send()`` waiting for room (its own timeout cancels it, as
    sse-starlette's ``send_timeout`` does) is no longer inside ``send()``: a later disconnect
    must still reach it, not wait for it to leave a ``send()`` it already left."""
    cleaned_up: list[str] = []
    gave_up: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send(sse_start())
        try:
            for i in range(1000):
                chunk = body(b"data: %098d\n\n" % i)
                try:
                    # The app's own send timeout (not synchronisation): the client reads
                    # nothing, so this send() waits for room until the app gives up on it.
                    await asyncio.wait_for(send(chunk), timeout=0.05)
                except TimeoutError:
                    gave_up.append("send")
                    break
            await asyncio.Event().wait()  # its upstream, forever
        finally:
            cleaned_up.append("upstream closed")

    server = Server(gate=asyncio.Event())  # a client that reads nothing
    options = {"max_pending_bytes": 1000, "format": "sse", "registry": CollectorRegistry()}
    task = asyncio.create_task(run(app, server, **options))
    await wait_until(lambda: bool(gave_up))
    server.disconnect.set()
    async with asyncio.timeout(5):
        await task
    assert cleaned_up == ["upstream closed"]


async def test_stalled_client_is_dropped_and_the_handler_cancelled() -> None:
    registry = CollectorRegistry()
    cleaned_up: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send(sse_start())
        try:
            for i in range(1000):
                await send(body(encode_events([chat_chunk({"content": f" {i}"})])))
                await asyncio.sleep(0.001)  # the provider's pace (not synchronisation)
        finally:
            cleaned_up.append("upstream closed")

    server = Server(gate=asyncio.Event())  # accepts no body byte, ever
    await run(app, server, registry=registry, stall_timeout_s=0.1)
    assert cleaned_up == ["upstream closed"]
    labels = {"route": "asgi", "model": "other"}
    assert sample(registry, "streamhop_cancellations_total", **labels, reason="stall") == 1


# ---- keep-alive


def silent_app(first: SSEEvent, last: SSEEvent, release: asyncio.Event) -> ASGIApp:
    """An app that sends ``first``, goes silent until ``release`` (its model thinks), then
    sends ``last`` and ends."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send(sse_start())
        await send(body(encode_events([first])))
        await release.wait()
        await send(body(encode_events([last])))
        await send(dict(FINAL))

    return app


async def test_an_idle_sse_response_gets_keep_alive_comments() -> None:
    """After ``keepalive_interval_s`` without a write the middleware writes a comment, so idle
    timeouts of proxies in between do not cut a stream whose model is still thinking; a client
    ignores it (the events are unchanged)."""
    first, last = chat_chunk({"content": "Hi"}), chat_chunk({"content": " there"})
    release = asyncio.Event()
    server = Server()
    app = silent_app(first, last, release)
    options = {"registry": CollectorRegistry(), "keepalive_interval_s": 0.05}
    task = asyncio.create_task(run(app, server, **options))
    await wait_until(lambda: b": keep-alive\n\n" in server.bodies)
    release.set()
    await task
    assert server.bodies[0] == encode_events([first])
    assert server.events == [first, last]
    assert server.sent[-1] == FINAL


async def test_keep_alive_none_writes_no_comment() -> None:
    """``None`` turns keep-alive off: a stream idle for as long as another one, running
    alongside with keep-alive on, takes to get two comments gets none."""
    first, last = chat_chunk({"content": "Hi"}), chat_chunk({"content": " there"})
    release = asyncio.Event()
    on, off = Server(), Server()
    tasks = [
        asyncio.create_task(
            run(
                silent_app(first, last, release),
                server,
                registry=CollectorRegistry(),
                keepalive_interval_s=interval,
            )
        )
        for server, interval in ((on, 0.05), (off, None))
    ]
    await wait_until(lambda: on.bodies.count(b": keep-alive\n\n") >= 2)
    release.set()
    await asyncio.gather(*tasks)
    assert off.bodies == [encode_events([first]), encode_events([last])]
    assert off.events == on.events == [first, last]


# ---- errors


@pytest.mark.parametrize(
    ("first", "expected_name"),
    [
        (chat_chunk({"content": "Partial"}), None),
        (anthropic_delta(0, "text_delta", "Part"), "error"),
    ],
)
async def test_app_exception_mid_stream_ends_with_an_error_event_then_is_reraised(
    first: SSEEvent, expected_name: str | None
) -> None:
    registry = CollectorRegistry()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send(sse_start())
        await send(body(encode_events([first])))
        await asyncio.sleep(0.01)  # its provider fails a little later (not synchronisation)
        raise RuntimeError("secret detail")

    server = Server()
    with pytest.raises(RuntimeError, match="secret detail"):
        await run(app, server, registry=registry)
    assert server.sent[-1] == FINAL
    *content, error = server.events
    assert content == [first]
    assert error.event == expected_name
    assert error.data is not None and "secret" not in error.data
    parsed = json.loads(error.data)
    code = parsed["error"]["code"]
    assert code == "internal_error"
    assert (
        sample(
            registry,
            "streamhop_upstream_errors_total",
            route="asgi",
            model="other",
            kind="app_error",
        )
        == 1
    )


async def test_app_error_while_the_client_leaves_is_reraised_not_a_cancellation(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """sse-starlette gives up on a slow client (``send_timeout``) and raises; the middleware
    is writing the error event when the client leaves: the server must see the app's
    exception, not a ``CancelledError`` from the middleware's stopped writer."""
    app = FastAPI()

    @app.get("/events")
    async def events() -> EventSourceResponse:
        async def gen() -> AsyncIterator[dict[str, str]]:
            for i in range(100_000):
                yield {"data": f"{i:0100d}"}

        return EventSourceResponse(gen(), send_timeout=0.05)

    app.add_middleware(
        StreamHopMiddleware, registry=CollectorRegistry(), format="sse", max_pending_bytes=1000
    )
    server = Server(gate=asyncio.Event())  # a client that reads nothing
    task = asyncio.create_task(app(http_scope("GET", "/events"), server.receive, server.send))
    with caplog.at_level(logging.WARNING, logger="streamhop.middleware.asgi.responder"):
        await wait_until(lambda: any("mid-stream" in r.getMessage() for r in caplog.records))
    server.disconnect.set()  # ... and now it leaves, while the error event waits to be written
    with pytest.raises(SendTimeoutError):
        async with asyncio.timeout(5):
            await task


async def test_app_exception_before_the_response_is_reraised_untouched() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        raise LookupError("no such model")

    server = Server()
    with pytest.raises(LookupError):
        await run(app, server, registry=CollectorRegistry())
    assert server.sent == []


async def test_event_too_large_ends_the_stream_and_stops_the_app() -> None:
    registry = CollectorRegistry()
    cleaned_up: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send(sse_start())
        await send(body(encode_events([chat_chunk({"content": "ok"})])))
        try:
            await send(body(b"data: " + b"x" * 1000 + b"\n\n"))
            await send(body(b"data: dropped\n\n"))  # before its next await: dropped
            await asyncio.Event().wait()  # its upstream: cancelled here
        finally:
            cleaned_up.append("upstream closed")

    server = Server()
    await run(app, server, registry=registry, max_event_bytes=500)
    assert cleaned_up == ["upstream closed"]
    assert server.sent[-1] == FINAL
    _ok, error = server.events
    assert json.loads(error.data or "")["error"]["code"] == "event_too_large"
    labels = {"route": "asgi", "model": "other"}
    assert (
        sample(registry, "streamhop_upstream_errors_total", **labels, kind="event_too_large") == 1
    )


async def test_stream_ending_inside_an_event_gets_a_truncation_error() -> None:
    server = Server()
    first = chat_chunk({"content": "ok"})
    await run(
        paced_chunks_app([encode_events([first]), b'data: {"choi']),
        server,
        registry=CollectorRegistry(),
    )
    ok, error = server.events
    assert ok == first
    assert json.loads(error.data or "")["error"]["code"] == "upstream_truncated"


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("flush_interval_ms", -1),
        ("flush_interval_ms", float("nan")),
        ("flush_interval_ms", "20"),
        ("flush_interval_ms", True),
        ("max_flush_bytes", 0),
        ("max_event_bytes", -5),
        ("max_pending_bytes", 1.5),
        ("stall_timeout_s", 0),
        ("stall_timeout_s", float("inf")),
        ("stop_grace_s", 0),
        ("stop_grace_s", -1.0),
        ("mode", "fast"),
        ("format", "openai"),
        ("registry", object()),
        ("models", "gpt-4o"),
        ("models", [1, 2]),
        ("route_label", ""),
        ("keepalive_interval_s", 0),
        ("keepalive_interval_s", -1.0),
        ("keepalive_interval_s", float("inf")),
        ("keepalive_interval_s", "15"),
        ("keepalive_interval_s", True),
    ],
)
def test_bad_option_raises_value_error_naming_it(option: str, value: object) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        raise AssertionError("never called")

    with pytest.raises(ValueError, match=option):
        StreamHopMiddleware(app, **{option: value})


def test_defaults() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        raise AssertionError("never called")

    mw = StreamHopMiddleware(app, registry=CollectorRegistry())
    assert (mw.flush_interval_ms, mw.max_flush_bytes, mw.max_event_bytes) == (20.0, 16384, 1 << 20)
    assert (mw.max_pending_bytes, mw.stall_timeout_s, mw.mode) == (1 << 20, 30.0, "coalesce")
    assert (mw.format, mw.models, mw.route_label) == ("auto", frozenset(), None)
    assert (mw.stop_grace_s, mw.keepalive_interval_s) == (1.0, 15.0)


def test_instances_share_one_registry() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        raise AssertionError("never called")

    registry = CollectorRegistry()
    first = StreamHopMiddleware(app, registry=registry)
    second = StreamHopMiddleware(app, registry=registry)
    assert first.metrics is second.metrics


# ---- frameworks


def _chat_events() -> list[SSEEvent]:
    return fixture_events(CHAT_FIXTURE)


async def test_fastapi_streaming_response() -> None:
    registry = CollectorRegistry()
    upstream = _chat_events()
    closed: list[str] = []
    app = FastAPI()

    @app.post("/v1/chat/{session}")
    async def chat(session: str, request: Request) -> StreamingResponse:
        assert (await request.json())["model"] == "sim-large"

        async def gen() -> AsyncIterator[bytes]:
            try:
                for event in upstream:
                    yield encode_events([event])
                    await asyncio.sleep(0.001)  # the provider's pace (not synchronisation)
            finally:
                closed.append(session)

        return StreamingResponse(gen(), media_type="text/event-stream")

    app.add_middleware(StreamHopMiddleware, registry=registry, models=["sim-large"])
    request = {"type": "http.request", "body": b'{"model": "sim-large"}', "more_body": False}
    server = Server([request])
    async with asyncio.timeout(10):
        await app(http_scope("POST", "/v1/chat/abc"), server.receive, server.send)
    assert closed == ["abc"]
    assert server.sent[-1] == FINAL
    assert accumulate("openai-chat", server.events) == accumulate("openai-chat", upstream)
    assert len(server.bodies) <= len(upstream) // 2
    # The route template, never the raw path; the model from the allow-list.
    labels = {"route": "/v1/chat/{session}", "model": "sim-large"}
    assert sample(registry, "streamhop_events_total", **labels, direction="upstream") == len(
        upstream
    )


async def test_sse_starlette_event_source_response_and_its_pings() -> None:
    registry = CollectorRegistry()
    upstream = _chat_events()
    app = FastAPI()

    @app.get("/events")
    async def events() -> EventSourceResponse:
        async def gen() -> AsyncIterator[dict[str, str]]:
            for i, event in enumerate(upstream):
                yield {"data": event.data or ""}
                if i == 5:
                    # The model thinks (the provider's pace, not synchronisation): pings,
                    # every 50 ms, keep the line alive.
                    await asyncio.sleep(0.3)
                await asyncio.sleep(0.001)  # the provider's pace

        return EventSourceResponse(gen(), ping=0.05)

    app.add_middleware(StreamHopMiddleware, registry=registry)
    server = Server()
    async with asyncio.timeout(10):
        await app(http_scope("GET", "/events"), server.receive, server.send)
    assert server.sent[-1] == FINAL
    assert (b"x-accel-buffering", b"no") in server.sent[0]["headers"]
    assert (b"cache-control", b"no-store") in server.sent[0]["headers"]  # the app's own choice
    raw = b"".join(server.bodies)
    # Forwarded while the stream was idle (the comment as sent; line ends are LF, as streamhop
    # frames every event it writes).
    assert b"\n: ping - " in b"\n" + raw
    assert accumulate("openai-chat", server.events) == accumulate("openai-chat", upstream)
    assert len(server.bodies) <= len(upstream) // 2


async def test_flush_boundary_option_and_header_reach_the_pump() -> None:
    """``flush_boundary`` as an option and as ``X-Streamhop-Flush-Boundary``; a bad value is an
    OptionError naming it."""
    from streamhop.middleware.asgi.options import MiddlewareOptions, OptionError
    from streamhop.middleware.controls import Controls

    options = MiddlewareOptions(flush_boundary="sentence", max_boundary_wait_ms=100)
    pump = options.pump_options(Controls())
    assert pump.flush_boundary == "sentence" and pump.max_boundary_wait_s == 0.1
    assert options.pump_options(Controls(flush_boundary="word")).flush_boundary == "word"
    with pytest.raises(OptionError, match="flush_boundary"):
        MiddlewareOptions(flush_boundary="paragraph")
    with pytest.raises(OptionError, match="max_boundary_wait_ms"):
        MiddlewareOptions(max_boundary_wait_ms=-1)


async def test_burst_thresholds_are_options() -> None:
    """An app whose provider call sits behind a buffering hop: a silence, then events arriving
    together. With ``burst_gap_ms=50, burst_events=3`` the middleware counts it; the defaults
    (500 ms, 20 events) do not."""
    chunks = [chat_chunk({"content": f"w{i} "}) for i in range(4)]

    def buffered_app() -> ASGIApp:
        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            await read_body(receive)
            await send(sse_start())
            await send(body(encode_events(chunks[:1])))
            await asyncio.sleep(0.12)  # the hop holds the provider's events (its pace)
            await send(body(encode_events(chunks[1:]) + b"data: [DONE]\n\n"))
            await send(FINAL)

        return app

    counts = []
    settings: list[dict[str, Any]] = [{"burst_gap_ms": 50, "burst_events": 3}, {}]
    for options in settings:
        registry = CollectorRegistry()
        app = StreamHopMiddleware(buffered_app(), registry=registry, **options)
        server = Server()
        async with asyncio.timeout(10):
            await app(http_scope("GET", "/events"), server.receive, server.send)
        counts.append(
            sample(registry, "streamhop_upstream_bursts_total", route="asgi", model="other")
        )
    assert counts == [1, 0]
    with pytest.raises(ValueError, match="burst_events"):
        StreamHopMiddleware(buffered_app(), burst_events=1)


async def test_a_rechunked_stream_logs_the_sidecars_json_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """One end of stream for both: the same ``stream_end`` line on ``streamhop.streams``."""
    data = fixture_bytes(CHAT_FIXTURE)
    with caplog.at_level(logging.INFO, logger="streamhop.streams"):
        await run(paced_app(data), Server(), registry=CollectorRegistry())
    (line,) = [r.getMessage() for r in caplog.records if r.name == "streamhop.streams"]
    logged = json.loads(line)
    assert logged["event"] == "stream_end"
    assert (logged["route"], logged["path"], logged["status"]) == ("asgi", "/stream", 200)
    assert logged["format"] == "openai-chat" and logged["bytes_in"] == len(data)
    assert logged["events_in"] == len(fixture_events(CHAT_FIXTURE))
    assert logged["ttft_ms"] is not None and logged["duration_ms"] >= logged["ttft_ms"]
    assert logged["cancel_reason"] is None and logged["error"] is None
