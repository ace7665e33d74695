"""Where text may be cut (:mod:`streamhop.middleware.rechunk.boundary`), property-tested.

* A cut the finders return survives every continuation: it is a boundary of the whole text,
  whatever comes after (segmentation looks ahead, so this is the finders' whole difficulty).
* Any chat stream of any text, at any timing, with any window and wait bound: the final message
  is unchanged; without the wait and size bounds, every written delta but the exempt ones ends at
  a boundary.

Examples are derandomized and no example database is kept, so a run is deterministic.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamhop.middleware import Coalescer, SSEEvent
from streamhop.middleware.rechunk.boundary import (
    FLUSH_BOUNDARIES,
    Finder,
    FlushBoundary,
    finder,
    last_line_boundary,
    last_sentence_boundary,
    last_word_boundary,
)

from ..accumulate import accumulate, chat_chunk, client_events, wire_bytes
from .boundary_support import BOUNDARIES, misaligned, replay_timed

PROPERTY = settings(
    deadline=None,
    max_examples=300,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

# Pieces that exercise the lookahead and lookbehind rules: mid-word and mid-number punctuation
# (WB6/7/11/12), abbreviations and lower-case continuations (SB8), closing punctuation and
# spaces after a full stop (SB9/10), CR LF, ZWJ sequences, flags, combining marks, CJK.
_PIECES = [
    *"abcXYZ 019.,;:!?'\"()[]\n\r\t-",
    "can't",
    "e.g.",
    "etc. ",
    "3.14",
    "U.S.",
    "Mr. Smith",
    "\u00a0",
    "\u2029",
    "\x85",
    "\u2028",
    "\u0301",
    "\u200d",
    "\ufe0f",
    "\U0001f468",
    "\U0001f469",
    "\U0001f3fd",
    "\U0001f1eb",
    "\U0001f1f7",
    "\U0001f389",
    "你好",
    "。",
    "\uff01",
    "\uff1f",
    "「",
    "」",
    "東京",
    "カタカナ",
    "ひらがな",
    "한국어",
    "א",
    "\u05f4",
    "…",
    "\u2019",
]
TEXT = st.lists(st.sampled_from(_PIECES) | st.characters(blacklist_categories=("Cs",)))
NON_EMPTY_TEXT = TEXT.filter(bool)


def _join(parts: list[str]) -> str:
    return "".join(parts)


@pytest.mark.parametrize(
    ("find", "boundary"),
    [(last_word_boundary, "word"), (last_sentence_boundary, "sentence")],
    ids=["word", "sentence"],
)
@PROPERTY
@given(context=TEXT.map(_join), text=NON_EMPTY_TEXT.map(_join), rest=NON_EMPTY_TEXT.map(_join))
def test_a_cut_survives_any_continuation(
    find: Finder, boundary: FlushBoundary, context: str, text: str, rest: str
) -> None:
    # The finder under test is the one the coalescer applies for this flush_boundary.
    assert finder(boundary) is find, (boundary, finder(boundary), find)
    cut = find(text, context)
    assert 0 <= cut <= len(text)
    if cut:
        whole = context + text + rest
        assert len(context) + cut in BOUNDARIES[boundary](whole), (context, text, rest, cut)


@PROPERTY
@given(text=NON_EMPTY_TEXT.map(_join), rest=NON_EMPTY_TEXT.map(_join))
def test_a_line_cut_survives_any_continuation(text: str, rest: str) -> None:
    cut = last_line_boundary(text)
    if cut:
        assert cut in BOUNDARIES["line"](text + rest)


@pytest.mark.parametrize(
    ("boundary", "text", "cut"),
    [
        ("word", "Hello wor", 6),
        ("word", "Hello world", 6),
        ("word", "can'", 0),  # "can't" may follow
        ("word", "It can'", 3),
        ("word", "3.", 0),  # "3.14" may follow
        ("word", "\U0001f468\u200d\U0001f469\u200d\U0001f467 and", 6),
        ("word", "\U0001f1eb\U0001f1f7\U0001f1fa", 2),  # a flag is two code points
        ("word", "你好世界", 3),  # each ideograph is a word
        ("sentence", "Hello world. How", 13),
        ("sentence", "Hello world. ", 0),  # "e.g. this" style continuations
        ("sentence", "Hi! ", 0),  # ", he said" may follow
        ("sentence", "See e.g. the", 0),
        ("sentence", "It was 3.5 m. Then", 14),
        ("sentence", "你好。世界", 3),
        ("sentence", "你好。", 0),
        ("sentence", "One.\n", 5),  # after a paragraph separator: nothing can undo it
        ("sentence", "One.\r", 0),  # a LF may follow
        ("line", "a\nb", 2),
        ("line", "a\n", 2),
        ("line", "a\r", 0),
        ("line", "a\r\n", 3),
        ("line", "a\u2028b", 2),
        ("line", "no break", 0),
    ],
)
def test_where_text_is_cut(boundary: str, text: str, cut: int) -> None:
    find = finder(boundary)  # type: ignore[arg-type]
    assert find is not None
    assert find(text, "") == cut


def test_finders() -> None:
    assert finder("none") is None
    assert set(FLUSH_BOUNDARIES) == {"none", "word", "sentence", "line"}
    with pytest.raises(ValueError, match="flush_boundary"):
        finder("paragraph")  # type: ignore[arg-type]


# ---- whole streams ---------------------------------------------------------------------------

TOKENS = st.lists(st.lists(st.sampled_from(_PIECES), min_size=1, max_size=4).map(_join))
GAPS = st.lists(st.sampled_from([0.0, 0.0005, 0.003, 0.012, 0.040, 0.300]))


def _replay(
    boundary: str,
    tokens: list[str],
    gaps: list[float],
    window: float,
    wait: float,
    max_bytes: int,
) -> tuple[list[SSEEvent], list[SSEEvent]]:
    """A chat stream of ``tokens`` arriving ``gaps`` apart (cycled): raw and as received."""
    raw = [
        chat_chunk({"role": "assistant", "content": ""}),
        *(chat_chunk({"content": token}) for token in tokens),
        chat_chunk({}, finish_reason="stop"),
    ]
    times = [0.0]
    for i in range(1, len(raw)):
        times.append(times[-1] + (gaps[i % len(gaps)] if gaps else 0.001))
    c = Coalescer(
        format="openai-chat",
        flush_interval=window,
        max_flush_bytes=max_bytes,
        flush_boundary=boundary,  # type: ignore[arg-type]
        max_boundary_wait=wait,
    )
    return raw, client_events(wire_bytes(replay_timed(c, raw, times, idle_after=1.0)))


BOUNDARY = st.sampled_from(["word", "sentence", "line"])
WINDOW = st.sampled_from([0.0, 0.005, 0.020])


@PROPERTY
@given(
    boundary=BOUNDARY,
    tokens=TOKENS,
    gaps=GAPS,
    window=WINDOW,
    wait=st.sampled_from([0.0, 0.030, 0.250]),
    max_bytes=st.sampled_from([8, 300, 1 << 20]),
)
def test_any_stream_keeps_its_final_message(
    boundary: str, tokens: list[str], gaps: list[float], window: float, wait: float, max_bytes: int
) -> None:
    raw, out = _replay(boundary, tokens, gaps, window, wait, max_bytes)
    assert accumulate("openai-chat", out) == accumulate("openai-chat", raw)


@PROPERTY
@given(boundary=BOUNDARY, tokens=TOKENS, gaps=GAPS, window=WINDOW)
def test_any_stream_is_cut_at_boundaries(
    boundary: str, tokens: list[str], gaps: list[float], window: float
) -> None:
    raw, out = _replay(boundary, tokens, gaps, window, 60.0, 1 << 20)
    assert misaligned("openai-chat", out, boundary) == []
    assert accumulate("openai-chat", out) == accumulate("openai-chat", raw)
