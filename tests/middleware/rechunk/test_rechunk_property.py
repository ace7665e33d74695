"""The engine's invariant, property-tested (DESIGN.md, "The stream engine", Invariant).

Whatever the timing (push times, a writer that is slow or takes at arbitrary moments, any
``flush_interval`` / ``max_flush_bytes``, passthrough or not), a client that accumulates the
re-chunked stream gets the same final message as from the raw stream: same text, reasoning,
tool-call arguments by index, finish reasons, usage, and every boundary in the same order and
at the same point of the content. The re-chunked events are encoded and decoded again first,
so what is checked is the bytes a client receives; accumulation uses the official SDKs.

Examples are derandomized and no example database is kept, so a run is deterministic.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamhop.middleware import Coalescer, SSEEvent

from ..accumulate import (
    CHAT_TEXT_FIELDS,
    accumulate,
    anthropic_delta,
    anthropic_event,
    chat_chunk,
    client_events,
    is_continuation,
    replacement_characters,
    replay,
    responses_event,
    tool_args,
    tool_start,
    wire_bytes,
    wire_event,
)

PROPERTY = settings(
    deadline=None,
    max_examples=120,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

Draw = Callable[[st.SearchStrategy[Any]], Any]

# Characters that stress UTF-8 framing and JSON: 2/3/4-byte sequences, ZWJ emoji parts,
# combining marks, JSON escapes, a NUL, line separators SSE must not split on.
_SPECIAL = list(
    "°éß中文字速한국\u0301\u0308\u094d\u200d\ufe0f\U0001f468\U0001f469\U0001f3fd\U0001f308"
    '\U0001f1eb\U0001f1f7\U00010348\U0010ffff\n\r\t"\\/ \x00\u2028\u2029\x85'
)
CHARS = st.sampled_from(_SPECIAL) | st.characters(blacklist_categories=("Cs",))
PIECE = st.text(CHARS, max_size=6)
NONEMPTY_PIECE = st.text(CHARS, min_size=1, max_size=6)


def pieces(draw: Draw, most: int = 16) -> list[str]:
    """Up to ``most`` text pieces (the count drawn uniformly, not hypothesis' short lists)."""
    count = draw(st.integers(0, most))
    result: list[str] = draw(st.lists(PIECE, min_size=count, max_size=count))
    return result


def split_text(draw: Draw, text: str, first_empty: bool = False) -> list[str]:
    """``text`` cut at random code-point positions (consecutive pieces joined back = text)."""
    count = draw(st.integers(0, 16))
    cuts = sorted(set(draw(st.lists(st.integers(0, len(text)), min_size=count, max_size=count))))
    bounds = [0, *cuts, len(text)]
    pieces = [text[a:b] for a, b in itertools.pairwise(bounds)]
    return ([""] if first_empty else []) + pieces


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**12), 10**12)
    | st.floats(allow_nan=False, allow_infinity=False, width=32)
    | st.text(CHARS, max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(CHARS, max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)
JSON_OBJECTS = st.dictionaries(st.text(CHARS, max_size=5), JSON_VALUES, max_size=4)


# ----------------------------------------------------------------------------------------------
# Random streams


@st.composite
def chat_streams(draw: Draw) -> list[SSEEvent]:
    """Runs of content, reasoning, refusal, tool-call arguments (several calls, by index),
    logprobs, obfuscation and unknown fields in a random interleaving with tool-call starts and
    mid-stream usage; then maybe a finish_reason, a usage chunk and ``[DONE]``."""
    top: dict[str, Any] = {}
    if draw(st.booleans()):
        top["x_groq"] = {"id": "req_1"}
    events: list[SSEEvent] = []
    if draw(st.booleans()):
        events.append(chat_chunk({"role": "assistant", "content": draw(st.none() | PIECE)}, **top))
    calls = 0
    count = draw(st.integers(0, 24))  # hypothesis' own list sizes stay short
    ops = draw(
        st.lists(
            st.sampled_from(
                [
                    "text",
                    "text",
                    "text",
                    "tool_start",
                    "tool_args",
                    "tool_args",
                    "logprobs",
                    "obfuscated",
                    "unknown",
                    "empty",
                    "usage",
                ]
            ),
            min_size=count,
            max_size=count,
        )
    )
    for op in ops:
        # Deltas come in runs of the same kind, as providers send them (what gets merged).
        run = draw(st.integers(1, 8))
        if op == "text":
            field = draw(st.sampled_from(CHAT_TEXT_FIELDS))
            for _ in range(run):
                events.append(chat_chunk({field: draw(PIECE)}, **top))
        elif op == "tool_start":
            args = draw(st.sampled_from(["", "{", '{"a": 1}']))
            name = draw(st.sampled_from(["get_weather", "search", "计算"]))
            events.append(chat_chunk({"tool_calls": [tool_start(calls, name, args)]}, **top))
            calls += 1
        elif op == "tool_args" and calls:
            index = draw(st.integers(0, calls - 1))
            for _ in range(run):
                events.append(chat_chunk({"tool_calls": [tool_args(index, draw(PIECE))]}, **top))
        elif op == "logprobs":
            for _ in range(run):
                piece = draw(NONEMPTY_PIECE)
                token = {
                    "token": piece,
                    "logprob": -0.5,
                    "bytes": list(piece.encode()),
                    "top_logprobs": [],
                }
                events.append(
                    chat_chunk(
                        {"content": piece}, logprobs={"content": [token], "refusal": None}, **top
                    )
                )
        elif op == "obfuscated":
            for _ in range(run):
                pad = draw(st.text("abcdefXYZ0123", max_size=8))
                events.append(chat_chunk({"content": draw(PIECE)}, obfuscation=pad, **top))
        elif op == "unknown":
            channel = draw(st.sampled_from(["analysis", "final"]))
            for _ in range(run):
                events.append(chat_chunk({"reasoning": draw(PIECE), "channel": channel}, **top))
        elif op == "empty":
            events.append(chat_chunk({}, **top))
        elif op == "usage":  # mid-stream usage (vLLM's continuous usage stats)
            n = draw(st.integers(0, 10**6))
            events.append(
                chat_chunk(
                    choices=[],
                    usage={"prompt_tokens": 3, "completion_tokens": n, "total_tokens": n + 3},
                    **top,
                )
            )
    # A choice ends with its finish_reason (sometimes on a chunk with text); only usage and
    # [DONE] follow it. (The SDK's "done" events fire from there on.)
    if draw(st.booleans()):
        reason = draw(st.sampled_from(["stop", "length", "tool_calls", "content_filter"]))
        events.append(chat_chunk({"content": draw(st.none() | PIECE)}, reason, **top))
    if draw(st.booleans()):
        usage = {"prompt_tokens": 3, "completion_tokens": 9, "total_tokens": 12}
        events.append(chat_chunk(choices=[], usage=usage, **top))
    if draw(st.booleans()):
        events.append(SSEEvent(data="[DONE]"))
    return events


@st.composite
def anthropic_streams(draw: Draw) -> list[SSEEvent]:
    """Text, thinking (with signature) and tool_use blocks whose JSON input arrives cut
    anywhere, pings anywhere, a stop reason and usage; sometimes an error at the end."""
    body: list[SSEEvent] = []
    count = draw(st.integers(0, 4))
    kinds = draw(
        st.lists(st.sampled_from(["text", "thinking", "tool_use"]), min_size=count, max_size=count)
    )
    for index, kind in enumerate(kinds):
        if kind == "text":
            block: dict[str, Any] = {"type": "text", "text": ""}
            deltas = [anthropic_delta(index, "text_delta", p) for p in pieces(draw)]
        elif kind == "thinking":
            block = {"type": "thinking", "thinking": "", "signature": ""}
            deltas = [anthropic_delta(index, "thinking_delta", p) for p in pieces(draw)]
            deltas.append(anthropic_delta(index, "signature_delta", "EqQBCgIYAhIM"))
        else:
            block = {"type": "tool_use", "id": f"toolu_{index}", "name": "lookup", "input": {}}
            document = json.dumps(draw(JSON_OBJECTS), ensure_ascii=draw(st.booleans()))
            deltas = [
                anthropic_delta(index, "input_json_delta", p)
                for p in split_text(draw, document, first_empty=draw(st.booleans()))
            ]
        body.append(
            anthropic_event({"type": "content_block_start", "index": index, "content_block": block})
        )
        body += deltas
        body.append(anthropic_event({"type": "content_block_stop", "index": index}))
    pings = draw(st.lists(st.integers(0, len(body)), max_size=4))
    for at in sorted(pings, reverse=True):
        body.insert(at, anthropic_event({"type": "ping"}))
    start = anthropic_event(
        {
            "type": "message_start",
            "message": {
                "id": "msg_1",
                "type": "message",
                "role": "assistant",
                "model": "claude",
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": 12, "output_tokens": 1},
            },
        }
    )
    events = [start, *body]
    if draw(st.booleans()):
        events.append(
            anthropic_event(
                {
                    "type": "message_delta",
                    "delta": {
                        "stop_reason": draw(
                            st.sampled_from(["end_turn", "tool_use", "max_tokens"])
                        ),
                        "stop_sequence": None,
                    },
                    "usage": {"output_tokens": draw(st.integers(0, 5000))},
                }
            )
        )
        events.append(anthropic_event({"type": "message_stop"}))
    elif draw(st.booleans()):
        events.append(
            anthropic_event(
                {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
            )
        )
    return events


@st.composite
def responses_streams(draw: Draw) -> list[SSEEvent]:
    """Messages (output_text deltas, logprobs, obfuscation), function calls (argument
    deltas) and reasoning summaries, each fully opened and closed, then response.completed."""
    numbered = draw(st.booleans())
    raw: list[dict[str, Any]] = []
    output: list[dict[str, Any]] = []
    response = {
        "id": "resp_1",
        "object": "response",
        "created_at": 1,
        "model": "gpt",
        "status": "in_progress",
        "output": [],
    }
    raw.append({"type": "response.created", "response": response})
    raw.append({"type": "response.in_progress", "response": response})
    count = draw(st.integers(0, 3))
    kinds = draw(
        st.lists(
            st.sampled_from(["message", "function_call", "reasoning"]),
            min_size=count,
            max_size=count,
        )
    )
    for index, kind in enumerate(kinds):
        if kind == "message":
            item_id = f"msg_{index}"
            item = {
                "type": "message",
                "id": item_id,
                "role": "assistant",
                "status": "in_progress",
                "content": [],
            }
            raw.append({"type": "response.output_item.added", "output_index": index, "item": item})
            part = {"type": "output_text", "text": "", "annotations": []}
            pos = {"item_id": item_id, "output_index": index, "content_index": 0}
            raw.append({"type": "response.content_part.added", **pos, "part": part})
            text = ""
            for piece in pieces(draw):
                delta: dict[str, Any] = {
                    "type": "response.output_text.delta",
                    **pos,
                    "delta": piece,
                }
                if draw(st.booleans()):
                    delta["logprobs"] = (
                        [{"token": piece, "logprob": -0.1, "bytes": [], "top_logprobs": []}]
                        if piece
                        else []
                    )
                if draw(st.booleans()):
                    delta["obfuscation"] = draw(st.text("abcXYZ", max_size=6))
                raw.append(delta)
                text += piece
            raw.append({"type": "response.output_text.done", **pos, "text": text})
            done_part = {**part, "text": text}
            raw.append({"type": "response.content_part.done", **pos, "part": done_part})
            final = {**item, "status": "completed", "content": [done_part]}
        elif kind == "function_call":
            item_id = f"fc_{index}"
            item = {
                "type": "function_call",
                "id": item_id,
                "call_id": f"call_{index}",
                "name": "get_capital",
                "arguments": "",
                "status": "in_progress",
            }
            raw.append({"type": "response.output_item.added", "output_index": index, "item": item})
            document = json.dumps(draw(JSON_OBJECTS), ensure_ascii=draw(st.booleans()))
            for piece in split_text(draw, document):
                raw.append(
                    {
                        "type": "response.function_call_arguments.delta",
                        "item_id": item_id,
                        "output_index": index,
                        "delta": piece,
                    }
                )
            raw.append(
                {
                    "type": "response.function_call_arguments.done",
                    "item_id": item_id,
                    "output_index": index,
                    "arguments": document,
                }
            )
            final = {**item, "status": "completed", "arguments": document}
        else:
            item_id = f"rs_{index}"
            item = {"type": "reasoning", "id": item_id, "summary": []}
            raw.append({"type": "response.output_item.added", "output_index": index, "item": item})
            text = ""
            for piece in pieces(draw, 8):
                raw.append(
                    {
                        "type": "response.reasoning_summary_text.delta",
                        "item_id": item_id,
                        "output_index": index,
                        "summary_index": 0,
                        "delta": piece,
                    }
                )
                text += piece
            final = {**item, "summary": [{"type": "summary_text", "text": text}]}
        raw.append({"type": "response.output_item.done", "output_index": index, "item": final})
        output.append(final)
    raw.append(
        {
            "type": "response.completed",
            "response": {
                **response,
                "status": "completed",
                "output": output,
                "usage": {"input_tokens": 5, "output_tokens": 7, "total_tokens": 12},
            },
        }
    )
    if numbered:
        raw = [{**obj, "sequence_number": n} for n, obj in enumerate(raw)]
    return [responses_event(obj) for obj in raw]


# ----------------------------------------------------------------------------------------------
# Random timing


@st.composite
def timings(draw: Draw, n: int) -> dict[str, Any]:
    """Push times (bursts and gaps), a writer that is fast, slow or takes at random moments,
    and random coalescer settings."""
    gaps = draw(
        st.lists(
            st.sampled_from([0.0, 0.0, 0.001, 0.005, 0.02, 0.05]) | st.floats(0.0, 0.1),
            min_size=n,
            max_size=n,
        )
    )
    times, now = [], draw(st.floats(0.0, 1e6))
    for gap in gaps:
        now += gap
        times.append(now)
    return {
        "times": times,
        "flush_interval": draw(
            st.sampled_from([0.0, 0.001, 0.005, 0.02, 0.1]) | st.floats(0.0, 0.2)
        ),
        "max_flush_bytes": draw(st.sampled_from([16 * 1024, 1]) | st.integers(1, 4000)),
        "passthrough": draw(st.integers(0, 9)) == 0,
        "writer": draw(st.sampled_from(["pump", "pump", "arbitrary"])),
        "write_costs": draw(
            st.lists(st.sampled_from([0.0, 0.004, 0.03]) | st.floats(0.0, 0.3), max_size=n)
        ),
        "takes": draw(st.lists(st.booleans(), min_size=n, max_size=n)),
    }


def client_receives(events: list[SSEEvent], timing: dict[str, Any]) -> list[SSEEvent]:
    """Re-chunk ``events`` under ``timing``; return what a client decodes from the bytes."""
    coalescer = Coalescer(
        format="auto",
        flush_interval=timing["flush_interval"],
        max_flush_bytes=timing["max_flush_bytes"],
        passthrough=timing["passthrough"],
    )
    if timing["writer"] == "pump":
        batches = replay(coalescer, events, timing["times"], timing["write_costs"])
    else:
        # A writer that takes whatever is held at arbitrary moments, due or not.
        batches = []
        for event, now, take in zip(events, timing["times"], timing["takes"], strict=True):
            coalescer.push(event, now)
            if take:
                batches.append((now, coalescer.take()))
        batches.append((timing["times"][-1] if events else 0.0, coalescer.take()))
        batches = [(at, batch) for at, batch in batches if batch]
    assert coalescer.events_in == len(events)
    assert coalescer.events_out == sum(len(batch) for _, batch in batches) <= len(events)
    if timing["passthrough"]:
        assert [e for _, batch in batches for e in batch] == events
    return client_events(wire_bytes(batches))


def check_invariant(format_name: str, events: list[SSEEvent], timing: dict[str, Any]) -> None:
    out = client_receives(events, timing)
    assert replacement_characters(out) == []
    # Boundaries are forwarded verbatim and in order.
    boundaries = [(e.event, e.data) for e in events if not is_continuation(format_name, e)]
    assert [(e.event, e.data) for e in out if not is_continuation(format_name, e)] == boundaries
    # Same final message, and the same content reached at every boundary.
    assert accumulate(format_name, out) == accumulate(format_name, events)


@PROPERTY
@given(data=st.data(), events=chat_streams())
def test_openai_chat_rechunk_is_lossless(data: st.DataObject, events: list[SSEEvent]) -> None:
    events = events or [chat_chunk({"content": "only"})]
    check_invariant("openai-chat", events, data.draw(timings(len(events))))


@PROPERTY
@given(data=st.data(), events=anthropic_streams())
def test_anthropic_rechunk_is_lossless(data: st.DataObject, events: list[SSEEvent]) -> None:
    check_invariant("anthropic", events, data.draw(timings(len(events))))


@PROPERTY
@given(data=st.data(), events=responses_streams())
def test_openai_responses_rechunk_is_lossless(data: st.DataObject, events: list[SSEEvent]) -> None:
    check_invariant("openai-responses", events, data.draw(timings(len(events))))


@settings(PROPERTY, max_examples=60)
@given(
    data=st.data(),
    events=st.lists(
        st.builds(
            lambda d, e: SSEEvent(data=d, event=e),
            st.text(CHARS.filter(lambda c: c != "\r"), max_size=20),
            st.none() | st.sampled_from(["tick", "progress"]),
        )
        | st.builds(lambda i: SSEEvent(data=None, id=str(i)), st.integers(0, 99)),
        min_size=1,
        max_size=30,
    ).filter(
        lambda evs: (
            evs[0].data is not None
            and not evs[0].data.lstrip().startswith(("{", "["))
            and evs[0].event is None
        )
    ),
)
def test_plain_sse_is_never_rewritten(data: st.DataObject, events: list[SSEEvent]) -> None:
    """A stream of no known format: every event reaches the client exactly as it was."""
    raw = client_events(wire_bytes([(0.0, events)]))  # as decoded upstream (wire sizes set)
    out = client_receives(raw, data.draw(timings(len(raw))))
    assert [(e.event, e.data, e.id) for e in out] == [(e.event, e.data, e.id) for e in raw]


def test_strategies_produce_what_they_promise() -> None:
    """The generators above do build interleaved, multi-call, multi-byte streams."""
    found: dict[str, bool] = {"calls": False, "interleaved": False, "multibyte": False}

    @settings(PROPERTY, max_examples=200)
    @given(events=chat_streams())
    def look(events: list[SSEEvent]) -> None:
        indexes = [
            c["index"]
            for e in events
            if e.data and e.data.startswith("{")
            for ch in json.loads(e.data)["choices"]
            for c in ch["delta"].get("tool_calls") or []
        ]
        found["calls"] |= len(set(indexes)) >= 2
        found["interleaved"] |= any(a > b for a, b in itertools.pairwise(indexes))
        found["multibyte"] |= any(len((e.data or "").encode()) != len(e.data or "") for e in events)

    look()
    assert all(found.values()), found
    assert wire_event({"a": "é"}).data == '{"a": "é"}'
