"""Coalescer: flush timing with a fake clock, and lossless re-chunking of real and fast streams.

No test sleeps: ``now`` is passed in. "What a client gets" is always checked on bytes: the
coalesced events are encoded (one body chunk per write), decoded again, then accumulated with
the official SDKs' accumulators (see :mod:`.accumulate`).
"""

from __future__ import annotations

import itertools
import json
import math
import random
from typing import Any

import pytest
from anthropic._streaming import SSEDecoder as AnthropicSSEDecoder
from openai._streaming import SSEDecoder as OpenAISSEDecoder

from streamhop.middleware import Coalescer, SSEDecoder, SSEEvent
from streamhop.middleware.rechunk.coalescer import DEFAULT_MAX_FLUSH_BYTES

from ..accumulate import (
    accumulate,
    anthropic_delta,
    anthropic_event,
    chat_chunk,
    client_events,
    is_continuation,
    rechunk,
    replacement_characters,
    replay,
    responses_event,
    tool_args,
    tool_start,
    wire_bytes,
    wire_event,
)
from ..conftest import (
    FIXTURE_FORMATS,
    FIXTURE_NAMES,
    HELD_DELTA_FIXTURES,
    LONG_TEXT_FIXTURES,
    fixture_events,
)
from .boundary_support import text_delta

WINDOW = 0.020
SPACING = 0.005


def spaced(n: int, start: float = 100.0, step: float = SPACING) -> list[float]:
    return [start + i * step for i in range(n)]


def content_started(coalescer: Coalescer, now: float = 0.0) -> Coalescer:
    """Push and take a first text delta so later pushes are timed by the window."""
    coalescer.push(chat_chunk({"content": "first"}), now)
    assert coalescer.due(now)
    coalescer.take()
    return coalescer


def text(piece: str) -> SSEEvent:
    return chat_chunk({"content": piece})


# ----------------------------------------------------------------------------------------------
# Construction and an empty coalescer


def test_invalid_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="flush_interval"):
        Coalescer(flush_interval=-0.001)
    with pytest.raises(ValueError, match="max_flush_bytes"):
        Coalescer(max_flush_bytes=0)


def test_nothing_held() -> None:
    coalescer = Coalescer(format="openai-chat")
    assert coalescer.deadline is None
    assert not coalescer.due(1e9)
    assert coalescer.take() == []
    assert (coalescer.events_in, coalescer.events_out, coalescer.pending_bytes) == (0, 0, 0)
    assert not coalescer.content_seen and coalescer.first_content_at is None


# ----------------------------------------------------------------------------------------------
# The first content event goes out at once


@pytest.mark.parametrize(
    ("format_name", "before", "first"),
    [
        (
            "openai-chat",
            [chat_chunk({"role": "assistant", "content": ""}), chat_chunk({"content": ""})],
            chat_chunk({"content": "Hi"}),
        ),
        (
            # A tool call's announcement (id, name, arguments "") is not content: the first
            # argument byte is, and it is not held a window behind the announcement.
            "openai-chat",
            [
                chat_chunk({"role": "assistant", "content": None}),
                chat_chunk({"tool_calls": [tool_start(0, "lookup")]}),
                chat_chunk({"tool_calls": [tool_args(0, "")]}),
            ],
            chat_chunk({"tool_calls": [tool_args(0, '{"q')]}),
        ),
        (
            "openai-chat",
            [chat_chunk({"role": "assistant", "content": None})],
            chat_chunk({"tool_calls": [tool_start(0, "lookup", '{"q":')]}),
        ),
        (
            "openai-chat",
            [chat_chunk({"role": "assistant"})],
            chat_chunk({"reasoning_content": "Let me think"}),
        ),
        (
            "anthropic",
            [
                anthropic_event({"type": "message_start", "message": {"id": "m"}}),
                anthropic_event(
                    {
                        "type": "content_block_start",
                        "index": 0,
                        "content_block": {"type": "tool_use", "input": {}},
                    }
                ),
                anthropic_event({"type": "ping"}),
                anthropic_delta(0, "input_json_delta", ""),
            ],
            anthropic_delta(0, "input_json_delta", '{"q'),
        ),
        (
            "openai-responses",
            [
                responses_event({"type": "response.created", "response": {}}),
                responses_event({"type": "response.in_progress", "response": {}}),
                responses_event({"type": "response.output_item.added", "item": {}}),
                responses_event({"type": "response.output_text.delta", "delta": ""}),
            ],
            responses_event({"type": "response.output_text.delta", "delta": "The"}),
        ),
    ],
    ids=[
        "chat-text",
        "chat-tool-args",
        "chat-tool-call-with-args",
        "chat-reasoning",
        "anthropic-json",
        "responses-text",
    ],
)
def test_first_content_event_is_due_at_once(
    format_name: str, before: list[SSEEvent], first: SSEEvent
) -> None:
    """Role chunks, ``response.created``, pings and empty deltas are not content; the first
    event with text, reasoning or tool-call data is due the moment it arrives."""
    for auto in (False, True):
        coalescer = Coalescer(format="auto" if auto else format_name, flush_interval=10.0)
        for i, event in enumerate(before):
            coalescer.push(event, i * 0.001)
            assert not coalescer.content_seen
            assert coalescer.first_content_at is None
        held = coalescer.take() if coalescer.due(0.5) else []
        coalescer.push(first, 1.0)
        assert coalescer.content_seen
        assert coalescer.first_content_at == 1.0
        assert coalescer.due(1.0)
        deadline = coalescer.deadline
        assert deadline is not None and deadline <= 1.0
        assert held + coalescer.take() == [*before, first]
        # After it, deltas wait for the window again.
        if is_continuation(format_name, first):
            coalescer.push(first, 1.001)
            assert not coalescer.due(1.001)
        assert coalescer.first_content_at == 1.0


def test_first_content_flushes_what_was_held_before_it() -> None:
    """An empty delta held before the first text goes out with it, in order."""
    coalescer = Coalescer(format="openai-chat", flush_interval=10.0)
    empty, first = chat_chunk({"content": ""}), text("Hi")
    coalescer.push(empty, 0.0)
    assert not coalescer.due(0.0)
    coalescer.push(first, 0.003)
    assert coalescer.due(0.003)
    assert coalescer.take() == [empty, first]


# ----------------------------------------------------------------------------------------------
# The window


def test_held_deltas_are_due_exactly_one_window_after_the_first() -> None:
    """Later deltas do not move the deadline; it is the first held delta's time + window."""
    coalescer = content_started(Coalescer(format="openai-chat", flush_interval=WINDOW))
    coalescer.push(text("a"), 10.0)
    coalescer.push(text("b"), 10.012)
    coalescer.push(text("c"), 10.019)
    assert coalescer.deadline == 10.0 + WINDOW
    assert not coalescer.due(10.019)
    assert not coalescer.due(math.nextafter(10.0 + WINDOW, 0.0))
    assert coalescer.due(10.0 + WINDOW)
    (merged,) = coalescer.take()
    assert json.loads(merged.data or "")["choices"][0]["delta"]["content"] == "abc"
    assert coalescer.deadline is None
    coalescer.push(text("d"), 10.5)
    assert coalescer.deadline == 10.5 + WINDOW


@pytest.mark.parametrize("window", [0.001, 0.005, 0.02, 0.1, 0.25])
def test_due_at_the_deadline_whatever_the_float_rounding(window: float) -> None:
    """``due(deadline)`` is True and ``due`` just before it False, for 2000 clock readings
    (``now - since`` can round below the window while ``since + window`` does not)."""
    for i in range(2000):
        since = 1000.0 + i * 0.005 if i % 2 else i * 0.0137
        coalescer = content_started(Coalescer(format="openai-chat", flush_interval=window))
        coalescer.push(text("x"), since)
        deadline = coalescer.deadline
        assert deadline == since + window
        assert coalescer.due(deadline), (since, window)
        assert not coalescer.due(math.nextafter(deadline, 0.0)), (since, window)


def test_max_flush_bytes_makes_held_text_due_at_once() -> None:
    pieces = [text("x" * 40) for _ in range(4)]
    size = pieces[0].wire_size
    coalescer = content_started(
        Coalescer(format="openai-chat", flush_interval=10.0, max_flush_bytes=3 * size)
    )
    coalescer.push(pieces[0], 1.0)
    coalescer.push(pieces[1], 1.0)
    assert coalescer.pending_bytes == 2 * size
    assert not coalescer.due(1.0)
    coalescer.push(pieces[2], 1.0)
    assert coalescer.pending_bytes == 3 * size
    assert coalescer.due(1.0)
    deadline = coalescer.deadline
    assert deadline is not None and deadline <= 1.0
    (merged,) = coalescer.take()
    assert merged.wire_size == 3 * size
    assert coalescer.pending_bytes == 0
    coalescer.push(pieces[3], 1.1)
    assert not coalescer.due(1.1)


def test_boundary_makes_everything_held_due_in_order() -> None:
    coalescer = content_started(Coalescer(format="openai-chat", flush_interval=10.0))
    for piece in ["Hello", ", ", "world"]:
        coalescer.push(text(piece), 2.0)
    assert not coalescer.due(2.0)
    finish = chat_chunk({}, "stop")
    coalescer.push(finish, 2.001)
    assert coalescer.due(2.001)
    merged, boundary = coalescer.take()
    assert json.loads(merged.data or "")["choices"][0]["delta"]["content"] == "Hello, world"
    assert boundary is finish
    # A boundary arriving alone is due at once too.
    done = SSEEvent(data="[DONE]")
    coalescer.push(done, 3.0)
    assert coalescer.due(3.0)
    assert coalescer.take() == [done]


def test_passthrough_returns_every_event_unmerged_and_due_at_once() -> None:
    coalescer = Coalescer(format="openai-chat", flush_interval=10.0, passthrough=True)
    events = [text(p) for p in "abcdef"]
    for event in events[:3]:
        coalescer.push(event, 5.0)
        assert coalescer.due(5.0)
    assert coalescer.take() == events[:3]
    for event in events[3:]:  # a slow writer: held, still unmerged
        coalescer.push(event, 6.0)
    assert coalescer.take() == events[3:]
    assert coalescer.events_in == coalescer.events_out == 6


def test_zero_interval_writes_each_event_at_once_but_merges_under_backpressure() -> None:
    coalescer = Coalescer(format="openai-chat", flush_interval=0.0)
    events = [text(p) for p in ["a", "b", "c", "d"]]
    for i, event in enumerate(events[:2]):
        coalescer.push(event, float(i))
        assert coalescer.due(float(i))
        assert coalescer.take() == [event]
    # The writer is busy: nothing is taken between pushes, so the deltas merge.
    coalescer.push(events[2], 2.0)
    assert coalescer.due(2.0)
    coalescer.push(events[3], 2.0)
    (merged,) = coalescer.take()
    assert json.loads(merged.data or "")["choices"][0]["delta"]["content"] == "cd"


def test_counters_and_pending_bytes() -> None:
    events = fixture_events("openai_chat_text_include_usage.sse")
    coalescer = Coalescer(flush_interval=WINDOW)
    batches = replay(coalescer, events, spaced(len(events)))
    assert coalescer.events_in == len(events)
    assert coalescer.events_out == sum(len(b) for _, b in batches)
    assert coalescer.malformed == 0
    assert coalescer.pending_bytes == 0
    # Merged events account for the upstream bytes they stand for.
    assert sum(e.wire_size for _, b in batches for e in b) == sum(e.wire_size for e in events)


# ----------------------------------------------------------------------------------------------
# The recorded streams, re-chunked: same final message for a client


def assert_same_for_client(
    format_name: str, raw: list[SSEEvent], out: list[SSEEvent]
) -> dict[str, Any]:
    assert replacement_characters(out) == []
    expected = accumulate(format_name, raw)
    assert accumulate(format_name, out) == expected
    return expected


def test_fixture_at_provider_pace(fixture_name: str) -> None:
    """5 ms between events, 20 ms window: the bytes a client gets build the same message."""
    fmt = FIXTURE_FORMATS[fixture_name]
    raw = fixture_events(fixture_name)
    times = spaced(len(raw))
    coalescer = Coalescer(flush_interval=WINDOW)
    batches = replay(coalescer, raw, times)
    out = client_events(wire_bytes(batches))
    summary = assert_same_for_client(fmt, raw, out)
    assert coalescer.format_name == fmt
    assert coalescer.events_out == len(out) <= len(raw)
    # The first content event is written the moment it arrives (no added TTFT).
    first = coalescer.first_content_at
    assert first is not None
    written_at, batch = next((at, b) for at, b in batches if at >= first)
    assert written_at == first
    assert batch[-1] == raw[times.index(first)]
    # No event waits longer than one window: map each write back to the upstream events it
    # stands for through the wire sizes (a merged event carries the sum of its parts).
    arrived = iter(zip(times, (e.wire_size for e in raw), strict=True))
    for at, batch in batches:
        size = sum(e.wire_size for e in batch)
        while size > 0:
            arrival, wire_size = next(arrived)
            assert arrival <= at <= arrival + WINDOW
            size -= wire_size
        assert size == 0
    if fixture_name in LONG_TEXT_FIXTURES:
        assert len(out) <= len(raw) / 3
    assert summary["timeline"], "the check compares boundaries too"


@pytest.mark.parametrize("fixture_name", LONG_TEXT_FIXTURES)
def test_long_fixtures_merge_several_tokens_per_event(fixture_name: str) -> None:
    raw = fixture_events(fixture_name)
    out = rechunk(Coalescer(flush_interval=WINDOW), raw, spaced(len(raw)))
    merged_deltas = [e for e in out if is_continuation(FIXTURE_FORMATS[fixture_name], e)]
    raw_deltas = [e for e in raw if is_continuation(FIXTURE_FORMATS[fixture_name], e)]
    assert len(merged_deltas) <= len(raw_deltas) / 3


def test_fixture_in_one_burst(fixture_name: str) -> None:
    """A fast provider: every event at the same instant. Everything between two boundaries
    becomes one event; the first content event still goes out on its own."""
    fmt = FIXTURE_FORMATS[fixture_name]
    raw = fixture_events(fixture_name)
    coalescer = Coalescer(flush_interval=WINDOW)
    out = rechunk(coalescer, raw, [7.0] * len(raw))
    assert_same_for_client(fmt, raw, out)
    boundaries = sum(not is_continuation(fmt, e) for e in raw)
    lanes = [lane for e in raw if (found := text_delta(fmt, e)) is not None for lane in found[:1]]
    phases = sum(a != b for a, b in itertools.pairwise(lanes))
    size_cuts = sum(e.wire_size for e in raw) // DEFAULT_MAX_FLUSH_BYTES
    if fixture_name not in HELD_DELTA_FIXTURES:
        # per gap between boundaries or phases: at most the first content event of the phase
        # and one merged event, plus a write each time the held bytes reach max_flush_bytes
        assert len(out) <= 2 * (boundaries + phases) + 2 + size_cuts


@pytest.mark.parametrize("write_cost", [0.0, 0.003, 0.05, 1.0])
@pytest.mark.parametrize("window", [0.0, 0.005, 0.02, 0.5])
def test_fixture_with_a_slow_writer(fixture_name: str, window: float, write_cost: float) -> None:
    """A client that takes ``write_cost`` seconds per write: fewer, larger writes, same message."""
    fmt = FIXTURE_FORMATS[fixture_name]
    raw = fixture_events(fixture_name)
    out = rechunk(Coalescer(flush_interval=window), raw, spaced(len(raw)), [write_cost] * len(raw))
    assert_same_for_client(fmt, raw, out)


def test_fixture_with_small_max_flush_bytes(fixture_name: str) -> None:
    fmt = FIXTURE_FORMATS[fixture_name]
    raw = fixture_events(fixture_name)
    out = rechunk(Coalescer(flush_interval=1.0, max_flush_bytes=700), raw, spaced(len(raw)))
    assert_same_for_client(fmt, raw, out)


def test_fixture_in_passthrough_mode_is_unchanged(fixture_name: str) -> None:
    raw = fixture_events(fixture_name)
    coalescer = Coalescer(flush_interval=WINDOW, passthrough=True)
    out = rechunk(coalescer, raw, [0.0] * len(raw), [0.01] * len(raw))
    assert [(e.event, e.data, e.id) for e in out] == [(e.event, e.data, e.id) for e in raw]


@pytest.mark.parametrize("fixture_name", FIXTURE_NAMES)
def test_sdk_sse_parsers_read_the_rechunked_bytes_alike(fixture_name: str) -> None:
    """The openai and anthropic SDKs' own SSE parsers read the written bytes as we do."""
    raw = fixture_events(fixture_name)
    chunks = wire_bytes(replay(Coalescer(flush_interval=WINDOW), raw, [0.0] * len(raw)))
    ours = [(e.event, e.data) for e in client_events(chunks)]
    for parser in (OpenAISSEDecoder(), AnthropicSSEDecoder()):
        theirs = [(s.event, s.data) for s in parser.iter_bytes(iter(chunks))]
        assert theirs == ours


def test_the_client_check_notices_a_lost_or_moved_piece() -> None:
    """The accumulation comparison is not vacuous: it catches a dropped delta, a reordered
    boundary and a merged boundary."""
    raw = fixture_events("openai_chat_tool_call.sse")
    fmt = "openai-chat"
    expected = accumulate(fmt, raw)
    dropped = [*raw[:3], *raw[4:]]
    assert accumulate(fmt, dropped) != expected
    finish = len(raw) - 3
    moved = [*raw[: finish - 2], raw[finish], *raw[finish - 2 : finish], *raw[finish + 1 :]]
    assert accumulate(fmt, moved) != expected
    anthropic = fixture_events("anthropic_thinking_text.sse")
    a_expected = accumulate("anthropic", anthropic)
    pings = [i for i, e in enumerate(anthropic) if e.event == "ping"]
    assert accumulate("anthropic", anthropic[: pings[-1]] + anthropic[pings[-1] + 1 :]) != (
        a_expected
    )


# ----------------------------------------------------------------------------------------------
# A synthetic fast provider (Cerebras-like): many tokens per event, all kinds of Unicode


CJK = "速度は力なり。我们测试多字节文本，한국어도 포함합니다。"  # noqa: RUF001
EMOJI = [
    "\U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466",  # family (ZWJ sequence)
    "\U0001f3f3\ufe0f\u200d\U0001f308",  # rainbow flag
    "\U0001f44d\U0001f3fd",  # thumbs up, skin tone
    "\U0001f1eb\U0001f1f7",  # flag FR (regional indicators)
    "\u2764\ufe0f",
]
COMBINING = ["e\u0301", "a\u0308", "n\u0303", "\u0915\u094d\u0937", "\u0e01\u0e34"]


def fast_stream(rng: random.Random, n: int) -> list[SSEEvent]:
    """Chat chunks of 1-6 code points each (grapheme clusters cut anywhere), reasoning,
    then text, then a tool call; raw UTF-8 or ``\\u`` escapes per chunk."""
    alphabet = [*CJK, *(c for e in EMOJI for c in e), *(c for s in COMBINING for c in s)]
    alphabet += [*'abc xyz\n"\\/°', "\u2028", "\x00", "\U0010ffff"]
    source = "".join(rng.choice(alphabet) for _ in range(n * 4))
    events = [chat_chunk({"role": "assistant", "content": ""})]
    pos = 0
    for i in range(n):
        size = rng.randint(1, 6)
        piece, pos = source[pos : pos + size], pos + size
        field = "reasoning_content" if i < n // 3 else "content"
        obj = json.loads(chat_chunk({field: piece}).data or "")
        events.append(wire_event(obj, ascii_only=rng.random() < 0.3))
    events.append(chat_chunk({"tool_calls": [tool_start(0, "search")]}))
    arguments = json.dumps({"q": source[:40], "emoji": EMOJI}, ensure_ascii=False)
    for k in range(0, len(arguments), 3):
        events.append(chat_chunk({"tool_calls": [tool_args(0, arguments[k : k + 3])]}))
    events.append(chat_chunk({}, "tool_calls"))
    events.append(
        chat_chunk(
            choices=[], usage={"prompt_tokens": 9, "completion_tokens": n, "total_tokens": 9 + n}
        )
    )
    events.append(SSEEvent(data="[DONE]"))
    return events


@pytest.mark.parametrize("seed", range(4))
def test_fast_provider_stream(seed: int) -> None:
    """~200 events/s of multi-byte text cut mid-grapheme, upstream bytes split anywhere
    (mid code point too): fewer events out, the same message, never U+FFFD."""
    rng = random.Random(seed)
    events = fast_stream(rng, 600)
    body = b"".join(wire_bytes([(0.0, events)]))
    cuts = sorted(rng.sample(range(1, len(body)), 400))
    decoder = SSEDecoder()
    upstream: list[SSEEvent] = []
    for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True):
        upstream += decoder.feed(body[a:b])
    upstream += decoder.feed(b"")
    assert [(e.data, e.event) for e in upstream] == [(e.data, e.event) for e in events]

    coalescer = Coalescer(flush_interval=WINDOW)
    out = rechunk(coalescer, upstream, spaced(len(upstream)))
    summary = assert_same_for_client("openai-chat", upstream, out)
    assert len(out) <= len(upstream) / 3
    message = summary["sdk"]["choices"][0]
    assert message["reasoning_content"] and message["content"]
    assert json.loads(message["tool_calls"][0]["arguments"])["emoji"] == EMOJI
    # All at once: one event per run between boundaries (no size bound) ...
    burst = rechunk(
        Coalescer(flush_interval=WINDOW, max_flush_bytes=1 << 30), upstream, [0.0] * len(upstream)
    )
    assert_same_for_client("openai-chat", upstream, burst)
    assert len(burst) <= 12
    # ... and with the default bound, writes of about max_flush_bytes each.
    limit = 16 * 1024
    batches = replay(Coalescer(flush_interval=WINDOW), upstream, [0.0] * len(upstream))
    largest = max(e.wire_size for e in upstream)
    assert all(sum(e.wire_size for e in batch) < limit + largest for _, batch in batches)
    assert len(batches) <= sum(e.wire_size for e in upstream) // limit + 12
    assert_same_for_client("openai-chat", upstream, client_events(wire_bytes(batches)))


def test_first_tool_argument_fragment_is_due_at_once_and_timed() -> None:
    """Text first, then a tool call: the first argument byte is not held a window either."""
    coalescer = Coalescer(format="openai-chat", flush_interval=10.0)
    coalescer.push(chat_chunk({"role": "assistant", "content": "Let me look"}), 0.0)
    coalescer.take()
    coalescer.push(chat_chunk({"tool_calls": [tool_start(0, "lookup")]}), 0.1)
    coalescer.take()
    coalescer.push(chat_chunk({"tool_calls": [tool_args(0, "")]}), 0.2)
    assert coalescer.first_tool_args_at is None
    assert not coalescer.due(0.2)
    coalescer.push(chat_chunk({"tool_calls": [tool_args(0, '{"q')]}), 0.3)
    assert coalescer.first_tool_args_at == 0.3
    assert coalescer.due(0.3)
    coalescer.take()
    coalescer.push(chat_chunk({"tool_calls": [tool_args(0, '": 1}')]}), 0.4)
    assert not coalescer.due(0.4)  # later fragments wait for the window as usual
