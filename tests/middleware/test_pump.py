"""The pump's API: options in, ``feed``/``feed_eof``/``finish`` out, no internals touched.

Real asyncio, in-memory writers; waits are on the writers' observable state, bounded.
"""

from __future__ import annotations

import asyncio

import pytest

from streamhop.middleware.pump import (
    ClientStallError,
    Fault,
    PumpOptions,
    Sink,
    StreamFault,
    StreamPump,
)
from streamhop.middleware.sse.events import SSEEvent

from .accumulate import chat_chunk


class Writer:
    """Collects writes; ``gate`` (when set) makes each write wait until opened."""

    def __init__(self, gated: bool = False) -> None:
        self.chunks: list[bytes] = []
        self.gate: asyncio.Event | None = asyncio.Event() if gated else None
        self.changed = asyncio.Event()

    async def __call__(self, data: bytes) -> None:
        if self.gate is not None:
            await self.gate.wait()
        self.chunks.append(data)
        self.changed.set()

    @property
    def raw(self) -> bytes:
        return b"".join(self.chunks)

    async def until(self, predicate: object, bound_s: float = 10.0) -> None:
        async with asyncio.timeout(bound_s):
            while not predicate():  # type: ignore[operator]
                self.changed.clear()
                await self.changed.wait()


def chat(text: str) -> bytes:
    event = chat_chunk({"content": text})
    return f"data: {event.data}\n\n".encode()


async def test_events_before_an_oversized_one_are_still_written() -> None:
    writer = Writer()
    pump = StreamPump(Sink(writer), PumpOptions(format="sse", max_event_bytes=64))
    with pytest.raises(StreamFault) as info:
        await pump.feed(b"data: first\n\ndata: second\n\ndata: " + b"x" * 100 + b"\n\n")
    assert info.value.fault.code == "event_too_large"
    await pump.finish()
    assert writer.raw == b"data: first\n\ndata: second\n\n"


async def test_a_write_that_never_completes_is_a_stall() -> None:
    async def never(data: bytes) -> None:
        await asyncio.Event().wait()

    pump = StreamPump(Sink(never), PumpOptions(format="sse", stall_timeout_s=0.05))
    await pump.feed(b"data: x\n\n")
    with pytest.raises(ClientStallError, match=r"no bytes for 0\.05 s"):
        await asyncio.wait_for(pump.finish(), timeout=10)


async def test_slow_but_progressing_writes_are_not_a_stall() -> None:
    written: list[bytes] = []

    async def slow(data: bytes) -> None:
        await asyncio.sleep(0.03)  # the client's pace (not synchronisation): under the bound
        written.append(data)

    pump = StreamPump(
        Sink(slow), PumpOptions(format="sse", flush_interval_s=0, stall_timeout_s=0.1)
    )
    for i in range(8):
        await pump.feed(b"data: %d\n\n" % i)
        await asyncio.sleep(0.03)  # the provider's pace
    await asyncio.wait_for(pump.finish(), timeout=10)
    assert b"".join(written) == b"".join(b"data: %d\n\n" % i for i in range(8))


async def test_feed_waits_for_room_while_the_client_is_slow() -> None:
    """Past max_pending_bytes, feed() does not return until the writer drains: the reader
    stops reading and TCP pushes back on the provider."""
    writer = Writer(gated=True)
    options = PumpOptions(format="openai-chat", flush_interval_s=0, max_pending_bytes=1024)
    pump = StreamPump(Sink(writer), options)
    await pump.feed(chat("first"))  # the first content goes out at once: the write blocks
    feeding = asyncio.ensure_future(pump.feed(chat("x" * 2000)))
    await asyncio.sleep(0)  # let feed() run until it has to wait
    for _ in range(10):
        await asyncio.sleep(0)
    assert not feeding.done()  # held bytes over the bound: the reader waits
    assert writer.gate is not None
    writer.gate.set()
    await asyncio.wait_for(feeding, timeout=10)
    await pump.finish()
    assert b"x" * 2000 in writer.raw


async def test_feed_eof_reports_truncation_and_missing_terminal_events() -> None:
    truncated = StreamPump(Sink(Writer()), PumpOptions(format="openai-chat"))
    await truncated.feed(chat("a") + b'data: {"choices": [{"delta": {"content": "b')
    assert truncated.feed_eof() == Fault(
        "upstream_truncated", "the upstream stream ended in the middle of an event"
    )
    await truncated.finish()

    incomplete = StreamPump(Sink(Writer()), PumpOptions(format="openai-chat"))
    await incomplete.feed(chat("a"))
    assert incomplete.feed_eof() is None  # the middleware does not expect a terminal event
    await incomplete.finish()
    incomplete = StreamPump(Sink(Writer()), PumpOptions(format="openai-chat"))
    await incomplete.feed(chat("a"))
    fault = incomplete.feed_eof(expect_terminal=True)
    assert fault is not None and fault.code == "upstream_incomplete"
    await incomplete.finish()

    complete = StreamPump(Sink(Writer()), PumpOptions())
    await complete.feed(chat("a") + b"data: [DONE]\n\n")
    assert complete.feed_eof(expect_terminal=True) is None
    await complete.finish()

    silent = StreamPump(Sink(Writer()), PumpOptions())  # nothing came at all
    fault = silent.feed_eof(expect_terminal=True, format_hint="anthropic")
    assert fault is not None and "message_stop" in fault.message
    await silent.finish()

    plain = StreamPump(Sink(Writer()), PumpOptions(format="sse"))
    await plain.feed(b"data: x\n\n")
    assert plain.feed_eof(expect_terminal=True) is None
    await plain.finish()


async def test_error_events_follow_the_stream_format_and_never_touch_plain_sse() -> None:
    fault = Fault("upstream_timeout", "nothing for 60 s")
    chat_pump = StreamPump(Sink(Writer()), PumpOptions())
    await chat_pump.feed(chat("a"))
    (event,) = chat_pump.error_events(fault)
    assert event.event is None and '"upstream_timeout"' in (event.data or "")
    await chat_pump.finish()
    unknown = StreamPump(Sink(Writer()), PumpOptions())
    (event,) = unknown.error_events(fault, "anthropic")
    assert event.event == "error"
    await unknown.finish()
    plain = StreamPump(Sink(Writer()), PumpOptions(format="sse"))
    assert plain.error_events(fault) == []
    await plain.finish()


async def test_keepalive_comment_after_silence_and_comments_forwarded_when_idle() -> None:
    writer = Writer()
    options = PumpOptions(keepalive_interval_s=0.02, forward_comments=True)
    pump = StreamPump(Sink(writer), options)
    await pump.feed(b": provider ping\n\n")
    await writer.until(lambda: b": provider ping\n\n" in writer.raw)
    await writer.until(lambda: b": keep-alive\n\n" in writer.raw)
    await pump.feed(chat("a") + b"data: [DONE]\n\n")
    await pump.finish()
    assert writer.raw.endswith(b"data: [DONE]\n\n")
    assert pump.stats.events_in == 2  # comments are not events


async def test_write_events_transport_gets_events_not_bytes() -> None:
    batches: list[list[SSEEvent]] = []

    async def write_events(events: list[SSEEvent]) -> int:
        batches.append(events)
        return sum(len(e.data or "") for e in events)

    pump = StreamPump(
        Sink(write_events=write_events),
        PumpOptions(keepalive_interval_s=0.01, forward_comments=True),
    )
    await pump.feed(b": ping\n\n" + chat("a") + chat("b") + b"data: [DONE]\n\n")
    assert pump.feed_eof(expect_terminal=True) is None
    await pump.finish()
    data = [e.data for batch in batches for e in batch]
    assert data[-1] == "[DONE]"
    assert pump.stats.writes == len(batches)
    assert pump.stats.bytes_out == sum(len(d or "") for d in data)


async def test_repr_shows_state_and_counters() -> None:
    pump = StreamPump(Sink(Writer()), PumpOptions())
    await pump.feed(chat("a"))
    await pump.finish()
    text = repr(pump)
    assert text.startswith("<StreamPump ") and "format=openai-chat" in text
    assert "in=1ev" in text


def test_a_sink_takes_bytes_or_events_never_both_nor_neither() -> None:
    async def write(data: bytes) -> None: ...

    async def write_events(events: list[SSEEvent]) -> int:
        return 0

    with pytest.raises(TypeError, match="exactly one"):
        Sink()
    with pytest.raises(TypeError, match="exactly one"):
        Sink(write, write_events=write_events)


async def test_is_done_and_on_failure_tell_how_the_writes_went() -> None:
    failures: list[BaseException] = []

    async def broken(data: bytes) -> None:
        raise ConnectionResetError("client gone")

    clean = StreamPump(Sink(Writer()), PumpOptions(format="sse"))
    clean.on_failure(failures.append)
    await clean.feed(b"data: x\n\n")
    assert not clean.is_done()
    await clean.finish()
    closed = StreamPump(Sink(Writer()), PumpOptions(format="sse"))
    closed.on_failure(failures.append)
    closed.close()
    failed = StreamPump(Sink(broken), PumpOptions(format="sse"))
    failed.on_failure(failures.append)
    await failed.feed(b"data: x\n\n")
    with pytest.raises(ConnectionResetError):
        await failed.finish()
    await asyncio.sleep(0)  # done callbacks run on the next loop turn
    assert clean.is_done() and closed.is_done() and failed.is_done()
    assert [type(e) for e in failures] == [ConnectionResetError]  # not the clean end or close
