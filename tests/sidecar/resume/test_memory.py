"""The in-memory resume store (``sidecar/resume/memory.py``) on its own, without sockets."""

from __future__ import annotations

import pytest

from streamhop.middleware.sse.events import SSEEvent
from streamhop.sidecar.resume import ResumeLogFullError, StreamNotFoundError
from streamhop.sidecar.resume.memory import MemoryStore


async def test_memory_store_bounds() -> None:
    """Past max_stream_bytes a log closes (readers fail, counted); past max_streams the oldest
    finished log goes first; the ids keep counting whatever the log does."""
    errors: list[str] = []
    store = MemoryStore(window_s=60, max_streams=2, max_stream_bytes=1024, on_error=errors.append)
    big = store.open_writer("big", [], "big")
    reader = await store.open_reader("big", "big")
    stamped = big.stamp([SSEEvent(data="x" * 600), SSEEvent(data="y" * 600)])
    assert [e.id for e in stamped] == ["big:1", "big:2"]
    with pytest.raises(ResumeLogFullError):
        async for _ in reader.events_after(0):
            pass
    assert errors == ["log_full"]
    with pytest.raises(ResumeLogFullError):
        await store.open_reader("big", "big")
    big.close()
    live = store.open_writer("live", [], "live")
    live.stamp([SSEEvent(data="a")])
    store.open_writer("third", [], "third")  # evicts the finished "big", not the live one
    with pytest.raises(StreamNotFoundError):
        await store.open_reader("big", "big")
    live.close()
    batches = [list(b) async for b in (await store.open_reader("live", "live")).events_after(0)]
    assert batches == [[b"id: live:1\ndata: a\n\n"]]
    await store.aclose()
