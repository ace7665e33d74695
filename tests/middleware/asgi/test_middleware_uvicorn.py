"""``StreamHopMiddleware`` in a real uvicorn server on loopback, in front of a FastAPI app whose
handler calls ``streamhop simulate`` through the official ``openai`` SDK (``AsyncOpenAI``).

The simulator's stream log (``GET /_simulator/streams``) says when the provider side saw its
connection close; its times are ``time.monotonic()``, one clock for every process on Linux.
The servers, their registry and the handlers' log are shared by the tests of this module, so
each test looks only at its own request ids and at how much a metric grew while it ran.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import aiohttp
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from openai import AsyncOpenAI
from prometheus_client import CollectorRegistry

from streamhop.middleware import SSEDecoder, SSEEvent, StreamHopMiddleware
from tests.support import StreamhopProcess, start_streamhop
from tests.uvicorn_server import BackgroundUvicorn

pytestmark = pytest.mark.integration

SLOW_STREAM = {
    "x-sim-events-per-second": "20",
    "x-sim-tokens-per-second": "100",
    "x-sim-max-tokens": "2000",
}


@pytest.fixture(scope="module")
def simulator() -> Iterator[StreamhopProcess]:
    proc = start_streamhop("simulate", "--listen", "127.0.0.1:0", "--ttft-ms", "30")
    yield proc
    proc.stop()


class Handlers:
    """What the app's handlers saw: request ids whose ``finally`` ran."""

    def __init__(self) -> None:
        self.cleaned_up: list[str] = []


def make_app(simulator_url: str, handlers: Handlers, registry: CollectorRegistry | None) -> FastAPI:
    """A chat backend; with ``registry``, wrapped in the middleware (recording there)."""
    app = FastAPI()

    def client_for(request: Request) -> tuple[AsyncOpenAI, dict[str, str]]:
        forward = {k: v for k, v in request.headers.items() if k.startswith("x-sim-")}
        forward["x-request-id"] = request.headers["x-request-id"]
        client = AsyncOpenAI(base_url=simulator_url + "/v1", api_key="sk-test", max_retries=0)
        return client, forward

    @app.post("/api/chat")
    async def chat(request: Request) -> StreamingResponse:
        prompt = (await request.json())["prompt"]
        client, headers = client_for(request)
        stream = await client.chat.completions.create(
            model="streamhop-sim-1",
            messages=[{"role": "user", "content": prompt}],
            stream=True,
            extra_headers=headers,
        )

        async def events() -> AsyncIterator[str]:
            try:
                async with stream:
                    async for chunk in stream:
                        yield f"data: {chunk.model_dump_json(exclude_unset=True)}\n\n"
                yield "data: [DONE]\n\n"
            finally:
                handlers.cleaned_up.append(headers["x-request-id"])
                await client.close()

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.post("/api/answer")
    async def answer(request: Request) -> JSONResponse:
        """Not streamed: Starlette does not watch the client while this awaits."""
        client, headers = client_for(request)
        try:
            completion = await client.chat.completions.create(
                model="streamhop-sim-1",
                messages=[{"role": "user", "content": "hi"}],
                extra_headers=headers,
            )
        finally:
            handlers.cleaned_up.append(headers["x-request-id"])
            await client.close()
        return JSONResponse({"text": completion.choices[0].message.content})

    if registry is not None:
        app.add_middleware(StreamHopMiddleware, flush_interval_ms=20, registry=registry)
    return app


@pytest.fixture(scope="module")
def servers(
    simulator: StreamhopProcess,
) -> Iterator[tuple[BackgroundUvicorn, BackgroundUvicorn, CollectorRegistry, Handlers]]:
    """The same app with the middleware and without it."""
    registry = CollectorRegistry()
    handlers = Handlers()
    with (
        BackgroundUvicorn(make_app(simulator.url, handlers, registry)) as wrapped,
        BackgroundUvicorn(make_app(simulator.url, handlers, None)) as direct,
    ):
        yield wrapped, direct, registry, handlers


async def sim_record(
    session: aiohttp.ClientSession,
    simulator: StreamhopProcess,
    rid: str,
    bound_s: float = 15.0,
    *,
    ended: bool = True,
) -> dict[str, Any]:
    """The simulator's log entry for request ``rid`` once it has an outcome (``ended``), or
    once it exists (the provider is generating); ``TimeoutError`` after ``bound_s`` seconds."""
    async with asyncio.timeout(bound_s):
        while True:
            async with session.get(simulator.url + "/_simulator/streams") as resp:
                for record in await resp.json():
                    if record["id"] == rid and (record["outcome"] is not None or not ended):
                        return dict(record)
            await asyncio.sleep(0.02)  # the next poll


async def wait_until(predicate: Callable[[], bool], bound_s: float = 5.0) -> None:
    """Return once ``predicate()`` is true; ``TimeoutError`` after ``bound_s`` seconds."""
    async with asyncio.timeout(bound_s):
        while not predicate():
            await asyncio.sleep(0.005)  # the next poll


def cancellations(registry: CollectorRegistry, route: str) -> float:
    """``streamhop_cancellations_total{reason="client_disconnect"}`` of ``route`` so far."""
    labels = {"route": route, "model": "other", "reason": "client_disconnect"}
    return registry.get_sample_value("streamhop_cancellations_total", labels) or 0.0


def content_of(events: list[SSEEvent]) -> str:
    text = []
    for event in events:
        if event.data is None or event.data == "[DONE]":
            continue
        for choice in json.loads(event.data)["choices"]:
            text.append(choice["delta"].get("content") or "")
    return "".join(text)


async def test_client_disconnect_mid_stream_closes_the_apps_upstream(
    simulator: StreamhopProcess,
    servers: tuple[BackgroundUvicorn, BackgroundUvicorn, CollectorRegistry, Handlers],
) -> None:
    wrapped, _, registry, handlers = servers
    rid = f"mid-stream-{uuid.uuid4().hex[:8]}"
    before = cancellations(registry, "/api/chat")
    async with aiohttp.ClientSession() as session:
        resp = await session.post(
            wrapped.url + "/api/chat",
            json={"prompt": "tell me a long story"},
            headers={"x-request-id": rid, **SLOW_STREAM},
        )
        assert resp.status == 200
        assert resp.headers["x-accel-buffering"] == "no"
        decoder = SSEDecoder()
        events: list[SSEEvent] = []
        async with asyncio.timeout(10):
            while not content_of(events):
                events += decoder.feed(await resp.content.readany())
        closed_at = time.monotonic()
        resp.close()  # the client goes away mid-stream (the answer lasts ~20 s)
        record = await sim_record(session, simulator, rid)
    assert record["outcome"] == "client_closed"
    assert record["ended"] - closed_at < 2.0, record
    # The handler's cleanup and the middleware's accounting finish in the app's process, maybe
    # after the simulator saw the close: wait for them, then check this stream counted once.
    await wait_until(lambda: rid in handlers.cleaned_up)
    await wait_until(lambda: cancellations(registry, "/api/chat") > before)
    assert cancellations(registry, "/api/chat") == before + 1


async def test_client_disconnect_during_a_non_streamed_call_cancels_it_only_with_middleware(
    simulator: StreamhopProcess,
    servers: tuple[BackgroundUvicorn, BackgroundUvicorn, CollectorRegistry, Handlers],
) -> None:
    wrapped, direct, registry, handlers = servers
    outcomes = {}
    rids = {}
    before = cancellations(registry, "/api/answer")
    async with aiohttp.ClientSession() as session:
        for name, server in (("wrapped", wrapped), ("direct", direct)):
            rid = rids[name] = f"answer-{name}-{uuid.uuid4().hex[:8]}"
            # The simulator answers after its 1.5 s "generation".
            headers = {"x-request-id": rid, "x-sim-ttft-ms": "1500"}
            request = asyncio.create_task(
                session.post(server.url + "/api/answer", json={}, headers=headers)
            )
            # Once the provider is generating, the handler awaits it.
            await sim_record(session, simulator, rid, ended=False)
            request.cancel()  # the client gives up: its connection closes
            closed_at = time.monotonic()
            with pytest.raises(asyncio.CancelledError):
                await request
            record = await sim_record(session, simulator, rid)
            outcomes[name] = (record["outcome"], record["ended"] - closed_at)
    assert outcomes["wrapped"][0] == "client_closed", outcomes
    assert outcomes["wrapped"][1] < 1.0, outcomes
    # Without the middleware the handler runs on and the provider generates the whole answer.
    assert outcomes["direct"][0] == "complete", outcomes
    # With it, the handler was cancelled (its finally ran), and that counted once.
    await wait_until(lambda: rids["wrapped"] in handlers.cleaned_up)
    await wait_until(lambda: cancellations(registry, "/api/answer") > before)
    assert cancellations(registry, "/api/answer") == before + 1


async def test_the_same_stream_with_and_without_the_middleware(
    servers: tuple[BackgroundUvicorn, BackgroundUvicorn, CollectorRegistry, Handlers],
) -> None:
    wrapped, direct, _, _ = servers
    received: dict[str, list[SSEEvent]] = {}
    async with aiohttp.ClientSession() as session:
        for name, server in (("wrapped", wrapped), ("direct", direct)):
            rid = f"compare-{name}-{uuid.uuid4().hex[:8]}"
            async with session.post(
                server.url + "/api/chat",
                json={"prompt": "compare"},
                headers={"x-request-id": rid, "x-sim-max-tokens": "800"},
            ) as resp:
                assert resp.status == 200
                decoder = SSEDecoder()
                events: list[SSEEvent] = []
                async with asyncio.timeout(20):
                    async for chunk in resp.content.iter_any():
                        events += decoder.feed(chunk)
                received[name] = events
    wrapped_events, direct_events = received["wrapped"], received["direct"]
    assert content_of(wrapped_events) == content_of(direct_events)
    assert any(ord(c) > 0x7F for c in content_of(direct_events))  # multi-byte text survived
    assert wrapped_events[-1].data == direct_events[-1].data == "[DONE]"
    # 80 events at 200/s merged on a 20 ms window: several times fewer.
    assert len(direct_events) >= 80
    assert len(wrapped_events) <= len(direct_events) // 2, (
        len(wrapped_events),
        len(direct_events),
    )
