"""``flush_boundary`` from the outside: the ``X-Streamhop-Flush-Boundary`` header and the pump.

Real asyncio, in-memory writers; waits are on the writer's observable state, bounded.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from streamhop.middleware.controls import ControlHeaderError, Controls, parse_controls
from streamhop.middleware.pump import PumpOptions, Sink, StreamPump
from streamhop.middleware.sse.decoder import SSEDecoder

from ..accumulate import chat_chunk


def test_the_header_is_parsed() -> None:
    controls = parse_controls([(b"X-Streamhop-Flush-Boundary", b" sentence ")])
    assert controls == Controls(flush_boundary="sentence")
    for value in ("none", "word", "sentence", "line"):
        parsed = parse_controls([(b"x-streamhop-flush-boundary", value.encode())])
        assert parsed.flush_boundary == value
    assert parse_controls([]).flush_boundary is None


@pytest.mark.parametrize("value", [b"Sentence", b"paragraph", b"", b"word,line"])
def test_a_bad_header_value_is_refused(value: bytes) -> None:
    with pytest.raises(ControlHeaderError, match="X-Streamhop-Flush-Boundary"):
        parse_controls([(b"X-Streamhop-Flush-Boundary", value)])


def test_a_message_overrides_its_handshake() -> None:
    handshake = Controls(flush_boundary="word", mode="coalesce")
    assert Controls(flush_boundary="line").over(handshake).flush_boundary == "line"
    assert Controls(mode="passthrough").over(handshake) == Controls(
        mode="passthrough", flush_boundary="word"
    )


class Writer:
    """Collects the text of ``delta.content`` per write."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.changed = asyncio.Event()
        self._decoder = SSEDecoder()

    async def __call__(self, data: bytes) -> None:
        text = ""
        for event in self._decoder.feed(data):
            if event.data and event.data != "[DONE]":
                for choice in json.loads(event.data)["choices"]:
                    text += choice["delta"].get("content") or ""
        self.texts.append(text)
        self.changed.set()

    async def until(self, count: int, bound_s: float = 10.0) -> None:
        async with asyncio.timeout(bound_s):
            while len(self.texts) < count:
                self.changed.clear()
                await self.changed.wait()


def chat(text: str) -> bytes:
    return f"data: {chat_chunk({'content': text}).data}\n\n".encode()


async def test_the_pump_cuts_at_a_sentence_and_writes_an_idle_tail_after_the_wait() -> None:
    writer = Writer()
    options = PumpOptions(
        format="openai-chat",
        flush_interval_s=0.010,
        flush_boundary="sentence",
        max_boundary_wait_s=0.100,
    )
    pump = StreamPump(Sink(writer), options)
    await pump.feed(chat("Hi"))
    await writer.until(1)
    assert writer.texts == ["Hi"]  # the first content at once
    start = time.monotonic()
    await pump.feed(chat(" there. How are"))
    await writer.until(2)
    assert writer.texts[1] == " there. "  # at the window end, up to the sentence boundary
    await writer.until(3)  # nothing more comes: the held text goes out after the wait
    assert writer.texts[2] == "How are"
    assert time.monotonic() - start >= 0.100
    await pump.feed(chat(" you?"))
    await pump.finish()
    assert "".join(writer.texts) == "Hi there. How are you?"


async def test_the_pump_writes_everything_at_the_end() -> None:
    writer = Writer()
    pump = StreamPump(
        Sink(writer),
        PumpOptions(format="openai-chat", flush_boundary="word", max_boundary_wait_s=60),
    )
    await pump.feed(chat("One"))
    await pump.feed(chat(" two thr"))
    await pump.finish()
    assert "".join(writer.texts) == "One two thr"
