"""Checking boundary-aware flushing (``flush_boundary``) from what a client receives.

* :func:`misaligned` lists the written text deltas that do not end at a boundary of their
  field's final text. The boundaries come from the library the engine uses
  (``unicode-segmentation-rs``), segmenting the *whole* text once, independently of the
  engine's incremental cutting: :func:`word_boundaries` from its lossless word split;
  :func:`sentence_boundaries` from its sentence split, made lossless (see there);
  :func:`line_boundaries` by string search.
* :func:`replay_timed` drives a coalescer like the pump does, timers included, with the window
  writes given their time (``take(now)``).
* :func:`retext` puts CJK or emoji text into a recorded stream's own envelopes;
  :func:`simulator_events` is the built-in simulator's stream for a format.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Final

import orjson
from unicode_segmentation_rs import split_word_bounds, unicode_sentences

from streamhop.middleware import Coalescer, SSEDecoder, SSEEvent
from streamhop.sidecar.simulate import anthropic, openai_chat, openai_responses
from streamhop.sidecar.simulate.config import SimulatorConfig
from streamhop.sidecar.simulate.request import Generation, parse_request

from ..accumulate import wire_event

Lane = tuple[Any, ...]
Batch = list[SSEEvent]

# --------------------------------------------------------------------------------------------
# Where the boundaries of a whole text are.

_PARA_SEP: Final = "\n\r\x85\u2028\u2029"
# DEVANAGARI VOWEL SIGN AA: Sentence_Break=Extend, yet Alphabetic (see sentence_boundaries).
_ALPHABETIC_EXTEND: Final = "\u093e"


def word_boundaries(text: str) -> set[int]:
    """UAX #29 word boundaries strictly inside ``text`` (code-point offsets)."""
    cuts = set(itertools.accumulate(len(piece) for piece in split_word_bounds(text)))
    cuts.discard(len(text))
    return cuts


def sentence_boundaries(text: str) -> set[int]:
    """UAX #29 sentence boundaries strictly inside ``text`` (code-point offsets).

    The library's sentence split leaves out sentences without a letter or digit, so their
    places would be unknown. A combining sign that is Alphabetic goes after every character but
    the paragraph separators: SB5 attaches it to that character (boundaries do not move) and
    every sentence now has a letter. Sentences of paragraph separators alone are still left
    out; SB4 puts a boundary after every separator (but inside CR LF) anyway. Checked against
    ICU's sentence breaker on random strings when this was written.
    """
    marked = "".join(c if c in _PARA_SEP else c + _ALPHABETIC_EXTEND for c in text)
    back: dict[int, int] = {}
    pos = 0
    for index, char in enumerate(text):
        back[pos] = index
        pos += 1 if char in _PARA_SEP else 2
    back[pos] = len(text)
    cuts = {
        index + 1
        for index, char in enumerate(text)
        if char in _PARA_SEP and not (char == "\r" and text[index + 1 : index + 2] == "\n")
    }
    pos = 0
    for sentence in unicode_sentences(marked):
        while not marked.startswith(sentence, pos):
            assert marked[pos] in _PARA_SEP, (text, pos, sentence)
            pos += 1
        cuts.add(back[pos])
        pos += len(sentence)
        cuts.add(back[pos])
    cuts.discard(0)
    cuts.discard(len(text))
    return cuts


def line_boundaries(text: str) -> set[int]:
    """Positions after a UAX #14 mandatory break (LF, CR not before LF, NEL, VT, FF, LS, PS)."""
    return {
        index + 1
        for index, char in enumerate(text)
        if char in "\n\x0b\x0c\x85\u2028\u2029"
        or (char == "\r" and text[index + 1 : index + 2] != "\n")
    } - {len(text)}


BOUNDARIES: Final[dict[str, Callable[[str], set[int]]]] = {
    "word": word_boundaries,
    "sentence": sentence_boundaries,
    "line": line_boundaries,
}

# --------------------------------------------------------------------------------------------
# Text deltas as a client reads them, by field.

_CHAT_TEXT: Final = ("content", "reasoning_content", "reasoning", "refusal")
_CHAT_DELTA_KEYS: Final = frozenset((*_CHAT_TEXT, "role", "tool_calls"))
_ANTHROPIC_TEXT: Final = {"text_delta": "text", "thinking_delta": "thinking"}
_RESPONSES_TEXT: Final = frozenset(
    (
        "response.output_text.delta",
        "response.refusal.delta",
        "response.reasoning_text.delta",
        "response.reasoning_summary_text.delta",
    )
)


def text_delta(format_name: str, event: SSEEvent) -> tuple[Lane, str] | None:
    """``(lane, text)`` of an event that continues one text field (defined from the provider
    docs, not from the engine), else ``None``."""
    if event.data is None or event.data == "[DONE]":
        return None
    obj = json.loads(event.data)
    if not isinstance(obj, dict):
        return None
    if format_name == "openai-chat":
        choices = obj.get("choices") or []
        if len(choices) != 1 or choices[0].get("finish_reason") is not None:
            return None
        delta = choices[0].get("delta") or {}
        texts = [(k, v) for k, v in delta.items() if k in _CHAT_TEXT and isinstance(v, str) and v]
        if len(texts) != 1 or delta.get("role") or delta.get("tool_calls"):
            return None
        if not delta.keys() <= _CHAT_DELTA_KEYS:
            return None  # a field streamhop does not know: forwarded as it came, never held
        return (choices[0].get("index"), texts[0][0]), texts[0][1]
    if format_name == "anthropic":
        delta = obj.get("delta") or {}
        field = _ANTHROPIC_TEXT.get(delta.get("type"))
        if obj.get("type") != "content_block_delta" or field is None:
            return None
        return (obj.get("index"), field), delta[field]
    if format_name == "openai-responses":
        if obj.get("type") not in _RESPONSES_TEXT:
            return None
        lane = tuple(
            obj.get(k)
            for k in ("type", "item_id", "output_index", "content_index", "summary_index")
        )
        return lane, obj["delta"]
    return None


def lane_deltas(format_name: str, events: Sequence[SSEEvent]) -> dict[Lane, list[str]]:
    """The non-empty text deltas of each field, in order."""
    lanes: dict[Lane, list[str]] = {}
    for event in events:
        found = text_delta(format_name, event)
        if found is not None and found[1]:
            lanes.setdefault(found[0], []).append(found[1])
    return lanes


def misaligned(format_name: str, events: Sequence[SSEEvent], boundary: str) -> list[str]:
    """Written text deltas that do not end at a ``boundary`` of their field's whole text.

    Exempt, as the feature promises nothing for them: each field's first text delta (the first
    content of every phase goes out at once, never cut), each field's last delta, and a delta
    followed by anything but the next delta of its field (a boundary event writes everything
    held before it).

    Returns:
        One description per misaligned delta (empty: all aligned).
    """
    found = [text_delta(format_name, event) for event in events]
    texts = {lane: "".join(parts) for lane, parts in lane_deltas(format_name, events).items()}
    cuts = {lane: BOUNDARIES[boundary](text) for lane, text in texts.items()}
    done: dict[Lane, int] = {}
    bad: list[str] = []
    for index, item in enumerate(found):
        if item is None or not item[1]:
            continue
        lane, text = item
        first = lane not in done
        end = done.get(lane, 0) + len(text)
        done[lane] = end
        following = found[index + 1] if index + 1 < len(found) else None
        exempt = first or end == len(texts[lane]) or following is None or following[0] != lane
        if not exempt and end not in cuts[lane]:
            whole = texts[lane]
            bad.append(f"{lane}: {whole[max(0, end - 20) : end]!r} | {whole[end : end + 20]!r}")
    return bad


def aligned_cuts(format_name: str, events: Sequence[SSEEvent]) -> int:
    """How many text deltas are followed by the next delta of the same field (the cuts
    :func:`misaligned` checks): a check that found nothing to check proves nothing."""
    found = [text_delta(format_name, event) for event in events]
    return sum(
        1
        for a, b in itertools.pairwise(found)
        if a is not None and b is not None and a[1] and a[0] == b[0]
    )


# --------------------------------------------------------------------------------------------
# Driving a coalescer in simulated time.


def replay_timed(
    coalescer: Coalescer,
    events: Sequence[SSEEvent],
    times: Sequence[float],
    idle_after: float = 0.0,
) -> list[tuple[float, Batch]]:
    """Push ``events`` at ``times`` as the stream pump does: a timer fires at each
    :attr:`Coalescer.deadline` between pushes, a push that makes the coalescer due is written
    at once, every window write is ``take(now)``; after the last push the stream idles
    ``idle_after`` seconds (timers still fire), then ends with ``take()``.

    Returns:
        ``(time written, events)`` per write, in order.
    """
    batches: list[tuple[float, Batch]] = []

    def write(at: float, batch: Batch) -> None:
        if batch:
            batches.append((at, batch))

    def timers(until: float) -> None:
        while (deadline := coalescer.deadline) is not None and deadline <= until:
            assert coalescer.due(deadline), "a deadline that is not due"
            write(deadline, coalescer.take(deadline))
            after = coalescer.deadline
            assert after is None or after > deadline, "a write that left the deadline in place"

    for event, now in zip(events, times, strict=True):
        timers(now)
        coalescer.push(event, now)
        if coalescer.due(now):
            write(now, coalescer.take(now))
    end = (times[-1] if times else 0.0) + idle_after
    timers(end)
    write(end, coalescer.take())
    assert coalescer.take() == []
    return batches


def flat(batches: Sequence[tuple[float, Batch]]) -> list[SSEEvent]:
    """Every written event, in order."""
    return [event for _, batch in batches for event in batch]


def paced(count: int, every: float) -> list[float]:
    """``count`` arrival times ``every`` seconds apart, from 0."""
    return [i * every for i in range(count)]


# --------------------------------------------------------------------------------------------
# Streams with CJK and emoji text.

CJK_TOKENS: Final = (
    "你好",
    "\uff0c",
    "世界",
    "。",
    "今天",
    "天气",
    "很",
    "好",
    "\uff01",
    "我们",
    "去",
    "公园",
    "吧",
    "\uff1f",
    "好的",
    "。",
    "東京",
    "は",
    "晴れ",
    "です",
    "。",
    "明日",
    "も",
    "晴れ",
    "るでしょう",
    "。",
    "\n\n",
    "서울",
    "은",
    " 맑",
    "습니다",
    ". ",
    "「",
    "はい",
    "」",
    "と",
    "言った",
    "。",
)
"""Chinese, Japanese and Korean text in tokens (sentence ends: ideographic full stop, fullwidth
``!`` and ``?``; a paragraph break)."""

EMOJI_TOKENS: Final = (
    "Great",
    " job",
    " 👍",
    "🏽",
    "! The",
    " family",
    " 👨",
    "\u200d👩",
    "\u200d👧",
    " went",
    " to",
    " 🇫",
    "🇷",
    ". It",
    " was",
    " ❤",
    "\ufe0f",
    " and",
    " cafe",
    "\u0301",
    " time",
    "! 🎉",
    "🎉",
    " Party",
    " on",
    " 👩\u200d",
    "💻",
    "?\n",
    "Yes",
    " 😀",
    ". 😀",
    ". Done",
    ".",
)
"""English with emoji: a skin tone, ZWJ families and professions cut between their code points,
a flag cut between its two halves, a variation selector, a combining accent, emoji-only
sentences."""


def retext(format_name: str, events: Sequence[SSEEvent], tokens: Sequence[str]) -> list[SSEEvent]:
    """``events`` with the text of each text delta replaced by the next of ``tokens`` (cycling):
    the provider's own envelopes carrying other text."""
    source = itertools.cycle(tokens)
    out: list[SSEEvent] = []
    for event in events:
        found = text_delta(format_name, event)
        if found is None or not found[1]:
            out.append(event)
            continue
        obj = json.loads(event.data or "")
        token = next(source)
        if format_name == "openai-chat":
            obj["choices"][0]["delta"][found[0][1]] = token
        elif format_name == "anthropic":
            obj["delta"][found[0][1]] = token
        else:
            obj["delta"] = token
        out.append(wire_event(obj, event.event))
    return out


_SIMULATED: Final[dict[str, tuple[Any, Any, Callable[[Any], Generation]]]] = {
    "openai-chat": (openai_chat.LIMIT_KEYS, openai_chat.find_tool, openai_chat.ChatCompletion),
    "anthropic": (anthropic.LIMIT_KEYS, anthropic.find_tool, anthropic.Message),
    "openai-responses": (
        openai_responses.LIMIT_KEYS,
        openai_responses.find_tool,
        openai_responses.Response,
    ),
}


def simulator_events(format_name: str, body: dict[str, Any]) -> list[SSEEvent]:
    """The events ``streamhop simulate`` streams for ``body`` in ``format_name``: its text has
    CJK, ZWJ emoji, flags, combining accents, sentence ends and paragraphs."""
    limit_keys, find_tool, generation = _SIMULATED[format_name]
    request = parse_request(
        {**body, "stream": True},
        SimulatorConfig(),
        limit_keys=limit_keys,
        find_tool=find_tool,
        length_forced=False,
    )
    decoder = SSEDecoder()
    events: list[SSEEvent] = []
    for data, _ in generation(request).events():
        events += decoder.feed(data)
    events += decoder.feed(b"")
    return events


def simulator_bodies() -> Iterator[tuple[str, dict[str, Any]]]:
    """A request per simulated format, long enough for many sentences."""
    messages = [{"role": "user", "content": "tell me about boundaries"}]
    yield "openai-chat", {"model": "sim", "max_tokens": 1500, "messages": messages}
    yield (
        "anthropic",
        {
            "model": "sim",
            "max_tokens": 1500,
            "messages": messages,
            "thinking": {"type": "enabled", "budget_tokens": 1024},
        },
    )
    yield "openai-responses", {"model": "sim", "max_output_tokens": 1500, "input": "boundaries"}


def dumps(obj: Any) -> str:
    """Compact JSON, as an event's data."""
    return orjson.dumps(obj).decode()
