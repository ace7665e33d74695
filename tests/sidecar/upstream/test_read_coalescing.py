"""Read coalescing (``[rechunk] coalesce_reads``): in the steady flow of an answer the relay
leaves upstream bytes in the kernel until just before the window's write, and reads them in one
go; reasoning and the first answer token are read as they come. A real recording
(tests/fixtures/groq_chat_gpt_oss_reasoning.sse: 34 reasoning deltas, then 19 answer deltas)
paced by a raw loopback server at 10 ms per event, through the real pool, pump and relay.
"""

from __future__ import annotations

import asyncio
import time

from yarl import URL

from streamhop.middleware.pump import PumpOptions, Sink, StreamPump
from streamhop.sidecar.config import config_from_dict
from streamhop.sidecar.upstream.pool import UpstreamPool, UpstreamTiming
from streamhop.sidecar.upstream.relay import relay
from tests.sidecar.upstream.test_connection import RawServer, read_head
from tests.sidecar.upstreams import fixture_events
from tests.support import sse_data

PACE_S = 0.010
WINDOW_S = 0.100
FIRST_ANSWER = 35
"""Index of the recording's first answer delta (0 is the role chunk, 1-34 reasoning)."""


class Reads:
    """A pump observer that notes each upstream read: when, and how many events it completed."""

    def __init__(self) -> None:
        self.reads: list[tuple[float, int]] = []

    def upstream_read(self, events: int, size: int, seconds: float, at: float) -> None:
        self.reads.append((at, events))

    def downstream_write(self, events: int, size: int, start: float, end: float) -> None:
        pass

    def flush_overhead(self, seconds: float) -> None:
        pass

    def read_of(self, index: int) -> tuple[int, float]:
        """``(read number, read time)`` of the read that completed event ``index``."""
        seen = 0
        for number, (at, events) in enumerate(self.reads):
            seen += events
            if seen > index:
                return number, at
        raise AssertionError(f"event {index} was never read")


def texts(datas: list[object]) -> tuple[str, str]:
    reasoning = answer = ""
    for data in datas:
        if not isinstance(data, dict):
            continue
        for choice in data.get("choices") or []:
            delta = choice.get("delta") or {}
            reasoning += delta.get("reasoning") or ""
            answer += delta.get("content") or ""
    return reasoning, answer


async def test_answer_reads_are_coalesced_and_phase_changes_read_at_once() -> None:
    events = fixture_events("groq_chat_gpt_oss_reasoning")
    sent_at: list[float] = []

    async def paced(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n")
        for event in events:
            sent_at.append(time.monotonic())
            writer.write(event)
            await writer.drain()
            await asyncio.sleep(PACE_S)  # the provider's pacing

    written: list[bytes] = []

    async def write(data: bytes) -> None:
        written.append(data)

    async with RawServer(paced) as server:
        route = config_from_dict({"routes": [{"prefix": "/", "upstream": server.url}]}).routes[0]
        pool = UpstreamPool()
        try:
            response = await pool.request(
                route, "POST", URL(server.url + "/v1/chat/completions"), [], b"{}",
                UpstreamTiming(), 10.0,
            )  # fmt: skip
            reads = Reads()
            options = PumpOptions(format="openai-chat", flush_interval_s=WINDOW_S)
            pump = StreamPump(Sink(write), options, observer=reads)
            fault = await asyncio.wait_for(relay(response, pump, 10.0, coalesce_reads=True), 20)
            assert fault is None
            assert pump.feed_eof(expect_terminal=True) is None
            await asyncio.wait_for(pump.finish(), 20)
            response.close()
        finally:
            await pool.close()

    # Nothing lost: the reasoning and the answer are the recording's.
    want = texts(sse_data(b"".join(events)))
    assert texts(sse_data(b"".join(written))) == want
    assert want[0] and want[1]
    # The first answer token was read as it came (reasoning never pauses reading) ...
    number, at = reads.read_of(FIRST_ANSWER)
    assert at - sent_at[FIRST_ANSWER] < WINDOW_S / 2
    # ... and the answer after it took far fewer reads than events.
    last_number, _ = reads.read_of(len(events) - 3)  # the last answer delta
    answer_events = len(events) - 3 - FIRST_ANSWER
    assert last_number - number <= answer_events // 2, reads.reads
