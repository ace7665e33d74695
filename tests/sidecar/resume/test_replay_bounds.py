"""A resume replays its log in bounded writes under the stall rule, as a live stream writes.

Found by the round-3 review: 40 idle ``Last-Event-ID`` readers of one 7.5 MB finished stream
held +304 MiB, because each replay handed the transport the whole log at once. Here the store
is a stand-in that yields one large batch (what the memory store yields for a finished log) and
``send`` records what it is handed, so the bound is checked exactly, without sockets.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from streamhop.sidecar.resume.replay import Replay, bounded_bodies, replay
from streamhop.sidecar.resume.store import LogReader

EVENT = b"data: " + b"x" * 10_000 + b"\n\n"
LOG = [b"id: s1:%d\n" % i + EVENT for i in range(1, 101)]  # ~1 MB in one batch
LIMIT = 64 * 1024


class _Reader:
    def __init__(self) -> None:
        self.headers = [(b"content-type", b"text/event-stream")]

    async def events_after(self, seq: int) -> AsyncIterator[Sequence[bytes]]:
        yield LOG[seq:]


class _Store:
    name = "memory"

    async def open_reader(self, key: str, stream_id: str) -> LogReader:
        return _Reader()


def test_bounded_bodies_keep_order_and_the_bound() -> None:
    bodies = list(bounded_bodies(LOG, LIMIT))
    assert b"".join(bodies) == b"".join(LOG)
    assert all(len(b) <= LIMIT for b in bodies)
    assert len(bodies) > 1
    big = b"y" * (2 * LIMIT)
    assert list(bounded_bodies([b"a", big, b"b"], LIMIT)) == [b"a", big, b"b"]


def test_a_replay_hands_the_transport_at_most_max_pending_bytes_at_once() -> None:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def run() -> None:
        await replay(Replay(), _Store(), send, "s1:0", lambda s: s, "openai-chat", 5.0, LIMIT)  # type: ignore[arg-type]

    asyncio.run(run())
    bodies = [m["body"] for m in sent if m["type"] == "http.response.body"]
    assert b"".join(bodies) == b"".join(LOG)
    assert max(len(b) for b in bodies) <= LIMIT
    assert sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}


def test_a_reader_that_never_reads_is_dropped_after_the_stall_timeout() -> None:
    handed: list[int] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            handed.append(len(message["body"]))
            await asyncio.Event().wait()  # the client never reads: the write never completes

    async def run() -> None:
        await asyncio.wait_for(
            replay(Replay(), _Store(), send, "s1:0", lambda s: s, "openai-chat", 0.05, LIMIT),  # type: ignore[arg-type]
            timeout=10,
        )

    asyncio.run(run())
    assert handed and handed[0] <= LIMIT and len(handed) == 1


@pytest.mark.parametrize("limit", [1, 100, 10_000_000])
def test_bounded_bodies_loses_nothing_at_any_limit(limit: int) -> None:
    assert b"".join(bounded_bodies(LOG[:7], limit)) == b"".join(LOG[:7])


def test_a_websocket_resume_sends_bounded_batches_and_stops_on_a_stall() -> None:
    from streamhop.sidecar.websocket.messages import ResumeMessage
    from streamhop.sidecar.websocket.resuming import WsReplay

    batches: list[int] = []

    async def send_frames(frames: Sequence[str]) -> None:
        batches.append(sum(map(len, frames)))

    message = ResumeMessage("s1", 0)
    replayed = WsReplay(_Store(), "k", message, send_frames, LIMIT, 5.0)  # type: ignore[arg-type]
    asyncio.run(replayed.run())
    assert len(batches) > 2 and max(batches[:-1]) <= LIMIT  # the last one is the `done`
    assert not replayed.stalled

    async def never(frames: Sequence[str]) -> None:
        await asyncio.Event().wait()

    stalled = WsReplay(_Store(), "k", message, never, LIMIT, 0.05)  # type: ignore[arg-type]
    asyncio.run(asyncio.wait_for(stalled.run(), 10))
    assert stalled.stalled
