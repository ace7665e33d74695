"""Re-accumulate a stream into the final message a client would build, and replay a coalescer.

The invariant under test (DESIGN.md, "The stream engine"): whatever the timing, a client that
accumulates the re-chunked stream gets the same final message as from the raw stream. "A client"
here is the official SDKs' own accumulators, fed the way the SDKs feed them:

* ``openai-chat``: :class:`openai.lib.streaming.chat.ChatCompletionStreamState` with
  ``ChatCompletionChunk`` models; the SDK stops at ``[DONE]`` and raises on an ``error`` object;
* ``anthropic``: :func:`anthropic.lib.streaming._messages.accumulate_event`, skipping events
  without an ``event:`` name and ``ping`` as the SDK's ``Stream`` does, raising on ``error``;
* ``openai-responses``: :class:`openai.lib.streaming.responses.ResponseStreamState`, events built
  with the SDK's own ``construct_type`` (what its ``Stream`` does).

Each summary also holds a plain-dict accumulation (independent of the SDKs: extra fields such as
Groq's ``delta.reasoning``, DeepSeek's ``reasoning_content``, unknown keys, logprobs) and a
*timeline*: every event that is not a pure continuation delta (a boundary), verbatim, paired
with the plain accumulation at that moment, so the order of boundaries against content is
checked too.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Sequence
from typing import Any, Final

from anthropic.lib.streaming._messages import accumulate_event
from openai import omit
from openai._models import construct_type
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.lib.streaming.responses import ResponseStreamState
from openai.types.chat import ChatCompletionChunk
from openai.types.responses import ResponseStreamEvent
from pydantic import BaseModel

from streamhop.middleware import Coalescer, SSEDecoder, SSEEvent, encode_events

REPLACEMENT_CHARACTER: Final = "\ufffd"

CHAT_TEXT_FIELDS: Final = ("content", "reasoning_content", "reasoning", "refusal")
_CHAT_TOP_KNOWN: Final = frozenset(
    ("id", "object", "created", "model", "system_fingerprint", "choices", "usage", "obfuscation")
)
_CHAT_CHOICE_KNOWN: Final = frozenset(("index", "delta", "logprobs", "finish_reason"))
_CHAT_DELTA_KNOWN: Final = frozenset((*CHAT_TEXT_FIELDS, "role", "tool_calls"))
_ANTHROPIC_DELTA_FIELDS: Final = {
    "text_delta": "text",
    "input_json_delta": "partial_json",
    "thinking_delta": "thinking",
}

Json = Any
Batch = list[SSEEvent]


# --------------------------------------------------------------------------------------------
# Replaying a stream through a coalescer with a fake clock, and what a client then receives.


def replay(
    coalescer: Coalescer,
    events: Sequence[SSEEvent],
    times: Sequence[float],
    write_costs: Sequence[float] = (),
) -> list[tuple[float, Batch]]:
    """Push ``events`` at ``times`` like the stream pump does, with a simulated writer.

    A timer fires at :attr:`Coalescer.deadline` (between pushes); after each push the batch is
    taken when :meth:`Coalescer.due`. A write takes ``write_costs[i]`` seconds (``0`` when the
    list runs out); while it is in flight nothing is taken, so deltas keep merging (a slow
    client). Whatever is held at the end is taken once the writer is free.

    Returns:
        ``(time written, events)`` per downstream write, in order.
    """
    batches: list[tuple[float, Batch]] = []
    busy_until = float("-inf")

    def write(at: float) -> None:
        nonlocal busy_until
        batch = coalescer.take()
        if batch:
            cost = write_costs[len(batches)] if len(batches) < len(write_costs) else 0.0
            batches.append((at, batch))
            busy_until = at + cost

    for event, now in zip(events, times, strict=True):
        deadline = coalescer.deadline
        if deadline is not None:
            at = max(deadline, busy_until)
            if at <= now and coalescer.due(at):
                write(at)
        coalescer.push(event, now)
        if busy_until <= now and coalescer.due(now):
            write(now)
    end = max([*times, busy_until]) if times else 0.0
    write(end)
    assert coalescer.take() == []
    return batches


def wire_bytes(batches: Sequence[tuple[float, Batch]]) -> list[bytes]:
    """The body chunks a client receives: one :func:`encode_events` per write."""
    return [encode_events(batch) for _, batch in batches]


def client_events(chunks: Sequence[bytes]) -> list[SSEEvent]:
    """Decode body chunks (one read each) as a client would, then EOF."""
    decoder = SSEDecoder()
    events: list[SSEEvent] = []
    for chunk in chunks:
        events += decoder.feed(chunk)
    events += decoder.feed(b"")
    assert not decoder.truncated, "the re-chunked stream ends inside an event"
    return events


def rechunk(
    coalescer: Coalescer,
    events: Sequence[SSEEvent],
    times: Sequence[float],
    write_costs: Sequence[float] = (),
) -> list[SSEEvent]:
    """:func:`replay`, encode every write, decode the bytes: the events a client gets."""
    return client_events(wire_bytes(replay(coalescer, events, times, write_costs)))


def replacement_characters(events: Sequence[SSEEvent]) -> list[SSEEvent]:
    """The events whose name, id or data contains U+FFFD (should be none)."""
    return [
        e
        for e in events
        if any(REPLACEMENT_CHARACTER in (f or "") for f in (e.data, e.event, e.id))
    ]


# --------------------------------------------------------------------------------------------
# Accumulation.


def accumulate(format_name: str, events: Sequence[SSEEvent]) -> dict[str, Json]:
    """The final message(s) a client builds from ``events`` of ``format_name``, as JSON data.

    Two streams that give equal summaries are equivalent to a client: same text, reasoning,
    tool-call arguments by index, finish reasons, usage, errors, and the same boundaries in the
    same order relative to the content.
    """
    if format_name == "openai-chat":
        summary = accumulate_openai_chat(events)
    elif format_name == "anthropic":
        summary = accumulate_anthropic(events)
    elif format_name == "openai-responses":
        summary = accumulate_openai_responses(events)
    elif format_name == "sse":
        summary = {"events": [(e.event, e.data, e.id, e.retry) for e in events]}
    else:
        raise ValueError(f"unknown format {format_name!r}")
    summary["timeline"] = boundary_timeline(format_name, events)
    return summary


def _dump(value: Any) -> Json:
    """JSON data of an SDK model (or of lists/dicts of them)."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", warnings=False)
    if isinstance(value, list):
        return [_dump(v) for v in value]
    if isinstance(value, dict):
        return {k: _dump(v) for k, v in value.items()}
    return value


def _loads(event: SSEEvent) -> Json:
    assert event.data is not None
    return json.loads(event.data)


# ---- OpenAI chat completions


def accumulate_openai_chat(events: Sequence[SSEEvent]) -> dict[str, Json]:
    """Accumulate ``chat.completion.chunk`` events with the openai SDK (and a plain dict)."""
    state: ChatCompletionStreamState[Any] = ChatCompletionStreamState()
    plain = PlainChat()
    sdk_events: list[Json] = []
    errors: list[Json] = []
    chunks = 0
    done = False
    for event in events:
        if event.data is None:
            continue
        if event.data.startswith("[DONE]"):
            done = True
            break  # the SDK stops reading here
        obj = _loads(event)
        if obj.get("error"):
            errors.append(obj["error"])  # the SDK raises APIError
            break
        plain.add(obj)
        # built as the SDK's Stream builds it (construct, no validation: providers send values
        # the SDK's literals do not list, such as Groq's service_tier "on_demand")
        chunk = construct_type(type_=ChatCompletionChunk, value=obj)
        for sdk_event in state.handle_chunk(chunk):
            if sdk_event.type.endswith(".done"):
                sdk_events.append(_dump(sdk_event))
        chunks += 1
    return {
        "sdk": _chat_snapshot(state, plain) if chunks else None,
        "sdk_done_events": sdk_events,
        "plain": plain.state(),
        "errors": errors,
        "done": done,
    }


def _label_runs(accumulated: str, values: list[Json]) -> Json:
    """The SDK's accumulation of a label field (gpt-oss ``channel``), told apart from the count.

    The openai SDK concatenates every string field of a delta, so a label that rides on every
    delta accumulates once per *event*: ``"analysisanalysis…"``. streamhop writes it once per
    merged event (docs/rechunking.md), so only the run structure is invariant: the values in
    order, each repeated one or more times. Returns those values when ``accumulated`` is exactly
    such runs of the changes the plain accumulator saw, else the raw string (which then differs).
    """
    labels = [v for v in values if isinstance(v, str)]
    if labels and len(labels) == len(values):
        pattern = "".join(f"(?:{re.escape(v)})+" for v in labels if v)
        if re.fullmatch(pattern, accumulated):
            return {"label_runs": labels}
    return accumulated


def _chat_snapshot(state: ChatCompletionStreamState[Any], plain: PlainChat) -> dict[str, Json]:
    snap = state.current_completion_snapshot
    choices = []
    for choice in snap.choices:
        message = choice.message
        extra = message.model_extra or {}
        choices.append(
            {
                "index": choice.index,
                "finish_reason": choice.finish_reason,
                "role": message.role,
                "content": message.content,
                "refusal": message.refusal,
                "reasoning": extra.get("reasoning"),
                "reasoning_content": extra.get("reasoning_content"),
                # every other extra field as the SDK accumulated it (it concatenates strings:
                # label fields are compared by their runs, see _label_runs)
                "extra": {
                    k: _label_runs(v, _delta_extras(plain, choice.index, k))
                    if isinstance(v, str)
                    else v
                    for k, v in extra.items()
                    if k not in CHAT_TEXT_FIELDS
                },
                "tool_calls": [
                    {
                        "index": getattr(call, "index", None),
                        "id": call.id,
                        "type": call.type,
                        "name": call.function.name,
                        "arguments": call.function.arguments,
                    }
                    for call in message.tool_calls or []
                ],
                "logprobs": _dump(choice.logprobs),
            }
        )
    return {
        "id": snap.id,
        "model": snap.model,
        "created": snap.created,
        "system_fingerprint": snap.system_fingerprint,
        "usage": _dump(snap.usage),
        "choices": choices,
    }


def _delta_extras(plain: PlainChat, index: int, key: str) -> list[Json]:
    """The changes of value of delta field ``key`` of choice ``index`` (plain accumulator)."""
    choice = plain.choices.get(index)
    return [] if choice is None else list(choice["extras"].get("delta." + key, []))


def _note_extra(seen: dict[str, list[Json]], key: str, value: Json) -> None:
    """Record an unknown field's value, collapsing consecutive repeats.

    A merged event stands for several equal-valued ones, so only changes of value are
    invariant under merging (which never merges events whose unknown fields differ).
    """
    values = seen.setdefault(key, [])
    if not values or values[-1] != value:
        values.append(value)


class PlainChat:
    """A plain-dict accumulator of chat chunks: every text field, tool calls by index."""

    def __init__(self) -> None:
        self.choices: dict[int, dict[str, Json]] = {}
        self.usage: list[Json] = []
        self.extras: dict[str, list[Json]] = {}

    def add(self, obj: dict[str, Json]) -> None:
        """Accumulate one parsed chunk."""
        if obj.get("usage") is not None:
            self.usage.append(obj["usage"])
        for key, value in obj.items():
            if key not in _CHAT_TOP_KNOWN:
                _note_extra(self.extras, key, value)
        for choice in obj.get("choices") or []:
            acc = self.choices.setdefault(
                choice["index"],
                {
                    "role": None,
                    "text": {},
                    "tool_calls": {},
                    "finish_reason": None,
                    "logprobs": {"content": [], "refusal": []},
                    "extras": {},
                },
            )
            for key, value in choice.items():
                if key not in _CHAT_CHOICE_KNOWN:
                    _note_extra(acc["extras"], "choice." + key, value)
            if choice.get("finish_reason") is not None:
                acc["finish_reason"] = choice["finish_reason"]
            logprobs = choice.get("logprobs")
            if logprobs:
                for key in ("content", "refusal"):
                    acc["logprobs"][key].extend(logprobs.get(key) or [])
            delta = choice.get("delta") or {}
            if delta.get("role") is not None:
                acc["role"] = delta["role"]
            for field in CHAT_TEXT_FIELDS:
                text = delta.get(field)
                if isinstance(text, str):
                    acc["text"][field] = acc["text"].get(field, "") + text
                elif text is not None:  # Mistral's content parts (a list): kept whole, in order
                    acc["text"].setdefault(field + "[]", []).append(text)
            for key, value in delta.items():
                if key not in _CHAT_DELTA_KNOWN:
                    _note_extra(acc["extras"], "delta." + key, value)
            for call in delta.get("tool_calls") or []:
                slot = acc["tool_calls"].setdefault(
                    call["index"], {"id": None, "type": None, "name": None, "arguments": ""}
                )
                for key in ("id", "type"):
                    if call.get(key):
                        slot[key] = call[key]
                function = call.get("function") or {}
                if function.get("name"):
                    slot["name"] = function["name"]
                slot["arguments"] += function.get("arguments") or ""

    def state(self) -> dict[str, Json]:
        """A deep copy of what was accumulated so far."""
        return copy.deepcopy({"choices": self.choices, "usage": self.usage, "extras": self.extras})


# ---- Anthropic messages


def accumulate_anthropic(events: Sequence[SSEEvent]) -> dict[str, Json]:
    """Accumulate Anthropic Messages events with the anthropic SDK (and a plain dict)."""
    snapshot: Any = None
    json_bufs: dict[int, bytes] = {}
    plain = PlainAnthropic()
    errors: list[Json] = []
    for event in events:
        # anthropic's Stream: skip `ping` and unnamed events, raise on `error`.
        if event.event in (None, "ping") or not event.data:
            continue
        obj = _loads(event)
        assert obj["type"] == event.event, "event name and JSON type disagree"
        if event.event == "error":
            errors.append(obj)
            break
        plain.add(obj)
        snapshot = accumulate_event(event=obj, current_snapshot=snapshot, json_bufs=json_bufs)
    return {
        "sdk": _dump(snapshot),
        "sdk_tool_json": {index: buf.decode("utf-8") for index, buf in json_bufs.items()},
        "plain": plain.state(),
        "errors": errors,
    }


class PlainAnthropic:
    """A plain-dict accumulator of Anthropic events: blocks by index, stop reason, usage."""

    def __init__(self) -> None:
        self.blocks: dict[int, dict[str, Json]] = {}
        self.message: Json = None
        self.deltas: list[Json] = []

    def add(self, obj: dict[str, Json]) -> None:
        """Accumulate one parsed event."""
        kind = obj["type"]
        if kind == "message_start":
            self.message = obj["message"]
        elif kind == "content_block_start":
            self.blocks[obj["index"]] = {"start": obj["content_block"], "deltas": {}}
        elif kind == "content_block_delta":
            delta = obj["delta"]
            block = self.blocks.setdefault(obj["index"], {"start": None, "deltas": {}})
            field = _ANTHROPIC_DELTA_FIELDS.get(delta["type"])
            if field is not None:
                key = f"{delta['type']}.{field}"
                block["deltas"][key] = block["deltas"].get(key, "") + delta[field]
            else:  # signature_delta, citations_delta, ...: kept whole, in order
                block["deltas"].setdefault("other", []).append(delta)
        elif kind == "message_delta":
            self.deltas.append({k: v for k, v in obj.items() if k != "type"})

    def state(self) -> dict[str, Json]:
        """A deep copy of what was accumulated so far."""
        return copy.deepcopy(
            {"message": self.message, "blocks": self.blocks, "message_deltas": self.deltas}
        )


# ---- OpenAI responses


def accumulate_openai_responses(events: Sequence[SSEEvent]) -> dict[str, Json]:
    """Accumulate Responses API events with the openai SDK (and a plain dict)."""
    state: ResponseStreamState[Any] = ResponseStreamState(input_tools=omit, text_format=omit)
    plain = PlainResponses()
    texts: dict[str, str] = {}
    arguments: dict[str, str] = {}
    sdk_events: list[Json] = []
    completed: Json = None
    errors: list[Json] = []
    for event in events:
        if event.data is None:
            continue
        if event.data.startswith("[DONE]"):
            break  # the SDK's Stream stops reading here (OpenRouter sends it after completed)
        obj = _loads(event)
        if obj.get("type") == "error":
            errors.append(obj)
            break
        plain.add(obj)
        raw = construct_type(type_=ResponseStreamEvent, value=obj)
        for out in state.handle_event(raw):  # type: ignore[arg-type]
            if out.type == "response.output_text.delta":
                texts[f"{out.output_index}/{out.content_index}"] = out.snapshot
            elif out.type == "response.function_call_arguments.delta":
                arguments[str(out.output_index)] = out.snapshot
            elif out.type == "response.completed":
                completed = _responses_final(out.response)
            elif out.type.endswith(".done"):
                sdk_events.append(_dump(out))
    return {
        "sdk_text": texts,
        "sdk_arguments": arguments,
        "sdk_done_events": sdk_events,
        "sdk_completed": completed,
        "plain": plain.state(),
        "errors": errors,
    }


def _responses_final(response: Any) -> dict[str, Json]:
    output = []
    for item in response.output:
        entry: dict[str, Json] = {"type": item.type, "id": item.id}
        if item.type == "message":
            entry["text"] = [getattr(part, "text", None) for part in item.content]
        elif item.type == "function_call":
            entry["name"] = item.name
            entry["arguments"] = item.arguments
        output.append(entry)
    return {
        "id": response.id,
        "status": response.status,
        "output": output,
        "usage": _dump(response.usage),
    }


class PlainResponses:
    """A plain-dict accumulator of Responses events: every ``*.delta`` by position."""

    def __init__(self) -> None:
        self.deltas: dict[str, str] = {}
        self.logprobs: dict[str, list[Json]] = {}
        self.last_sequence_number: int | None = None

    def add(self, obj: dict[str, Json]) -> None:
        """Accumulate one parsed event."""
        if "sequence_number" in obj:
            self.last_sequence_number = obj["sequence_number"]
        kind = obj["type"]
        if not kind.endswith(".delta") or not isinstance(obj.get("delta"), str):
            return
        key = "/".join(
            str(obj.get(k))
            for k in ("type", "item_id", "output_index", "content_index", "summary_index")
        )
        self.deltas[key] = self.deltas.get(key, "") + obj["delta"]
        if obj.get("logprobs"):
            self.logprobs.setdefault(key, []).extend(obj["logprobs"])

    def state(self) -> dict[str, Json]:
        """A deep copy of what was accumulated so far."""
        return copy.deepcopy(
            {
                "deltas": self.deltas,
                "logprobs": self.logprobs,
                "last_sequence_number": self.last_sequence_number,
            }
        )


# ---- Boundaries


def is_continuation(format_name: str, event: SSEEvent) -> bool:
    """True when ``event`` only continues text/arguments (the only events that may be merged).

    Defined here from the provider docs, independently of the engine's own classification.
    """
    if event.data is None or event.retry is not None:
        return False
    try:
        obj = json.loads(event.data)
    except ValueError:
        return False
    if not isinstance(obj, dict):
        return False
    if format_name == "openai-chat":
        choices = obj.get("choices")
        if not isinstance(choices, list) or not choices or obj.get("usage") is not None:
            return False
        for choice in choices:
            delta = choice.get("delta")
            if choice.get("finish_reason") is not None or not isinstance(delta, dict):
                return False
            if delta.get("role") is not None:
                return False
            for call in delta.get("tool_calls") or []:
                if call.get("id") or (call.get("function") or {}).get("name"):
                    return False
        return True
    if format_name == "anthropic":
        delta = obj.get("delta")
        return (
            obj.get("type") == "content_block_delta"
            and isinstance(delta, dict)
            and delta.get("type") in _ANTHROPIC_DELTA_FIELDS
        )
    if format_name == "openai-responses":
        kind = obj.get("type")
        return isinstance(kind, str) and kind.endswith(".delta")
    return False


def boundary_timeline(format_name: str, events: Sequence[SSEEvent]) -> list[Json]:
    """Every boundary event verbatim, with the plain accumulation reached just before it."""
    plain: PlainChat | PlainAnthropic | PlainResponses | None
    if format_name == "openai-chat":
        plain = PlainChat()
    elif format_name == "anthropic":
        plain = PlainAnthropic()
    elif format_name == "openai-responses":
        plain = PlainResponses()
    else:
        plain = None
    timeline: list[Json] = []
    for event in events:
        if plain is not None and is_continuation(format_name, event):
            plain.add(_loads(event))
            continue
        timeline.append(
            {
                "event": [event.event, event.data, event.id, event.retry],
                "before": None if plain is None else plain.state(),
            }
        )
        if plain is not None and event.data is not None:
            try:
                obj = json.loads(event.data)
            except ValueError:
                continue
            if isinstance(obj, dict) and "error" not in obj and obj.get("type") != "error":
                plain.add(obj)
    return timeline


# --------------------------------------------------------------------------------------------
# Building events as an upstream would send them.


def wire_event(obj: Json, event: str | None = None, *, ascii_only: bool = False) -> SSEEvent:
    """``obj`` as JSON data, framed and decoded again so ``wire_size`` is the real one.

    Raw UTF-8 by default (as OpenAI and Anthropic send it); ``ascii_only`` uses ``\\uXXXX``.
    """
    data = obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=ascii_only)
    (decoded,) = client_events([encode_events([SSEEvent(data=data, event=event)])])
    return decoded


CHAT_HEADER: Final = {
    "id": "chatcmpl-test",
    "object": "chat.completion.chunk",
    "created": 1727346180,
    "model": "test-model",
    "system_fingerprint": "fp_test",
}


def chat_chunk(
    delta: dict[str, Json] | None = None,
    finish_reason: str | None = None,
    *,
    choices: list[Json] | None = None,
    logprobs: Json = None,
    **top: Json,
) -> SSEEvent:
    """One ``chat.completion.chunk`` event with one choice (or ``choices``) and extra fields."""
    if choices is None:
        choices = [
            {
                "index": 0,
                "delta": {} if delta is None else delta,
                "logprobs": logprobs,
                "finish_reason": finish_reason,
            }
        ]
    return wire_event({**CHAT_HEADER, "choices": choices, **top})


def tool_start(index: int, name: str, arguments: str = "", call_id: str | None = None) -> Json:
    """A ``tool_calls`` entry that announces a call (``id`` and ``function.name``)."""
    return {
        "index": index,
        "id": call_id or f"call_{index}",
        "type": "function",
        "function": {"name": name, "arguments": arguments},
    }


def tool_args(index: int, arguments: str) -> Json:
    """A ``tool_calls`` entry that continues a call's arguments."""
    return {"index": index, "function": {"arguments": arguments}}


def anthropic_event(obj: dict[str, Json]) -> SSEEvent:
    """An Anthropic event, named by its ``type`` as the API does."""
    return wire_event(obj, obj["type"])


def anthropic_delta(index: int, kind: str, text: str) -> SSEEvent:
    """A ``content_block_delta`` of ``kind`` (``text_delta``, ``thinking_delta``, ...)."""
    field = _ANTHROPIC_DELTA_FIELDS.get(kind, "signature")
    return anthropic_event(
        {"type": "content_block_delta", "index": index, "delta": {"type": kind, field: text}}
    )


def responses_event(obj: dict[str, Json]) -> SSEEvent:
    """A Responses API event, named by its ``type`` as the API does."""
    return wire_event(obj, obj["type"])
