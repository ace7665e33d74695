"""A stream id is a capability (with matching credentials it resumes or stops the stream): no log
line carries one, whatever its level. Each warning the resume store and the replay write is
triggered here and the captured log output searched for the id."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import MutableMapping
from typing import Any

import pytest

from streamhop.middleware.sse.events import SSEEvent
from streamhop.sidecar.resume.memory import MemoryStore
from streamhop.sidecar.resume.replay import Replay, replay

SSE_HEADERS = [(b"content-type", b"text/event-stream")]


def _one(n: int) -> list[SSEEvent]:
    return [SSEEvent(data="x" * n)]


def _warnings(caplog: pytest.LogCaptureFixture, module: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.WARNING and r.name.endswith(module)]


async def test_max_stream_bytes_overflow_warning_names_no_stream_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    stream_id = secrets.token_hex(8)
    store = MemoryStore(window_s=60, max_streams=10, max_stream_bytes=1024)
    writer = store.open_writer(stream_id, SSE_HEADERS, "key")
    writer.stamp(_one(2000))
    assert _warnings(caplog, "resume.memory"), "the overflow warning was not written"
    assert stream_id not in caplog.text
    await store.aclose()


async def test_max_streams_drop_of_a_live_log_names_no_stream_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    stream_id = secrets.token_hex(8)
    store = MemoryStore(window_s=60, max_streams=1, max_stream_bytes=1024)
    store.open_writer(stream_id, SSE_HEADERS, "live").stamp(_one(10))
    store.open_writer(secrets.token_hex(8), SSE_HEADERS, "next")  # drops the live log
    assert _warnings(caplog, "resume.memory"), "the max_streams warning was not written"
    assert stream_id not in caplog.text
    await store.aclose()


async def test_a_replay_ended_by_a_closed_log_logs_no_stream_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    stream_id = secrets.token_hex(8)
    store = MemoryStore(window_s=60, max_streams=10, max_stream_bytes=1024)
    writer = store.open_writer(stream_id, SSE_HEADERS, stream_id)
    writer.stamp(_one(10))
    sent: asyncio.Queue[MutableMapping[str, Any]] = asyncio.Queue()

    async def send(message: MutableMapping[str, Any]) -> None:
        await sent.put(message)

    task = asyncio.ensure_future(
        replay(Replay(), store, send, f"{stream_id}:0", lambda sid: sid, "openai", 30.0, 65536)
    )
    async with asyncio.timeout(5):
        assert (await sent.get())["type"] == "http.response.start"
        assert stream_id.encode() in (await sent.get())["body"]  # the logged event
        writer.stamp(_one(2000))  # past max_stream_bytes mid-replay: the log closes
        await task
    assert _warnings(caplog, "resume.replay"), "the replay's warning was not written"
    assert stream_id not in caplog.text
    await store.aclose()


async def test_a_stalled_replay_logs_no_stream_id(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    stream_id = secrets.token_hex(8)
    store = MemoryStore(window_s=60, max_streams=10, max_stream_bytes=1024)
    store.open_writer(stream_id, SSE_HEADERS, stream_id).stamp(_one(10))

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.body":
            await asyncio.Event().wait()  # a client that reads nothing

    async with asyncio.timeout(5):
        # stall_timeout_s = 0: the first body write times out at the next loop turn
        await replay(Replay(), store, send, f"{stream_id}:0", lambda sid: sid, "openai", 0.0, 65536)
    assert _warnings(caplog, "resume.replay"), "the stall warning was not written"
    assert stream_id not in caplog.text
    await store.aclose()
