"""Deterministic output text: the tokens the fake model "generates".

A token is a short piece of text, usually a word with its leading space, sometimes a word piece,
punctuation or a paragraph break, as a BPE tokenizer would cut it. The sequence depends only on the
simulator seed and the prompt (:func:`text_seed`), never on earlier requests, so the same request
sent directly and through a proxy yields the same text; and a longer answer extends a shorter one.

Every sixth token (indices 2, 8, 14, ...) is multi-byte UTF-8 from :data:`MULTIBYTE`: CJK, accented
Latin, a combining accent (``e`` + U+0301), ZWJ emoji sequences, a flag, variation selectors and
"°C", so a proxy that decodes a code point or grapheme split across reads gets caught.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator, Mapping
from itertools import islice
from typing import Any

import orjson

#: Multi-byte tokens, each with the leading space a tokenizer would keep (or a suffix piece).
MULTIBYTE: tuple[str, ...] = (
    " 東京",
    " 日本語",
    "の",
    " 中文",
    " 한국어",
    " café",
    " naïve",
    " Zürich",
    " São Paulo",
    " cafe\u0301",  # e + COMBINING ACUTE ACCENT
    " re\u0301sume\u0301",
    " 👩\u200d💻",  # WOMAN + ZWJ + LAPTOP
    " 👨\u200d👩\u200d👧",
    " ❤\ufe0f",  # HEAVY BLACK HEART + VARIATION SELECTOR-16
    " ☀\ufe0f",
    " 👍🏽",
    " 🇫🇷",
    " 21°C",
    "°C",
    " Ελληνικά",
    " привет",
    " क्षत्रिय",
    " Œuvre",
    " ñandú",
)

_WORDS: tuple[str, ...] = (
    " the",
    " a",
    " of",
    " and",
    " to",
    " in",
    " is",
    " it",
    " for",
    " with",
    " on",
    " that",
    " stream",
    " token",
    " proxy",
    " event",
    " buffer",
    " chunk",
    " model",
    " answer",
    " fast",
    " river",
    " light",
    " weather",
    " today",
    " warm",
    " city",
    " bridge",
    " quick",
    " brown",
    " fox",
    " jumps",
    " over",
    " lazy",
    " dog",
    " network",
    " latency",
    " provider",
    " client",
    " server",
    " byte",
    " window",
    " flush",
    " merge",
    " order",
    " final",
    " message",
    " careful",
)

_PIECES: tuple[str, ...] = ("ing", "ed", "s", "ly", "er", ",", ".", "!", "?", ";", ":", "'s")

_MULTIBYTE_EVERY = 6
_MULTIBYTE_PHASE = 2


def text_seed(seed: int, prompt: bytes) -> int:
    """Derive the text seed of one request from the simulator seed and the request's prompt.

    Args:
        seed: the simulator seed (``SimulatorConfig.seed``).
        prompt: the request's canonical prompt bytes (:func:`prompt_bytes`).

    Returns:
        A 64-bit unsigned integer.
    """
    return int.from_bytes(seeded_digest(seed, prompt, 8), "big")


def seeded_digest(seed: int, data: bytes, size: int) -> bytes:
    """Return a ``size``-byte BLAKE2b digest of ``data`` under the simulator ``seed``."""
    return hashlib.blake2b(str(seed).encode() + b"\0" + data, digest_size=size).digest()


def prompt_bytes(body: Mapping[str, Any]) -> bytes:
    """Return the canonical bytes of a request's prompt.

    The prompt is whatever of ``system``, ``instructions``, ``messages`` and ``input`` the body
    holds (Anthropic, Responses and Chat Completions name it differently), serialized with sorted
    keys so that re-encoding the JSON (a proxy's) does not change the text.
    """
    parts = [body.get(key) for key in ("system", "instructions", "messages", "input")]
    return orjson.dumps(parts, option=orjson.OPT_SORT_KEYS)


def prompt_tokens(prompt: bytes) -> int:
    """Estimate the prompt's token count: one per 4 bytes of canonical prompt, at least 1."""
    return max(1, len(prompt) // 4)


def iter_tokens(seed: int) -> Iterator[str]:
    """Yield an endless deterministic token sequence.

    Args:
        seed: a text seed from :func:`text_seed`.

    Yields:
        Tokens; ``"".join`` of the first ``n`` is the answer of length ``n``.
    """
    rng = random.Random(seed)
    pick = rng.choice
    draw = rng.random
    index = 0
    while True:
        if index % _MULTIBYTE_EVERY == _MULTIBYTE_PHASE:
            yield pick(MULTIBYTE)
        else:
            roll = draw()
            if roll < 0.02 and index > 0:
                yield "\n\n"
            elif roll < 0.17 and index > 0:
                yield pick(_PIECES)
            else:
                word = pick(_WORDS)
                yield word[1:].capitalize() if index == 0 else word
        index += 1


def event_slices(count: int, tokens_per_event: float) -> Iterator[tuple[int, int]]:
    """Group ``count`` tokens (or argument fragments) into successive content events.

    Event ``i`` carries ``floor((i + 1) * r) - floor(i * r)`` tokens with ``r = tokens_per_event``,
    so a fractional rate (2000 tokens/s at 300 events/s) is met exactly over time.

    Args:
        count: total tokens.
        tokens_per_event: mean tokens per event, at least 1.

    Yields:
        ``(start, stop)`` token index ranges, one per event, covering ``range(count)`` in order.
    """
    taken = 0
    event = 0
    while taken < count:
        event += 1
        upto = min(count, int(event * tokens_per_event))
        if upto > taken:
            yield taken, upto
            taken = upto


def event_texts(tokens: Iterator[str], count: int, tokens_per_event: float) -> Iterator[str]:
    """Yield the text of successive content events: ``count`` tokens as :func:`event_slices` groups.

    Args:
        tokens: the token source (:func:`iter_tokens`), consumed lazily.
        count: total tokens to take.
        tokens_per_event: mean tokens per event, at least 1.

    Yields:
        One non-empty string per event.
    """
    for start, stop in event_slices(count, tokens_per_event):
        yield "".join(islice(tokens, stop - start))


def answer_text(seed: int, count: int) -> str:
    """Return the whole answer of ``count`` tokens for a text seed (the non-streaming body)."""
    return "".join(islice(iter_tokens(seed), count))


def event_count(count: int, tokens_per_event: float) -> int:
    """Return how many events :func:`event_slices` makes of ``count`` tokens."""
    return sum(1 for _ in event_slices(count, tokens_per_event))
