"""``streamhop simulate``: wire formats parsed by the official SDKs, determinism, multi-byte text,
split writes, pacing, replay of every recorded fixture, the stream log, and the CLI.

Servers are real ``aiohttp.web.AppRunner`` instances on 127.0.0.1 port 0 in the test's loop; the
synchronous SDKs run in a worker thread (``asyncio.to_thread``). Timing asserts are deliberately
loose: the suite runs on small, noisy machines.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from itertools import pairwise
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import openai
import pytest
from aiohttp import web

from streamhop.sidecar.simulate import SimulatorConfig, make_app
from streamhop.sidecar.simulate.cli import add_arguments, run
from streamhop.sidecar.simulate.errors import SimulatorConfigError
from streamhop.sidecar.simulate.recording import split_events
from streamhop.sidecar.simulate.response import answer_delay_s
from streamhop.sidecar.simulate.writer import split_offsets
from tests.support import FIXTURES, sse_pairs, wait_for_async

MESSAGES: list[Any] = [{"role": "user", "content": "Tell me about fast inference."}]
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer"},
    },
    "required": ["city"],
}
CHAT_TOOLS: list[Any] = [
    {"type": "function", "function": {"name": "get_weather", "parameters": SCHEMA}}
]
RESPONSES_TOOLS: list[Any] = [{"type": "function", "name": "get_weather", "parameters": SCHEMA}]
ANTHROPIC_TOOLS: list[Any] = [{"name": "get_weather", "input_schema": SCHEMA}]
FAST = SimulatorConfig(ttft_ms=5.0)
# Header set that makes a stream slow enough to watch: 1 token per event, 20 events/s.
SLOW = {"x-sim-events-per-second": "20", "x-sim-tokens-per-second": "20"}


@contextlib.asynccontextmanager
async def serving(
    config: SimulatorConfig = FAST, *, handler_cancellation: bool = True
) -> AsyncIterator[str]:
    """Run ``make_app(config)`` on 127.0.0.1, a free port; yield its base URL."""
    runner = web.AppRunner(
        make_app(config),
        handler_cancellation=handler_cancellation,
        access_log=None,
        shutdown_timeout=0.5,
    )
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@pytest.fixture
async def sim() -> AsyncIterator[str]:
    async with serving() as url:
        yield url


async def post(
    url: str, path: str, body: dict[str, Any], headers: dict[str, str] | None = None
) -> tuple[aiohttp.ClientResponse, bytes]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(url + path, json=body, headers=headers) as resp,
    ):
        return resp, await resp.read()


async def read_http_chunks(resp: aiohttp.ClientResponse) -> list[bytes]:
    """Read a chunked response body as its HTTP chunks, i.e. the server's ``write()`` calls."""
    chunks: list[bytes] = []
    pending = b""
    async for data, end_of_chunk in resp.content.iter_chunks():
        pending += data
        if end_of_chunk:
            chunks.append(pending)
            pending = b""
    if pending:
        chunks.append(pending)
    return chunks


def chat_body(**extra: Any) -> dict[str, Any]:
    return {"model": "sim", "messages": MESSAGES, **extra}


def openai_client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=30)


def anthropic_client(url: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=url, api_key="x", max_retries=0, timeout=30)


# --- OpenAI Chat Completions ---------------------------------------------------------------------


async def test_chat_stream_and_non_stream_parse_with_sdk(sim: str) -> None:
    def calls() -> tuple[str, Any, str, str]:
        with openai_client(sim) as client:
            stream = client.chat.completions.create(
                model="sim",
                messages=MESSAGES,
                max_tokens=45,
                stream=True,
                stream_options={"include_usage": True},
            )
            chunks = list(stream)
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            with client.chat.completions.stream(
                model="sim", messages=MESSAGES, max_tokens=45
            ) as helper:
                final = helper.get_final_completion()
            plain = client.chat.completions.create(model="sim", messages=MESSAGES, max_tokens=45)
            return (
                text,
                chunks,
                final.choices[0].message.content or "",
                plain.choices[0].message.content or "",
            )

    text, chunks, accumulated, plain = await asyncio.to_thread(calls)
    assert text and text == accumulated == plain
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == []
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens == 45
    assert usage.total_tokens == usage.prompt_tokens + 45
    assert all(c.model == "sim" and c.object == "chat.completion.chunk" for c in chunks)


async def test_chat_raw_chunks_follow_openai_shape(sim: str) -> None:
    resp, raw = await post(
        sim, "/v1/chat/completions", chat_body(stream=True, max_tokens=30), {"x-request-id": "abc"}
    )
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "text/event-stream; charset=utf-8"
    assert resp.headers["Cache-Control"] == "no-cache"
    assert resp.headers["x-request-id"] == "abc"
    assert "Content-Length" not in resp.headers
    assert resp.headers["Transfer-Encoding"] == "chunked"
    events = sse_pairs(raw)
    assert events[-1] == (None, "[DONE]")
    chunks = [json.loads(data) for _, data in events[:-1]]
    assert list(chunks[0]) == ["id", "object", "created", "model", "system_fingerprint", "choices"]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}
    assert chunks[-1]["choices"][0] == {
        "index": 0,
        "delta": {},
        "logprobs": None,
        "finish_reason": "stop",
    }
    # 30 tokens at 2000/200 = 10 tokens per event.
    assert len(chunks) == 1 + 3 + 1
    assert "usage" not in chunks[1]

    _, raw = await post(
        sim,
        "/v1/chat/completions",
        chat_body(stream=True, max_tokens=30, stream_options={"include_usage": True}),
    )
    chunks = [json.loads(data) for _, data in sse_pairs(raw)[:-1]]
    assert all(c["usage"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 30


async def test_chat_tool_call_stream_and_non_stream(sim: str) -> None:
    def calls() -> tuple[Any, Any]:
        with openai_client(sim) as client:
            with client.chat.completions.stream(
                model="sim", messages=MESSAGES, tools=CHAT_TOOLS
            ) as helper:
                streamed = helper.get_final_completion()
            plain = client.chat.completions.create(model="sim", messages=MESSAGES, tools=CHAT_TOOLS)
            return streamed, plain

    streamed, plain = await asyncio.to_thread(calls)
    for completion in (streamed, plain):
        choice = completion.choices[0]
        assert choice.finish_reason == "tool_calls"
        call = choice.message.tool_calls[0]
        assert call.type == "function" and call.function.name == "get_weather"
        assert call.id.startswith("call_")
    arguments = streamed.choices[0].message.tool_calls[0].function.arguments
    assert arguments == plain.choices[0].message.tool_calls[0].function.arguments
    values = json.loads(arguments)
    assert set(values) == {"city", "unit", "days"}
    assert values["unit"] in ("celsius", "fahrenheit") and isinstance(values["days"], int)
    assert not values["city"].isascii()

    _, raw = await post(sim, "/v1/chat/completions", chat_body(stream=True, tools=CHAT_TOOLS))
    chunks = [json.loads(data) for _, data in sse_pairs(raw)[:-1]]
    first = chunks[0]["choices"][0]["delta"]["tool_calls"][0]
    assert first["index"] == 0 and first["type"] == "function" and first["id"].startswith("call_")
    assert first["function"] == {"name": "get_weather", "arguments": ""}
    fragments = [
        c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"] for c in chunks[1:-1]
    ]
    assert len(fragments) >= 1 and "".join(fragments) == arguments


# --- OpenAI Responses ----------------------------------------------------------------------------


async def test_responses_stream_and_non_stream_parse_with_sdk(sim: str) -> None:
    def calls() -> tuple[list[Any], Any, Any, Any]:
        with openai_client(sim) as client:
            events = list(
                client.responses.create(model="sim", input="hi", max_output_tokens=35, stream=True)
            )
            with client.responses.stream(model="sim", input="hi", max_output_tokens=35) as helper:
                final = helper.get_final_response()
            plain = client.responses.create(model="sim", input="hi", max_output_tokens=35)
            with client.responses.stream(model="sim", input="hi", tools=RESPONSES_TOOLS) as helper:
                tool = helper.get_final_response()
            return events, final, plain, tool

    events, final, plain, tool = await asyncio.to_thread(calls)
    types = [e.type for e in events]
    deltas = types.count("response.output_text.delta")
    assert types == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * deltas,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert deltas == 4  # 35 tokens, 10 per event
    assert [e.sequence_number for e in events] == list(range(len(events)))
    completed = events[-1].response
    assert completed.usage is not None and completed.usage.output_tokens == 35
    assert completed.usage.total_tokens == completed.usage.input_tokens + 35
    assert completed.output_text == final.output_text == plain.output_text != ""
    call = tool.output[0]
    assert call.type == "function_call" and call.name == "get_weather"
    assert set(json.loads(call.arguments)) == {"city", "unit", "days"}


async def test_responses_raw_events_name_their_type(sim: str) -> None:
    _, raw = await post(
        sim,
        "/v1/responses",
        {"model": "sim", "input": "hi", "stream": True, "tools": RESPONSES_TOOLS},
    )
    events = sse_pairs(raw)
    payloads = [json.loads(data) for _, data in events]
    assert all(name == p["type"] for (name, _), p in zip(events, payloads, strict=True))
    assert all(list(p)[:2] == ["type", "sequence_number"] for p in payloads)
    deltas = [p["delta"] for p in payloads if p["type"] == "response.function_call_arguments.delta"]
    done = next(p for p in payloads if p["type"] == "response.function_call_arguments.done")
    assert len(deltas) >= 1 and "".join(deltas) == done["arguments"]


# --- Anthropic Messages --------------------------------------------------------------------------


async def test_anthropic_stream_thinking_tools_and_non_stream(sim: str) -> None:
    def calls() -> tuple[Any, Any, Any, Any]:
        with anthropic_client(sim) as client:
            with client.messages.stream(
                model="claude-sim", max_tokens=40, messages=MESSAGES
            ) as helper:
                text = helper.get_final_message()
            with client.messages.stream(
                model="claude-sim",
                max_tokens=40,
                messages=MESSAGES,
                thinking={"type": "enabled", "budget_tokens": 1024},
                tools=ANTHROPIC_TOOLS,
            ) as helper:
                both = helper.get_final_message()
            plain = client.messages.create(model="claude-sim", max_tokens=40, messages=MESSAGES)
            plain_both = client.messages.create(
                model="claude-sim",
                max_tokens=40,
                messages=MESSAGES,
                thinking={"type": "enabled", "budget_tokens": 1024},
                tools=ANTHROPIC_TOOLS,
            )
            return text, both, plain, plain_both

    text, both, plain, plain_both = await asyncio.to_thread(calls)
    assert text.content[0].type == "text" and text.stop_reason == "end_turn"
    assert text.content[0].text == plain.content[0].text != ""
    assert text.usage.output_tokens == 40 and text.model == "claude-sim"
    assert [b.type for b in both.content] == ["thinking", "text", "tool_use"]
    assert both.stop_reason == "tool_use"
    assert both.content[0].thinking and both.content[0].signature
    assert both.content[2].name == "get_weather" and set(both.content[2].input) == {
        "city",
        "unit",
        "days",
    }
    assert both.model_dump(exclude={"id"}) == plain_both.model_dump(exclude={"id"})


async def test_anthropic_raw_events(sim: str) -> None:
    body = {
        "model": "claude-sim",
        "max_tokens": 25,
        "messages": MESSAGES,
        "stream": True,
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "tools": ANTHROPIC_TOOLS,
    }
    _, raw = await post(sim, "/v1/messages", body)
    events = sse_pairs(raw)
    payloads = [json.loads(data) for _, data in events]
    assert all(name == p["type"] for (name, _), p in zip(events, payloads, strict=True))
    names = [name for name, _ in events]
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert names[-2:] == ["message_delta", "message_stop"]
    deltas = [p["delta"]["type"] for p in payloads if p["type"] == "content_block_delta"]
    thinking_end = deltas.index("signature_delta")
    assert set(deltas[:thinking_end]) == {"thinking_delta"}
    assert deltas.count("signature_delta") == 1
    json_pieces = [
        p["delta"]["partial_json"]
        for p in payloads
        if p["type"] == "content_block_delta" and p["delta"]["type"] == "input_json_delta"
    ]
    assert json_pieces[0] == "" and json.loads("".join(json_pieces))["city"]


# --- Errors and small endpoints ------------------------------------------------------------------


async def test_errors_models_and_unknown_paths(sim: str) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(sim + "/v1/nope", json={}) as resp:
            assert resp.status == 404
            assert (await resp.json())["error"]["message"] == "Invalid URL (POST /v1/nope)"
        async with session.post(sim + "/v1/chat/completions", data=b"{nope") as resp:
            error = (await resp.json())["error"]
            assert resp.status == 400 and error["type"] == "invalid_request_error"
        async with session.post(sim + "/v1/messages", data=b"[1,") as resp:
            body = await resp.json()
            assert resp.status == 400 and body["type"] == "error"
            assert body["error"]["type"] == "invalid_request_error"
        async with session.post(sim + "/v1/responses", json=["not", "an", "object"]) as resp:
            assert resp.status == 400
        async with session.post(sim + "/v1/chat/completions", json=chat_body(max_tokens=0)) as resp:
            assert resp.status == 400 and (await resp.json())["error"]["param"] == "max_tokens"
        headers = {"x-sim-events-per-second": "fast"}
        async with session.post(sim + "/v1/chat/completions", json={}, headers=headers) as resp:
            assert (await resp.json())["error"]["param"] == "x-sim-events-per-second"
        headers = {"x-sim-events-per-second": "5000"}
        async with session.post(sim + "/v1/chat/completions", json={}, headers=headers) as resp:
            assert resp.status == 400
            assert (await resp.json())["error"]["param"] == "x-sim-events-per-second"
        async with session.get(sim + "/v1/models") as resp:
            models = await resp.json()
            assert models["object"] == "list" and models["data"][0]["object"] == "model"


# --- Text: determinism and multi-byte content ----------------------------------------------------


async def chat_text(url: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> str:
    _, raw = await post(url, "/v1/chat/completions", body, headers)
    return str(json.loads(raw)["choices"][0]["message"]["content"])


async def streamed_chat_text(url: str, body: dict[str, Any], headers: dict[str, str]) -> str:
    _, raw = await post(url, "/v1/chat/completions", {**body, "stream": True}, headers)
    return chat_content(raw)


def chat_content(raw: bytes) -> str:
    """Return the text a client accumulates from a raw Chat Completions stream."""
    chunks = [json.loads(data) for _, data in sse_pairs(raw)[:-1]]
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


async def test_text_depends_only_on_seed_and_prompt(sim: str) -> None:
    body = chat_body(max_tokens=80)
    other = {"model": "sim", "messages": [{"role": "user", "content": "Something else"}]}
    first = await chat_text(sim, body)
    assert await chat_text(sim, {**other, "max_tokens": 80}) != first
    assert await chat_text(sim, body) == first  # not influenced by the request in between
    # Same text whatever the event size, streamed or not; a shorter answer is a prefix.
    assert await streamed_chat_text(sim, body, {"x-sim-tokens-per-second": "600"}) == first
    assert await streamed_chat_text(sim, body, {"x-sim-events-per-second": "0"}) == first
    assert first.startswith(await chat_text(sim, chat_body(max_tokens=20)))
    async with serving(SimulatorConfig(ttft_ms=5.0, seed=1)) as reseeded:
        assert await chat_text(reseeded, body) != first


async def test_text_has_intact_multibyte_sequences(sim: str) -> None:
    text = await streamed_chat_text(sim, chat_body(), {"x-sim-max-tokens": "1000"})
    assert text == await chat_text(sim, chat_body(), {"x-sim-max-tokens": "1000"})
    assert "\ufffd" not in text
    for needle in ("\u0301", "\u200d", "\ufe0f", "°C"):
        assert needle in text, needle
    assert any("\u4e00" <= ch <= "\u9fff" for ch in text)  # CJK
    assert any(ch in "éüïãñ" for ch in text)  # precomposed accented Latin
    assert "👩\u200d💻" in text or "👨\u200d👩\u200d👧" in text


# --- Split writes --------------------------------------------------------------------------------


def test_split_offsets_cut_inside_utf8_and_between_newlines() -> None:
    event = 'data: {"content":" 東京 café"}\n\n'.encode()
    rng = random.Random(0)
    seen_inside = seen_between = False
    for _ in range(50):
        cuts = split_offsets(event, rng)
        assert 1 <= len(cuts) <= 2 and all(0 < c < len(event) for c in cuts)
        for cut in cuts:
            seen_inside |= (event[cut] & 0xC0) == 0x80  # next byte is a continuation byte
            seen_between |= cut == len(event) - 1
    assert seen_inside and seen_between
    assert split_offsets(b"ab\n", rng) == ()


async def test_split_writes_make_http_chunks_and_reads_that_split_code_points(sim: str) -> None:
    body = chat_body(stream=True, max_tokens=60)
    headers = {"x-sim-events-per-second": "20", "x-sim-tokens-per-second": "200"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(sim + "/v1/chat/completions", json=body, headers=headers) as resp,
    ):
        http_chunks = await read_http_chunks(resp)
    whole = b"".join(http_chunks)
    events = sse_pairs(whole)
    assert len(http_chunks) > len(events)  # events went out in pieces
    assert len(http_chunks) <= 3 * len(events)

    def inside_code_point(piece: bytes) -> bool:
        try:
            piece.decode("utf-8")
        except UnicodeDecodeError:
            return True
        return False

    assert any(inside_code_point(chunk) for chunk in http_chunks)
    assert any(a.endswith(b"\n") and b.startswith(b"\n") for a, b in pairwise(http_chunks))

    # The pieces of a paced event are spread over time, so TCP reads see the cuts too.
    async with (
        aiohttp.ClientSession() as session,
        session.post(sim + "/v1/chat/completions", json=body, headers=headers) as resp,
    ):
        reads = [data async for data in resp.content.iter_any()]
    assert chat_content(b"".join(reads)) == chat_content(whole)
    assert any(inside_code_point(read) for read in reads), [len(r) for r in reads]


async def test_no_split_writes_sends_whole_events() -> None:
    body = chat_body(stream=True, max_tokens=40)
    async with (
        serving(SimulatorConfig(ttft_ms=5.0, split_writes=False)) as url,
        aiohttp.ClientSession() as session,
        session.post(url + "/v1/chat/completions", json=body) as resp,
    ):
        chunks = await read_http_chunks(resp)
    assert len(chunks) == 1 + 4 + 1 + 1
    assert all(chunk.endswith(b"\n\n") and chunk.count(b"\n\n") == 1 for chunk in chunks)


# --- Pacing --------------------------------------------------------------------------------------


async def test_pacing_ttft_and_event_rate_are_never_early(sim: str) -> None:
    """Content event ``k`` is due ``ttft + k / events_per_second`` after the request arrived, and
    is never sent before (the simulator sleeps to deadlines). Only lower bounds here: a slow
    machine makes a stream later, never earlier; how long it is due to take is
    :func:`test_answer_delay_is_the_last_content_events_deadline`."""
    # 6 content events, 1 token each, 20 events/s after a 200 ms TTFT: due at 0.2, 0.25 ... 0.45 s.
    headers = {**SLOW, "x-sim-ttft-ms": "200", "x-sim-max-tokens": "6"}
    content_times: list[float] = []
    async with aiohttp.ClientSession() as session:
        start = time.monotonic()
        async with session.post(
            sim + "/v1/chat/completions", json=chat_body(stream=True), headers=headers
        ) as resp:
            buffer = b""
            async for data in resp.content.iter_any():
                buffer += data
                while b"\n\n" in buffer:
                    event, buffer = buffer.split(b"\n\n", 1)
                    if b'"content":"' in event and b'"content":""' not in event:
                        content_times.append(time.monotonic() - start)
        total = time.monotonic() - start
        assert len(content_times) == 6
        for k, received in enumerate(content_times):
            assert received >= 0.2 + k * 0.05 - 0.005, (k, content_times)
        assert total >= 0.45

        start = time.monotonic()
        async with session.post(
            sim + "/v1/chat/completions", json=chat_body(), headers=headers
        ) as resp:
            await resp.read()
        assert time.monotonic() - start >= 0.45  # non-streaming waits as long

        # Burst: 3,000 one-token events with no pacing at all.
        start = time.monotonic()
        burst = {"x-sim-events-per-second": "0", "x-sim-ttft-ms": "0", "x-sim-max-tokens": "3000"}
        async with session.post(
            sim + "/v1/chat/completions", json=chat_body(stream=True), headers=burst
        ) as resp:
            raw = await resp.read()
        assert raw.count(b"\n\n") == 3000 + 3
        assert time.monotonic() - start < 10.0


def test_answer_delay_is_the_last_content_events_deadline() -> None:
    paced = SimulatorConfig(ttft_ms=200, tokens_per_second=20, events_per_second=20)
    assert answer_delay_s(paced, 6) == pytest.approx(0.2 + 5 * 0.05)
    assert answer_delay_s(paced, 1) == answer_delay_s(paced, 0) == pytest.approx(0.2)
    burst = SimulatorConfig(ttft_ms=0, events_per_second=0)
    assert answer_delay_s(burst, 3000) == 0.0


# --- Replay --------------------------------------------------------------------------------------

FIXTURE_FILES = sorted(FIXTURES.glob("*.sse"))


def test_split_events_keeps_bytes() -> None:
    raw = b"data: a\n\nevent: x\r\ndata: b\r\n\r\n: comment\r\rdata: tail"
    events = split_events(raw)
    assert b"".join(events) == raw
    assert events == (
        b"data: a\n\n",
        b"event: x\r\ndata: b\r\n\r\n",
        b": comment\r\r",
        b"data: tail",
    )


@pytest.mark.skipif(not FIXTURE_FILES, reason=f"no fixtures in {FIXTURES}")
@pytest.mark.parametrize("fixture", FIXTURE_FILES, ids=lambda p: p.name)
async def test_replay_burst_reproduces_fixture_bytes(fixture: Path) -> None:
    config = SimulatorConfig(ttft_ms=0.0, events_per_second=0.0, replay=fixture)
    async with serving(config) as url:
        resp, raw = await post(url, "/v1/chat/completions", {"stream": True})
        assert raw == fixture.read_bytes()
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        _, raw_elsewhere = await post(url, "/any/path", {})
        assert raw_elsewhere == raw


@pytest.mark.skipif(not FIXTURE_FILES, reason=f"no fixtures in {FIXTURES}")
async def test_replay_paced_records_every_event() -> None:
    fixture = FIXTURES / "openai_responses_text.sse"
    config = SimulatorConfig(ttft_ms=0.0, events_per_second=100.0, replay=fixture)
    async with serving(config) as url:
        start = time.monotonic()
        _, raw = await post(url, "/v1/responses", {})
        elapsed = time.monotonic() - start
        assert raw == fixture.read_bytes()
        events = len(split_events(raw))
        assert elapsed >= (events - 1) / 100 * 0.8
        async with (
            aiohttp.ClientSession() as session,
            session.get(url + "/_simulator/streams") as r,
        ):
            (record,) = await r.json()
        assert record["events"] == events and record["outcome"] == "complete"


# --- Stream log ----------------------------------------------------------------------------------


async def test_stream_log_records_complete_streams_and_clears(sim: str) -> None:
    await post(
        sim, "/v1/chat/completions", chat_body(stream=True, max_tokens=20), {"x-request-id": "r1"}
    )
    await post(sim, "/v1/chat/completions", chat_body(max_tokens=20), {"x-request-id": "r2"})
    async with aiohttp.ClientSession() as session:
        async with session.get(sim + "/_simulator/streams") as resp:
            record, plain = await resp.json()
        # Non-streaming answers are logged too (no events, no first content).
        assert plain["id"] == "r2" and plain["outcome"] == "complete" and plain["events"] == 0
        assert record["id"] == "r1" and record["path"] == "/v1/chat/completions"
        assert record["outcome"] == "complete" and record["events"] == 1 + 2 + 1 + 1
        assert record["started"] <= record["first_content"] <= record["ended"] <= time.monotonic()
        async with session.delete(sim + "/_simulator/streams") as resp:
            assert resp.status == 204
        async with session.get(sim + "/_simulator/streams") as resp:
            assert await resp.json() == []


@pytest.mark.parametrize("handler_cancellation", [True, False])
async def test_client_close_mid_stream_is_recorded(handler_cancellation: bool) -> None:
    async with serving(handler_cancellation=handler_cancellation) as url:
        body = chat_body(stream=True, max_tokens=100)  # 100 events at 20/s: 5 s if read to the end
        async with aiohttp.ClientSession() as session:
            async with session.post(url + "/v1/chat/completions", json=body, headers=SLOW) as resp:
                seen = b""
                while seen.count(b"\n\n") < 3:  # role chunk + 2 content chunks
                    seen += await resp.content.readany()
                closing_at = time.monotonic()
                resp.close()

            async def finished() -> list[dict[str, Any]]:
                async with session.get(url + "/_simulator/streams") as log:
                    records: list[dict[str, Any]] = await log.json()
                return records if records and records[0]["outcome"] is not None else []

            records = await wait_for_async(finished, 5.0, "the stream log to record the close")
    (record,) = records
    assert record["outcome"] == "client_closed"
    # Stopped long before its end, and because the client left: it noticed after the close.
    assert record["first_content"] is not None and record["events"] < 100
    assert record["ended"] >= closing_at


# --- Config and CLI ------------------------------------------------------------------------------


def test_config_validation_and_overrides() -> None:
    config = SimulatorConfig()
    assert config.tokens_per_event == 10.0 and config.interval_s == 0.005
    assert SimulatorConfig(events_per_second=0).interval_s == 0.0
    assert config.with_overrides({}) is config
    assert config.with_overrides({"x-sim-ttft-ms": "7"}).ttft_ms == 7.0
    with pytest.raises(SimulatorConfigError) as info:
        SimulatorConfig(events_per_second=-1)
    assert info.value.key == "events_per_second"
    with pytest.raises(SimulatorConfigError) as info:
        SimulatorConfig(tokens_per_second=10, events_per_second=100)
    assert info.value.key == "tokens_per_second"
    with pytest.raises(SimulatorConfigError) as info:
        config.with_overrides({"x-sim-max-tokens": "0"})
    assert info.value.key == "x-sim-max-tokens"


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--events-per-second", "-1"], "--events-per-second"),
        (["--ttft-ms", "soon"], "--ttft-ms"),
        (["--listen", "nohost"], "--listen"),
        (["--max-tokens", "0"], "--max-tokens"),
        (["--replay", "/nonexistent/file.sse"], "--replay"),
        (["--tokens-per-second", "10", "--events-per-second", "100"], "--tokens-per-second"),
    ],
)
def test_cli_rejects_invalid_flags(
    argv: list[str], flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser(prog="streamhop simulate")
    add_arguments(parser)
    with pytest.raises(SystemExit) as info:
        run(parser.parse_args(argv))
    assert info.value.code == 2
    assert f"argument {flag}:" in capsys.readouterr().err


def test_cli_defaults() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args([])
    assert args.listen == ("127.0.0.1", 8788)
    assert (args.tokens_per_second, args.events_per_second, args.ttft_ms) == (2000, 200, 50)
    assert args.split_writes is True and args.replay is None
    assert parser.parse_args(["--no-split-writes"]).split_writes is False
    assert parser.parse_args(["--listen", "[::1]:0"]).listen == ("::1", 0)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_cli_serves_until_signal(signum: int) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamhop.sidecar.simulate", "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        prefix = "streamhop simulate listening on http://127.0.0.1:"
        assert line.startswith(prefix), (line, proc.stderr.read() if proc.stderr else "")
        port = int(line[len(prefix) :])
        assert port > 0
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=10) as resp:
            assert json.loads(resp.read())["object"] == "list"
        proc.send_signal(signum)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
