"""Boundary-aware flushing (``flush_boundary``) in the coalescer, with an injected clock.

What a client receives is checked: writes are encoded and decoded again, cuts are checked
against the segmentation of each field's whole text (:mod:`.boundary_support`), and the final
message is the one the official SDKs' accumulators build from the raw stream.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import pytest

from streamhop.middleware import Coalescer, SSEEvent

from ..accumulate import (
    accumulate,
    anthropic_delta,
    anthropic_event,
    chat_chunk,
    client_events,
    responses_event,
    tool_args,
    tool_start,
    wire_bytes,
)
from ..conftest import FIXTURE_FORMATS, FIXTURE_NAMES, LONG_TEXT_FIXTURES, fixture_events
from .boundary_support import (
    CJK_TOKENS,
    EMOJI_TOKENS,
    Batch,
    aligned_cuts,
    flat,
    lane_deltas,
    misaligned,
    paced,
    replay_timed,
    retext,
    simulator_bodies,
    simulator_events,
    text_delta,
)

WINDOW = 0.020
SPACING = 0.005
NO_WAIT_BOUND = 60.0  # long enough that only boundaries cut text
BOUNDARIES = ("word", "sentence", "line")
TEXTS = {"english": None, "cjk": CJK_TOKENS, "emoji": EMOJI_TOKENS}


def coalescer(
    format_name: str,
    boundary: str,
    *,
    window: float = WINDOW,
    wait: float = NO_WAIT_BOUND,
    max_bytes: int = 1 << 20,
) -> Coalescer:
    return Coalescer(
        format=format_name,
        flush_interval=window,
        max_flush_bytes=max_bytes,
        flush_boundary=boundary,  # type: ignore[arg-type]
        max_boundary_wait=wait,
    )


def received(batches: Sequence[tuple[float, Batch]]) -> list[SSEEvent]:
    """The events a client decodes from the writes."""
    return client_events(wire_bytes(batches))


def texts_of(format_name: str, batch: Batch) -> str:
    return "".join(found[1] for e in batch if (found := text_delta(format_name, e)) is not None)


def content(text: str) -> SSEEvent:
    return chat_chunk({"content": text})


# ---- cuts at boundaries, final message unchanged ---------------------------------------------


@pytest.mark.parametrize("boundary", BOUNDARIES)
@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_fixture_text_is_cut_at_boundaries(name: str, text: str, boundary: str) -> None:
    fmt = FIXTURE_FORMATS[name]
    tokens = TEXTS[text]
    raw = fixture_events(name) if tokens is None else retext(fmt, fixture_events(name), tokens)
    out = received(replay_timed(coalescer(fmt, boundary), raw, paced(len(raw), SPACING)))
    assert misaligned(fmt, out, boundary) == []
    assert accumulate(fmt, out) == accumulate(fmt, raw)
    # The cuts really were cut (sentence and line may hold a short text to its end).
    if boundary == "word" and name in LONG_TEXT_FIXTURES:
        assert aligned_cuts(fmt, out) > 3
    if boundary == "sentence" and name in LONG_TEXT_FIXTURES and tokens is not None:
        assert aligned_cuts(fmt, out) > 3


@pytest.mark.parametrize("boundary", BOUNDARIES)
@pytest.mark.parametrize(
    ("fmt", "body"), list(simulator_bodies()), ids=[fmt for fmt, _ in simulator_bodies()]
)
@pytest.mark.parametrize("spacing", [0.001, SPACING])
def test_simulator_text_is_cut_at_boundaries(
    fmt: str, body: dict[str, object], boundary: str, spacing: float
) -> None:
    raw = simulator_events(fmt, dict(body))
    out = received(replay_timed(coalescer(fmt, boundary), raw, paced(len(raw), spacing)))
    assert misaligned(fmt, out, boundary) == []
    assert accumulate(fmt, out) == accumulate(fmt, raw)
    assert aligned_cuts(fmt, out) > 3


def test_simulator_text_has_what_the_checks_need() -> None:
    """The simulated text holds CJK, ZWJ emoji, flags, sentence ends and line breaks."""
    raw = simulator_events("openai-chat", dict(next(iter(simulator_bodies()))[1]))
    (text,) = ("".join(parts) for parts in lane_deltas("openai-chat", raw).values())
    for needle in ("\u200d", "\U0001f1eb", "\n", "."):
        assert needle in text
    assert any("\u4e00" <= c <= "\u9fff" for c in text)


# ---- when text is written ---------------------------------------------------------------------


def test_a_sentence_is_written_at_the_window_after_it_is_confirmed() -> None:
    c = coalescer("openai-chat", "sentence")
    events = [content("Hi"), content(" there. How"), content(" are"), content(" you? I")]
    times = [0.0, 0.005, 0.030, 0.032]
    batches = replay_timed(c, events, times, idle_after=0.1)
    assert [(round(at, 6), texts_of("openai-chat", b)) for at, b in batches] == [
        (0.0, "Hi"),  # the first content at once, even mid-sentence
        (0.025, " there. "),  # "How" confirmed the boundary; "How" waits for the next one
        (0.045, "How are you? "),  # the next window end after the text grew
        (0.132, "I"),  # the end of the stream
    ]


@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_the_first_content_is_not_delayed(boundary: str) -> None:
    c = coalescer("anthropic", boundary)
    first = anthropic_delta(0, "text_delta", "Hel")
    c.push(first, 0.0)
    assert c.due(0.0)
    assert c.take(0.0) == [first]  # whole and unchanged: mid-word, yet at once


def test_an_idle_tail_is_written_when_the_wait_is_over() -> None:
    c = coalescer("openai-chat", "sentence", wait=0.250)
    events = [content("Hello"), content(" world, and")]
    batches = replay_timed(c, events, [0.0, 0.005], idle_after=1.0)
    assert [(round(at, 6), texts_of("openai-chat", b)) for at, b in batches] == [
        (0.0, "Hello"),
        # held at the window end (0.025), written 250 ms later with no boundary come
        (0.275, " world, and"),
    ]


def test_text_flowing_without_boundary_waits_no_longer_than_the_bound() -> None:
    wait = 0.100
    c = coalescer("openai-chat", "sentence", wait=wait)
    tokens = [" word"] * 200  # one second of text, not one sentence end
    events = [content("Start"), *(content(t) for t in tokens)]
    times = paced(len(events), SPACING)
    batches = replay_timed(c, events, times)
    arrival: list[float] = []
    for event, at in zip(events, times, strict=True):
        found = text_delta("openai-chat", event)
        assert found is not None
        arrival += [at] * len(found[1])
    written: list[float] = []
    for at, batch in batches:
        written += [at] * len(texts_of("openai-chat", batch))
    assert len(written) == len(arrival)
    late = max(w - a for w, a in zip(written, arrival, strict=True))
    assert late <= wait + 2 * WINDOW + 1e-9
    assert len(batches) >= 8  # and the held text did go out, bound after bound


def test_without_a_window_each_boundary_goes_out_at_once() -> None:
    c = coalescer("openai-chat", "word", window=0.0, wait=0.050)
    events = [content("One"), content(" two thr"), content("ee fo")]
    batches = replay_timed(c, events, [0.0, 0.010, 0.020], idle_after=1.0)
    assert [(round(at, 6), texts_of("openai-chat", b)) for at, b in batches] == [
        (0.0, "One"),
        (0.010, " two "),
        (0.020, "three "),
        (0.070, "fo"),  # held since 0.020, no boundary came: the wait bound
    ]


def test_a_tail_as_large_as_max_flush_bytes_is_written_anyway() -> None:
    c = coalescer("openai-chat", "line", max_bytes=600)
    events = [content("start"), *(content(" abcdefghij") for _ in range(150))]
    times = paced(len(events), SPACING)
    batches = replay_timed(c, events, times)
    # No line break at all, no wait bound: the size bound alone writes the held text.
    middle = [(at, texts_of("openai-chat", b)) for at, b in batches[1:-1]]
    assert middle
    for at, text in middle:
        assert at < times[-1]
        assert 600 <= len(text.encode()) < 600 + len(" abcdefghij") * 4


def test_a_boundary_event_writes_everything_held() -> None:
    c = coalescer("openai-chat", "sentence")
    events = [content("Hi"), content(" there, my"), chat_chunk({}, finish_reason="stop")]
    batches = replay_timed(c, events, [0.0, 0.005, 0.100])
    assert [(at, texts_of("openai-chat", b), len(b)) for at, b in batches] == [
        (0.0, "Hi", 1),
        (0.100, " there, my", 2),  # held from 0.025 on; the finish chunk writes it with itself
    ]


# ---- what is never held ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["openai_chat_tool_call.sse", "openai_responses_function_call.sse"],
)
@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_tool_arguments_are_written_as_without_a_boundary(name: str, boundary: str) -> None:
    fmt = FIXTURE_FORMATS[name]
    raw = fixture_events(name)
    times = paced(len(raw), SPACING)
    plain = replay_timed(coalescer(fmt, "none"), raw, times)
    assert replay_timed(coalescer(fmt, boundary), raw, times) == plain


def _arguments(format_name: str, events: Sequence[SSEEvent]) -> str:
    out = ""
    for event in events:
        obj = json.loads(event.data or "null")
        if format_name == "openai-chat":
            for choice in obj.get("choices") or []:
                for call in choice["delta"].get("tool_calls") or []:
                    out += call.get("function", {}).get("arguments") or ""
        elif obj.get("type") == "content_block_delta" and "partial_json" in obj["delta"]:
            out += obj["delta"]["partial_json"]
    return out


@pytest.mark.parametrize("format_name", ["openai-chat", "anthropic"])
def test_tool_arguments_after_text_are_never_held(format_name: str) -> None:
    fragments = ['{"loc', 'ation": "Pa', "ris, Fr", 'ance"', "}"]
    if format_name == "openai-chat":
        events = [
            content("Let me"),
            content(" look that"),
            chat_chunk({"tool_calls": [tool_start(0, "weather")]}),
            *(chat_chunk({"tool_calls": [tool_args(0, f)]}) for f in fragments),
        ]
    else:
        events = [
            anthropic_delta(0, "text_delta", "Let me"),
            anthropic_delta(0, "text_delta", " look that"),
            anthropic_event({"type": "content_block_stop", "index": 0}),
            anthropic_event({"type": "content_block_start", "index": 1}),
            *(anthropic_delta(1, "input_json_delta", f) for f in fragments),
        ]
    lead = len(events) - len(fragments)
    arrivals = [0.050 + 0.030 * i for i in range(len(fragments))]
    times = [0.0, 0.005, *[0.010] * (lead - 2), *arrivals]
    batches = replay_timed(coalescer(format_name, "sentence"), events, times, idle_after=1.0)
    # Every argument fragment is written at the first window end after it came.
    for fragment, at in zip(fragments, arrivals, strict=True):
        upto = _arguments(format_name, flat([b for b in batches if b[0] <= at + WINDOW]))
        assert upto.endswith(fragment)
    assert _arguments(format_name, flat(batches)) == "".join(fragments)


def test_text_with_logprobs_is_not_held() -> None:
    logprobs = {"content": [{"token": "x", "logprob": -0.1, "bytes": [120], "top_logprobs": []}]}
    events = [
        chat_chunk({"content": "Hel"}, logprobs=logprobs),
        chat_chunk({"content": "lo wo"}, logprobs=logprobs),
        chat_chunk({"content": "rld"}, logprobs=logprobs),
    ]
    batches = replay_timed(coalescer("openai-chat", "word"), events, [0.0, 0.005, 0.010])
    assert [texts_of("openai-chat", b) for _, b in batches] == ["Hel", "lo world"]


def test_chunks_with_per_token_fields_are_forwarded_as_they_came() -> None:
    """A chat chunk with an unknown field that is not a string (vLLM's ``token_ids``) is
    batched, never rewritten, so never cut either."""
    events = [
        chat_chunk({"reasoning": "Think", "token_ids": [1]}),
        chat_chunk({"reasoning": "ing ab", "token_ids": [2]}),
        chat_chunk({"reasoning": "out it", "token_ids": [3]}),
    ]
    batches = replay_timed(coalescer("openai-chat", "word"), events, [0.0, 0.005, 0.010])
    assert flat(batches) == events


def test_labelled_chunks_merge_and_are_cut_with_their_label() -> None:
    """gpt-oss's ``channel`` label merges (once per written event) and a cut keeps it."""
    events = [
        chat_chunk({"reasoning": "Think", "channel": "analysis"}),
        chat_chunk({"reasoning": "ing ab", "channel": "analysis"}),
        chat_chunk({"reasoning": "out it", "channel": "analysis"}),
    ]
    batches = replay_timed(coalescer("openai-chat", "word"), events, [0.0, 0.005, 0.010])
    out = flat(batches)
    deltas = [json.loads(e.data or "")["choices"][0]["delta"] for e in out]
    assert all(d["channel"] == "analysis" for d in deltas)
    assert "".join(d["reasoning"] for d in deltas) == "Thinking about it"
    assert len(out) < len(events)


# ---- the envelope of a cut -------------------------------------------------------------------


def test_a_cut_chat_delta_keeps_its_envelope() -> None:
    c = coalescer("openai-chat", "sentence")
    first = content("Hi")
    tail = chat_chunk({"content": " there. How"})._replace(id="42")
    c.push(first, 0.0)
    assert c.take(0.0) == [first]
    c.push(tail, 0.005)
    (head,) = c.take(0.025)
    (rest,) = c.take()
    for event, text in ((head, " there. "), (rest, "How")):
        obj = json.loads(event.data or "")
        expected = json.loads(tail.data or "")
        expected["choices"][0]["delta"]["content"] = text
        assert obj == expected
    assert head.id is None  # it stands for part of the event with id 42
    assert rest.id == "42"


def test_a_cut_responses_delta_keeps_its_envelope() -> None:
    def delta(text: str, seq: int) -> SSEEvent:
        return responses_event(
            {
                "type": "response.output_text.delta",
                "item_id": "msg_1",
                "output_index": 0,
                "content_index": 0,
                "delta": text,
                "logprobs": [],
                "sequence_number": seq,
            }
        )

    c = coalescer("openai-responses", "word")
    c.push(delta("One", 4), 0.0)
    c.take(0.0)
    c.push(delta(" two", 5), 0.005)
    c.push(delta(" thr", 6), 0.010)
    (head,) = c.take(0.025)
    c.push(delta("ee", 7), 0.030)
    (rest,) = c.take()
    assert json.loads(head.data or "") == json.loads(delta(" two ", 6).data or "")
    assert json.loads(rest.data or "") == json.loads(delta("three", 7).data or "")


def test_a_cut_anthropic_delta_keeps_its_envelope() -> None:
    c = coalescer("anthropic", "word")
    c.push(anthropic_delta(2, "thinking_delta", "Let"), 0.0)
    c.take(0.0)
    c.push(anthropic_delta(2, "thinking_delta", " me thi"), 0.005)
    (head,) = c.take(0.025)
    (rest,) = c.take()
    assert head.event == rest.event == "content_block_delta"
    assert json.loads(head.data or "") == json.loads(
        anthropic_delta(2, "thinking_delta", " me ").data or ""
    )
    assert json.loads(rest.data or "") == json.loads(
        anthropic_delta(2, "thinking_delta", "thi").data or ""
    )


def test_none_changes_nothing() -> None:
    raw = fixture_events(LONG_TEXT_FIXTURES[0])
    times = paced(len(raw), SPACING)
    plain = Coalescer(format="openai-chat", flush_interval=WINDOW, max_flush_bytes=1 << 20)
    assert replay_timed(coalescer("openai-chat", "none"), raw, times) == replay_timed(
        plain, raw, times
    )


def test_bad_values_are_refused() -> None:
    with pytest.raises(ValueError, match="flush_boundary"):
        Coalescer(flush_boundary="paragraph")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_boundary_wait"):
        Coalescer(flush_boundary="word", max_boundary_wait=-1)
