"""Per-format rules: detection, which events are boundaries or deltas, and what a merge keeps."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest

from streamhop.middleware import (
    FORMAT_NAMES,
    Coalescer,
    SSEEvent,
    detect_format,
    get_format,
)
from streamhop.middleware.rechunk.formats import MALFORMED, Kind
from streamhop.middleware.rechunk.formats.base import Content

from ..accumulate import (
    accumulate,
    anthropic_delta,
    anthropic_event,
    chat_chunk,
    is_continuation,
    responses_event,
    tool_args,
    tool_start,
    wire_event,
)
from ..conftest import FIXTURE_FORMATS, FIXTURE_NAMES, fixture_events


def merge_all(format_name: str, events: list[SSEEvent]) -> list[SSEEvent]:
    """Push every event with no write in between (a burst to a busy client), take once."""
    coalescer = Coalescer(format=format_name, flush_interval=60.0, max_flush_bytes=1 << 30)
    for event in events:
        coalescer.push(event, 0.0)
    out = coalescer.take()
    assert coalescer.events_in == len(events)
    assert coalescer.events_out == len(out)
    return out


def loads(event: SSEEvent) -> Any:
    assert event.data is not None
    return json.loads(event.data)


def classify(format_name: str, event: SSEEvent) -> tuple[Kind, bool]:
    kind, content, _ = get_format(format_name).classify(event)
    return kind, bool(content)


# ----------------------------------------------------------------------------------------------
# Detection


def test_format_names() -> None:
    assert set(FORMAT_NAMES) == {"auto", "openai-chat", "openai-responses", "anthropic", "sse"}
    for name in FORMAT_NAMES[1:]:
        assert get_format(name).name == name


def test_unknown_format_name_is_refused() -> None:
    with pytest.raises(KeyError, match="openai-chat"):
        get_format("openai")
    with pytest.raises(KeyError):
        Coalescer(format="gemini")


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_detects_each_fixture_from_its_first_event(name: str) -> None:
    """``auto`` picks the recorded stream's format from its first event."""
    events = fixture_events(name)
    detected = detect_format(events[0])
    assert detected is not None and detected.name == FIXTURE_FORMATS[name]
    coalescer = Coalescer()
    assert coalescer.format_name is None
    coalescer.push(events[0], 0.0)
    assert coalescer.format_name == FIXTURE_FORMATS[name]


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (SSEEvent(data='{"choices": []}'), "openai-chat"),
        (SSEEvent(data='{"object": "chat.completion.chunk", "choices": null}'), "openai-chat"),
        (SSEEvent(data='{"type": "message_start", "message": {}}'), "anthropic"),
        (SSEEvent(data="{}", event="content_block_delta"), "anthropic"),
        (SSEEvent(data='{"type": "response.created"}'), "openai-responses"),
        (SSEEvent(data="not json", event="response.in_progress"), "openai-responses"),
        (SSEEvent(data="hello world"), "sse"),
        (SSEEvent(data="[1, 2]"), "sse"),
        (SSEEvent(data='{"progress": 0.5}'), "sse"),
        (SSEEvent(data="[DONE]"), "sse"),
    ],
)
def test_detection_rules(event: SSEEvent, expected: str) -> None:
    detected = detect_format(event)
    assert detected is not None and detected.name == expected


def test_detection_waits_for_an_event_with_data() -> None:
    """An id/retry-only block says nothing about the format: it is forwarded at once and the
    next event decides."""
    assert detect_format(SSEEvent(data=None, id="1")) is None
    coalescer = Coalescer()
    coalescer.push(SSEEvent(data=None, retry=1000), 0.0)
    assert coalescer.format_name is None
    assert coalescer.due(0.0)
    assert coalescer.take() == [SSEEvent(data=None, retry=1000)]
    coalescer.push(anthropic_event({"type": "message_start", "message": {}}), 0.1)
    assert coalescer.format_name == "anthropic"


# ----------------------------------------------------------------------------------------------
# Classification: boundaries (FLUSH) and deltas


CHAT_CASES: list[tuple[str, SSEEvent, Kind, bool]] = [
    ("role chunk", chat_chunk({"role": "assistant", "content": ""}), Kind.FLUSH, False),
    ("role chunk with text", chat_chunk({"role": "assistant", "content": "Hi"}), Kind.FLUSH, True),
    # An announcement (id/name, arguments "") is a boundary but not content: the first
    # argument byte is the tool call's first token (issue: tool arguments never held).
    (
        "tool-call start",
        chat_chunk({"tool_calls": [tool_start(0, "get_weather")]}),
        Kind.FLUSH,
        False,
    ),
    (
        "tool-call start with arguments",
        chat_chunk({"tool_calls": [tool_start(0, "get_weather", '{"city"')]}),
        Kind.FLUSH,
        True,
    ),
    (
        "tool-call start without name",
        chat_chunk({"tool_calls": [{"index": 1, "id": "call_9", "function": {"arguments": ""}}]}),
        Kind.FLUSH,
        False,
    ),
    (
        "tool-call name without id",
        chat_chunk({"tool_calls": [{"index": 1, "function": {"name": "f", "arguments": ""}}]}),
        Kind.FLUSH,
        False,
    ),
    ("finish_reason", chat_chunk({}, "stop"), Kind.FLUSH, False),
    ("finish_reason with text", chat_chunk({"content": "."}, "length"), Kind.FLUSH, True),
    (
        "usage chunk",
        chat_chunk(choices=[], usage={"prompt_tokens": 1, "completion_tokens": 2}),
        Kind.FLUSH,
        False,
    ),
    (
        "usage on a text chunk",
        chat_chunk({"content": "x"}, usage={"prompt_tokens": 1, "completion_tokens": 2}),
        Kind.FLUSH,
        True,
    ),
    ("empty choices", chat_chunk(choices=[]), Kind.FLUSH, False),
    ("DONE", SSEEvent(data="[DONE]"), Kind.FLUSH, False),
    (
        "error object",
        wire_event({"error": {"message": "overloaded", "type": "server_error", "code": None}}),
        Kind.FLUSH,
        False,
    ),
    ("id-only block", SSEEvent(data=None, id="5"), Kind.FLUSH, False),
    (
        "retry on a delta",
        SSEEvent(data=chat_chunk({"content": "x"}).data, retry=10),
        Kind.FLUSH,
        False,
    ),
    ("text", chat_chunk({"content": "Hello"}), Kind.DELTA, True),
    ("text with usage null", chat_chunk({"content": "Hello"}, usage=None), Kind.DELTA, True),
    ("empty text", chat_chunk({"content": ""}), Kind.DELTA, False),
    ("empty delta", chat_chunk({}), Kind.DELTA, False),
    ("reasoning_content", chat_chunk({"reasoning_content": "hmm"}), Kind.DELTA, True),
    ("groq reasoning", chat_chunk({"reasoning": "We"}), Kind.DELTA, True),
    ("refusal", chat_chunk({"refusal": "I can't"}), Kind.DELTA, True),
    ("tool-call arguments", chat_chunk({"tool_calls": [tool_args(0, '{"a"')]}), Kind.DELTA, True),
    (
        "empty tool-call arguments",
        chat_chunk({"tool_calls": [tool_args(0, "")]}),
        Kind.DELTA,
        False,
    ),
]


@pytest.mark.parametrize(
    ("event", "kind", "content"),
    [case[1:] for case in CHAT_CASES],
    ids=[case[0] for case in CHAT_CASES],
)
def test_openai_chat_classification(event: SSEEvent, kind: Kind, content: bool) -> None:
    assert classify("openai-chat", event) == (kind, content)


@pytest.mark.parametrize(
    ("delta", "finish_reason", "kind"),
    [
        ({"role": "assistant", "content": "", "channel": "analysis"}, None, Kind.FLUSH),
        ({"tool_calls": [tool_start(0, "f")], "channel": "commentary"}, None, Kind.FLUSH),
        ({"content": "x", "channel": "final"}, "stop", Kind.FLUSH),
        ({"reasoning": "We", "channel": "analysis"}, None, None),
        (
            {"content": "a", "reasoning_content": "b", "tool_calls": [tool_args(0, "c")]},
            None,
            Kind.DELTA,
        ),
    ],
    ids=["role+unknown", "tool-start+unknown", "finish+unknown", "text+unknown", "three-slots"],
)
def test_openai_chat_classification_ignores_key_order(
    delta: dict[str, Any], finish_reason: str | None, kind: Kind | None
) -> None:
    """JSON key order carries no meaning: every order of a delta's keys classifies the same,
    and a role or a new tool call is a boundary even next to a field streamhop does not know."""
    results = set()
    for keys in itertools.permutations(delta):
        event = chat_chunk({k: delta[k] for k in keys}, finish_reason)
        results.add(classify("openai-chat", event))
    assert len(results) == 1, results
    if kind is not None:
        ((got, _),) = results
        assert got is kind
    # A merged event of the same shape accumulates the same, whatever the key order.
    if kind is Kind.DELTA:
        events = [chat_chunk({k: delta[k] for k in keys}) for keys in itertools.permutations(delta)]
        assert accumulate("openai-chat", merge_all("openai-chat", events)) == accumulate(
            "openai-chat", events
        )


ANTHROPIC_CASES: list[tuple[str, SSEEvent, Kind, bool | None]] = [
    ("message_start", anthropic_event({"type": "message_start", "message": {}}), Kind.FLUSH, False),
    (
        "content_block_start",
        anthropic_event(
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text"}}
        ),
        Kind.FLUSH,
        False,
    ),
    ("ping", anthropic_event({"type": "ping"}), Kind.FLUSH, False),
    (
        "content_block_stop",
        anthropic_event({"type": "content_block_stop", "index": 0}),
        Kind.FLUSH,
        False,
    ),
    (
        "message_delta",
        anthropic_event(
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn"},
                "usage": {"output_tokens": 5},
            }
        ),
        Kind.FLUSH,
        False,
    ),
    ("message_stop", anthropic_event({"type": "message_stop"}), Kind.FLUSH, False),
    (
        "error",
        anthropic_event({"type": "error", "error": {"type": "overloaded_error", "message": "x"}}),
        Kind.FLUSH,
        False,
    ),
    ("signature_delta", anthropic_delta(0, "signature_delta", "EvMC"), Kind.FLUSH, None),
    (
        "citations_delta",
        anthropic_event(
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "citations_delta", "citation": {"cited_text": "x"}},
            }
        ),
        Kind.FLUSH,
        None,
    ),
    ("text_delta", anthropic_delta(0, "text_delta", "Hi"), Kind.DELTA, True),
    ("thinking_delta", anthropic_delta(0, "thinking_delta", "Let me"), Kind.DELTA, True),
    ("input_json_delta", anthropic_delta(1, "input_json_delta", '{"city'), Kind.DELTA, True),
    ("empty input_json_delta", anthropic_delta(1, "input_json_delta", ""), Kind.DELTA, False),
]


@pytest.mark.parametrize(
    ("event", "kind", "content"),
    [case[1:] for case in ANTHROPIC_CASES],
    ids=[case[0] for case in ANTHROPIC_CASES],
)
def test_anthropic_classification(event: SSEEvent, kind: Kind, content: bool | None) -> None:
    got_kind, got_content = classify("anthropic", event)
    assert got_kind is kind
    if content is not None:
        assert got_content is content


def _responses(kind: str, **fields: Any) -> SSEEvent:
    return responses_event({"type": kind, "sequence_number": 1, **fields})


_TEXT_POS = {"item_id": "msg_1", "output_index": 0, "content_index": 0}

RESPONSES_CASES: list[tuple[SSEEvent, Kind, bool]] = [
    (_responses("response.created", response={"id": "resp_1"}), Kind.FLUSH, False),
    (_responses("response.in_progress", response={"id": "resp_1"}), Kind.FLUSH, False),
    (_responses("response.output_item.added", output_index=0, item={}), Kind.FLUSH, False),
    (_responses("response.content_part.added", part={}, **_TEXT_POS), Kind.FLUSH, False),
    (_responses("response.output_text.done", text="Hi", **_TEXT_POS), Kind.FLUSH, False),
    (_responses("response.content_part.done", part={}, **_TEXT_POS), Kind.FLUSH, False),
    (_responses("response.output_item.done", output_index=0, item={}), Kind.FLUSH, False),
    (
        _responses(
            "response.function_call_arguments.done", arguments="{}", item_id="fc", output_index=1
        ),
        Kind.FLUSH,
        False,
    ),
    (_responses("response.completed", response={"id": "resp_1"}), Kind.FLUSH, False),
    (_responses("response.failed", response={"id": "resp_1"}), Kind.FLUSH, False),
    (_responses("error", code="server_error", message="x", param=None), Kind.FLUSH, False),
    (_responses("response.output_text.delta", delta="Hi", **_TEXT_POS), Kind.DELTA, True),
    (_responses("response.output_text.delta", delta="", **_TEXT_POS), Kind.DELTA, False),
    (
        _responses(
            "response.function_call_arguments.delta", delta="{", item_id="fc", output_index=1
        ),
        Kind.DELTA,
        True,
    ),
    (
        _responses(
            "response.reasoning_summary_text.delta",
            delta="I",
            item_id="rs",
            output_index=0,
            summary_index=0,
        ),
        Kind.DELTA,
        True,
    ),
    (_responses("response.audio.transcript.delta", delta="hi"), Kind.DELTA, False),
]


@pytest.mark.parametrize(
    ("event", "kind", "content"),
    RESPONSES_CASES,
    ids=[f"{loads(c[0])['type']}-{c[1].name}-{c[2]}" for c in RESPONSES_CASES],
)
def test_openai_responses_classification(event: SSEEvent, kind: Kind, content: bool) -> None:
    assert classify("openai-responses", event) == (kind, content)


@pytest.mark.parametrize("fixture", FIXTURE_NAMES)
def test_fixture_boundaries_are_flushes(fixture: str) -> None:
    """In the recordings, exactly the pure text/argument continuations are deltas."""
    fmt = get_format(FIXTURE_FORMATS[fixture])
    for event in fixture_events(fixture):
        kind, _, parsed = fmt.classify(event)
        assert parsed is not MALFORMED
        if not is_continuation(fmt.name, event):
            assert kind is Kind.FLUSH, event.data
        elif (
            kind is not Kind.DELTA
        ):  # a continuation may be held unmerged (unknown delta fields), never a boundary
            assert kind is Kind.HOLD, event.data


# ----------------------------------------------------------------------------------------------
# Malformed JSON


MALFORMED_DATA = ['{"choices": [{"delta": {"content": "x"', "{not json}", "[1, 2]", '"text"', "7"]


@pytest.mark.parametrize("data", MALFORMED_DATA)
@pytest.mark.parametrize("format_name", ["openai-chat", "anthropic", "openai-responses"])
def test_malformed_json_is_a_counted_verbatim_boundary(format_name: str, data: str) -> None:
    """Bad JSON is FLUSH with MALFORMED, counted, forwarded byte for byte, never merged."""
    bad = wire_event(data, "content_block_delta" if format_name == "anthropic" else None)
    kind, content, parsed = get_format(format_name).classify(bad)
    assert (kind, content, parsed) == (Kind.FLUSH, False, MALFORMED)
    delta = {
        "openai-chat": lambda t: chat_chunk({"content": t}),
        "anthropic": lambda t: anthropic_delta(0, "text_delta", t),
        "openai-responses": lambda t: _responses(
            "response.output_text.delta", delta=t, **_TEXT_POS
        ),
    }[format_name]
    events = [delta("a"), delta("b"), bad, delta("c"), delta("d")]
    coalescer = Coalescer(format=format_name, flush_interval=60.0)
    coalescer.push(events[0], 0.0)
    assert coalescer.take() == [events[0]]  # first content: at once
    for event in events[1:]:
        coalescer.push(event, 0.0)
        # held until the boundary arrives; then everything held is due
        assert coalescer.due(0.0) is (events.index(event) >= 2)
    out = coalescer.take()
    assert coalescer.malformed == 1
    assert out[0] == events[1]
    assert out[1] is bad
    assert len(out) == 3
    assert [m for m in merge_all(format_name, events) if m.data == data] == [bad]


def test_no_recorded_stream_is_malformed(fixture_name: str) -> None:
    coalescer = Coalescer()
    for event in fixture_events(fixture_name):
        coalescer.push(event, 0.0)
    assert coalescer.malformed == 0


# ----------------------------------------------------------------------------------------------
# What merging keeps


def test_openai_chat_merge_concatenates_and_keeps_unknown_fields() -> None:
    """Consecutive text deltas become one chunk: text joined, every other field (unknown
    top-level and choice fields included) kept, the first ``obfuscation`` kept, the last SSE
    ``id`` kept."""
    parts = ["Hel", "lo, ", "wörld ", "\U0001f469\u200d\U0001f4bb"]
    events = [
        chat_chunk(
            choices=[
                {
                    "index": 0,
                    "delta": {"content": text},
                    "logprobs": None,
                    "finish_reason": None,
                    "x_choice": {"seed": 7},
                }
            ],
            obfuscation=f"pad{i}",
            x_groq={"id": "req_1"},
            service_tier="default",
        )
        for i, text in enumerate(parts)
    ]
    events = [e._replace(id=str(i)) for i, e in enumerate(events)]
    (merged,) = merge_all("openai-chat", events)
    obj = loads(merged)
    first = loads(events[0])
    assert obj["choices"] == [{**first["choices"][0], "delta": {"content": "".join(parts)}}]
    assert {k: v for k, v in obj.items() if k != "choices"} == {
        k: v for k, v in first.items() if k != "choices"
    }
    assert obj["obfuscation"] == "pad0"
    assert obj["x_groq"] == {"id": "req_1"}
    assert merged.id == "3"
    assert merged.wire_size == sum(e.wire_size for e in events)
    assert accumulate("openai-chat", [merged]) == accumulate("openai-chat", events)


def test_openai_chat_unknown_delta_fields_are_never_lost() -> None:
    """Deltas with fields streamhop does not know (Groq's ``channel``, a future key) reach the
    client with those fields on every piece of text, and the SDK builds the same message
    (the openai SDK concatenates unknown string fields, so these must not be merged away)."""
    events = [chat_chunk({"role": "assistant", "content": ""})]
    events += [
        chat_chunk({"reasoning": t, "channel": "analysis", "x_new_key": {"n": 1}})
        for t in ["We", " need", " to", " call"]
    ]
    events += [chat_chunk({"content": t, "channel": "final"}) for t in ["Hi", "!"]]
    events += [chat_chunk({}, "stop")]
    out = merge_all("openai-chat", events)
    for event in out[1:-1]:
        delta = loads(event)["choices"][0]["delta"]
        assert delta["channel"] in ("analysis", "final")
        assert delta.get("x_new_key", {"n": 1}) == {"n": 1}
    raw, merged = accumulate("openai-chat", events), accumulate("openai-chat", out)
    assert merged == raw
    message = raw["sdk"]["choices"][0]
    assert message["reasoning"] == "We need to call"
    assert message["content"] == "Hi!"
    assert "channel" in message["extra"]
    assert classify("openai-chat", events[1])[0] is not Kind.FLUSH


def test_openai_chat_merges_several_fields_and_choices_in_step() -> None:
    """A chunk carrying reasoning and text for two choices merges with chunks of the same
    shape, each string in its own place."""

    def two(r0: str, c1: str) -> SSEEvent:
        return chat_chunk(
            choices=[
                {"index": 0, "delta": {"reasoning_content": r0}, "finish_reason": None},
                {"index": 1, "delta": {"content": c1}, "finish_reason": None},
            ]
        )

    events = [two("a", "x"), two("b", "y"), two("c", "z")]
    (merged,) = merge_all("openai-chat", events)
    choices = loads(merged)["choices"]
    assert choices[0]["delta"] == {"reasoning_content": "abc"}
    assert choices[1]["delta"] == {"content": "xyz"}


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (
            chat_chunk({"content": "a"}, x_groq={"id": "1"}),
            chat_chunk({"content": "b"}, x_groq={"id": "2"}),
        ),
        (chat_chunk({"content": "a"}, x_groq={"id": "1"}), chat_chunk({"content": "b"})),
        (
            chat_chunk({"content": "a", "channel": "analysis"}),
            chat_chunk({"content": "b", "channel": "final"}),
        ),
        (chat_chunk({"reasoning": "a", "channel": "analysis"}), chat_chunk({"reasoning": "b"})),
        (chat_chunk({"content": "a"}), chat_chunk({"content": "b"}, system_fingerprint="fp_2")),
        (chat_chunk({"content": "a"}), chat_chunk({"content": "b"}, model="other")),
        (chat_chunk({"content": "a"}), chat_chunk({"reasoning_content": "b"})),
        (chat_chunk({"content": "a"}), chat_chunk({"content": "b", "reasoning_content": "c"})),
        (chat_chunk({"content": "a"}), chat_chunk({"content": ""})),
        (
            chat_chunk({"content": "a"}),
            chat_chunk({"content": "b"}, logprobs={"content": [], "refusal": None}),
        ),
        (
            chat_chunk(choices=[{"index": 0, "delta": {"content": "a"}, "x_choice": 1}]),
            chat_chunk(choices=[{"index": 0, "delta": {"content": "b"}, "x_choice": 2}]),
        ),
        (
            chat_chunk(choices=[{"index": 0, "delta": {"content": "a"}}]),
            chat_chunk(choices=[{"index": 1, "delta": {"content": "b"}}]),
        ),
        (
            chat_chunk({"tool_calls": [tool_args(0, "a")]}),
            chat_chunk(
                {"tool_calls": [{"index": 0, "type": "function", "function": {"arguments": "b"}}]}
            ),
        ),
        (
            wire_event(chat_chunk({"content": "a"}).data, "x"),
            wire_event(chat_chunk({"content": "b"}).data, "y"),
        ),
    ],
    ids=[
        "x_groq value",
        "x_groq presence",
        "delta channel",
        "delta key presence",
        "system_fingerprint",
        "model",
        "text field",
        "field set",
        "empty text",
        "logprobs presence",
        "choice field",
        "choice index",
        "tool-call key set",
        "sse event name",
    ],
)
def test_openai_chat_deltas_that_differ_are_not_merged(first: SSEEvent, second: SSEEvent) -> None:
    """Deltas differing in anything but the merged strings stay separate and unchanged."""
    assert merge_all("openai-chat", [first, second]) == [first, second]


def test_tool_call_arguments_of_different_indexes_are_never_merged() -> None:
    """Parallel tool calls: fragments merge per index only, never across indexes."""
    events = [
        chat_chunk({"role": "assistant", "content": None}),
        chat_chunk({"tool_calls": [tool_start(0, "get_weather")]}),
        chat_chunk({"tool_calls": [tool_args(0, '{"city": "Par')]}),
        chat_chunk({"tool_calls": [tool_args(0, 'is"}')]}),
        chat_chunk({"tool_calls": [tool_start(1, "get_time")]}),
        chat_chunk({"tool_calls": [tool_args(1, '{"tz": ')]}),
        chat_chunk({"tool_calls": [tool_args(0, "")]}),
        chat_chunk({"tool_calls": [tool_args(1, '"CET"')]}),
        chat_chunk({"tool_calls": [tool_args(1, "}")]}),
        chat_chunk({"tool_calls": [tool_args(0, " ")]}),
        chat_chunk({"tool_calls": [tool_args(0, "\n")]}),
        chat_chunk({}, "tool_calls"),
    ]
    out = merge_all("openai-chat", events)
    calls = [
        [c["index"] for c in (loads(e)["choices"][0]["delta"].get("tool_calls") or [])] for e in out
    ]
    assert calls == [[], [0], [0], [1], [1], [0], [1], [0], []]
    args = [
        [c["function"]["arguments"] for c in loads(e)["choices"][0]["delta"]["tool_calls"]]
        for e in out[1:-1]
    ]
    assert args == [[""], ['{"city": "Paris"}'], [""], ['{"tz": '], [""], ['"CET"}'], [" \n"]]
    raw, merged = accumulate("openai-chat", events), accumulate("openai-chat", out)
    assert merged == raw
    assert [c["arguments"] for c in raw["sdk"]["choices"][0]["tool_calls"]] == [
        '{"city": "Paris"} \n',
        '{"tz": "CET"}',
    ]


def test_chunks_carrying_two_tool_calls_merge_slot_by_slot() -> None:
    """Chunks that each continue calls 0 and 1 merge when the shape repeats."""
    events = [
        chat_chunk({"tool_calls": [tool_start(0, "a"), tool_start(1, "b")]}),
        chat_chunk({"tool_calls": [tool_args(0, "[1"), tool_args(1, "[2")]}),
        chat_chunk({"tool_calls": [tool_args(0, ",3]"), tool_args(1, ",4]")]}),
    ]
    out = merge_all("openai-chat", events)
    assert len(out) == 2
    calls = loads(out[1])["choices"][0]["delta"]["tool_calls"]
    assert [(c["index"], c["function"]["arguments"]) for c in calls] == [(0, "[1,3]"), (1, "[2,4]")]
    raw, merged = accumulate("openai-chat", events), accumulate("openai-chat", out)
    # The SDK's per-call "done" events assume one call per chunk: on the raw stream it
    # already reports call 1 done with "[2". Only the accumulated message is comparable.
    del raw["sdk_done_events"], merged["sdk_done_events"]
    assert merged == raw


def _token(text: str) -> dict[str, Any]:
    return {"token": text, "logprob": -0.25, "bytes": list(text.encode()), "top_logprobs": []}


def test_openai_chat_logprobs_are_concatenated() -> None:
    events = [
        chat_chunk({"content": t}, logprobs={"content": [_token(t)], "refusal": None})
        for t in ["The", " sky", " is", " blue", "°"]
    ]
    (merged,) = merge_all("openai-chat", events)
    logprobs = loads(merged)["choices"][0]["logprobs"]
    assert [t["token"] for t in logprobs["content"]] == ["The", " sky", " is", " blue", "°"]
    assert logprobs["refusal"] is None
    raw, out = accumulate("openai-chat", events), accumulate("openai-chat", [merged])
    assert out == raw
    assert len(raw["sdk"]["choices"][0]["logprobs"]["content"]) == 5


def test_anthropic_merge_keeps_event_name_index_and_type() -> None:
    events = [anthropic_delta(1, "text_delta", t) for t in ["Bon", "jour", " ", "à", " 🌍"]]
    (merged,) = merge_all("anthropic", events)
    assert merged.event == "content_block_delta"
    assert loads(merged) == {
        "type": "content_block_delta",
        "index": 1,
        "delta": {"type": "text_delta", "text": "Bonjour à 🌍"},
    }


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (anthropic_delta(0, "text_delta", "a"), anthropic_delta(1, "text_delta", "b")),
        (anthropic_delta(0, "thinking_delta", "a"), anthropic_delta(0, "text_delta", "b")),
        (anthropic_delta(0, "input_json_delta", "a"), anthropic_delta(0, "text_delta", "b")),
        (anthropic_delta(0, "thinking_delta", "a"), anthropic_delta(0, "signature_delta", "S")),
        (anthropic_delta(0, "signature_delta", "S"), anthropic_delta(0, "signature_delta", "T")),
        (
            anthropic_delta(0, "text_delta", "a"),
            anthropic_event(
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": "b"},
                    "x_new": 1,
                }
            ),
        ),
    ],
    ids=["index", "delta type", "json vs text", "signature", "signatures", "unknown field"],
)
def test_anthropic_deltas_that_differ_are_not_merged(first: SSEEvent, second: SSEEvent) -> None:
    assert merge_all("anthropic", [first, second]) == [first, second]


def test_anthropic_boundaries_keep_the_api_padding() -> None:
    """Boundaries are forwarded as they came, including the API's whitespace padding."""
    events = fixture_events("anthropic_thinking_text.sse")
    out = merge_all("anthropic", events)
    padded = [e for e in events if e.data and e.data.endswith(" }")]
    assert padded
    out_data = {e.data for e in out}
    for event in padded:
        if loads(event)["type"] != "content_block_delta" or "signature" in event.data:
            assert event.data in out_data
    assert accumulate("anthropic", out) == accumulate("anthropic", events)


def test_openai_responses_merge_keeps_last_sequence_number_and_concatenates_logprobs() -> None:
    pieces = ["The", " capital", " is", " Paris", "."]
    events = [
        _responses_delta(text, seq=10 + i, logprobs=[_token(text)], obfuscation=f"o{i}")
        for i, text in enumerate(pieces)
    ]
    (merged,) = merge_all("openai-responses", events)
    obj = loads(merged)
    prefix = [
        _responses("response.created", response={"id": "resp_1", "output": []}),
        _responses(
            "response.output_item.added",
            output_index=0,
            item={
                "type": "message",
                "id": "msg_1",
                "role": "assistant",
                "status": "in_progress",
                "content": [],
            },
        ),
        _responses(
            "response.content_part.added",
            **_TEXT_POS,
            part={"type": "output_text", "text": "", "annotations": []},
        ),
    ]
    assert merged.event == "response.output_text.delta"
    assert obj["delta"] == "The capital is Paris."
    assert obj["sequence_number"] == 14
    assert [t["token"] for t in obj["logprobs"]] == pieces
    assert obj["obfuscation"] == "o0"
    assert {k: obj[k] for k in _TEXT_POS} == _TEXT_POS
    raw = accumulate("openai-responses", prefix + events)
    assert accumulate("openai-responses", [*prefix, merged]) == raw
    assert raw["sdk_text"] == {"0/0": "The capital is Paris."}


def _responses_delta(text: str, seq: int, **fields: Any) -> SSEEvent:
    return responses_event(
        {
            "type": "response.output_text.delta",
            "sequence_number": seq,
            "delta": text,
            **_TEXT_POS,
            **fields,
        }
    )


@pytest.mark.parametrize(
    "change",
    [{"item_id": "msg_2"}, {"output_index": 1}, {"content_index": 1}, {"x_new": True}],
)
def test_openai_responses_deltas_of_other_positions_are_not_merged(
    change: dict[str, Any],
) -> None:
    first = _responses_delta("a", 1)
    second = responses_event({**loads(_responses_delta("b", 2)), **change})
    assert merge_all("openai-responses", [first, second]) == [first, second]


def test_plain_sse_events_are_batched_never_rewritten() -> None:
    """``sse``: events are held and written together, each exactly as it came."""
    events = [
        SSEEvent(data="progress 1", event="tick", id="1"),
        SSEEvent(data='{"a": 1}'),
        SSEEvent(data="two\nlines"),
        SSEEvent(data="progress 2", event="tick", id="2"),
    ]
    coalescer = Coalescer(format="sse", flush_interval=0.05)
    coalescer.push(events[0], 0.0)
    assert coalescer.due(0.0)  # the first event is like a first token
    assert coalescer.take() == events[:1]
    for i, event in enumerate(events[1:]):
        coalescer.push(event, 0.01 * (i + 1))
        assert not coalescer.due(0.01 * (i + 1))
    deadline = coalescer.deadline
    assert deadline == pytest.approx(0.06)
    assert not coalescer.due(deadline - 1e-6)
    assert coalescer.due(deadline)
    assert coalescer.take() == events[1:]


@pytest.mark.parametrize(
    ("format_name", "event"),
    [
        ("openai-chat", chat_chunk({"tool_calls": [tool_args(0, '{"q')]})),
        ("openai-chat", chat_chunk({"tool_calls": [tool_start(0, "f", '{"q')]})),
        ("anthropic", anthropic_delta(0, "input_json_delta", '{"q')),
        (
            "openai-responses",
            responses_event(
                {"type": "response.function_call_arguments.delta", "delta": '{"q', "item_id": "f"}
            ),
        ),
    ],
    ids=["chat-args", "chat-start-with-args", "anthropic", "responses"],
)
def test_tool_argument_bytes_are_told_apart_from_text(format_name: str, event: SSEEvent) -> None:
    """Every format reports a non-empty argument fragment as ``Content.TOOL_ARGS``, so the
    time to the first tool-argument byte is measured the same way everywhere."""
    _, content, _ = get_format(format_name).classify(event)
    assert content == Content.TOOL_ARGS
