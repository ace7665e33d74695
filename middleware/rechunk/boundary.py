"""Boundary-aware flushing: where a window's merged text may be cut, and holding the rest.

With ``flush_boundary`` set (``word``, ``sentence`` or ``line``; ``none`` turns all of this off),
a window write cuts the trailing merged *text* delta at its last boundary: the part up to the
boundary is written as one event, the rest stays held, with the same envelope, until a later
window finds a boundary after it, and at most ``max_boundary_wait`` seconds; then it is written
anyway. Only the last held item can be cut: anything after a text delta (another field, a tool
call, a boundary event) means that text is complete, so it is written whole, and order is kept.

Where a boundary is (Unicode text segmentation, UAX #29, https://www.unicode.org/reports/tr29/):

* ``word``: a word boundary (§4). CJK ideographs and kana are a word each (UAX #29 has no
  dictionary); an emoji ZWJ sequence, a flag, a skin tone or a combining mark is never cut.
* ``sentence``: a sentence boundary (§5): after ``.``, ``!``, ``?`` and their CJK forms (``。``)
  with closing punctuation and trailing spaces, and after a paragraph separator; ``e.g. this``
  and ``3.5`` are not cut.
* ``line``: after a mandatory line break of UAX #14 (LF, CRLF, CR, NEL, VT, FF, U+2028, U+2029):
  plain string search, no segmentation.

A boundary is only used once no continuation can move it. Segmentation looks ahead: ``can'`` may
become ``can't`` (no word boundary before ``'``), ``etc. `` may go on in lower case (no sentence
boundary after it). So the text is segmented with a *probe* appended, the continuation that
removes the most boundaries: for words ``א`` (a Hebrew letter: WB6/WB7/WB7b join across
``'``/``.``/``:``/``"``) and ``0`` (WB11/WB12 join numbers across ``,``/``.``), for sentences
``,a`` (SB8a keeps ``,`` in the sentence, SB8 looks for a lower-case letter). A boundary that
survives every probe survives any text that follows. The end of the text itself is never a
boundary, except after a line break (``line``; ``sentence`` too: SB4 always breaks there) that is
not a CR (which may be the first half of CRLF). Lookbehind gets the last :data:`CONTEXT_CHARS`
characters already written in the same text field.

Segmentation: ``unicode-segmentation-rs``, Python bindings (maintained by Weblate) of the Rust
``unicode-segmentation`` crate, which is tested against the Unicode Character Database's
``WordBreakTest.txt``/``SentenceBreakTest.txt``. About 2.5 microseconds (sentences) to 5 (words,
two probes) for 100 characters; abi3 wheels for Linux (glibc and musl), macOS and Windows, no
compiler or system ICU. Its sentence API drops
sentences without a letter or digit, so only the last sentence (the one holding the probe's
``a``) is read from it. Why this library and not another: docs/rechunking.md.

Sans-IO like the coalescer: :class:`TextHold` is given ``now`` (seconds) and never reads a clock.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator
from typing import Final, Literal, Protocol, Self, cast, get_args

from unicode_segmentation_rs import split_word_bounds, unicode_sentences

from streamhop.middleware.rechunk.formats.base import MergeGroup
from streamhop.middleware.sse.events import SSEEvent

FlushBoundary = Literal["none", "word", "sentence", "line"]
"""Where a window write may cut merged text (``none``: anywhere, as without this module)."""

FLUSH_BOUNDARIES: Final[tuple[FlushBoundary, ...]] = get_args(FlushBoundary)

DEFAULT_MAX_BOUNDARY_WAIT: Final = 0.250
"""Seconds text is held past its window waiting for a boundary (``max_boundary_wait_ms``)."""

CONTEXT_CHARS: Final = 32
"""Characters of already written text given to segmentation as lookbehind."""

_WORD_PROBES: Final = ("\u05d0", "0")
_SENTENCE_PROBE: Final = ",a"
# UAX #14 mandatory breaks (classes BK, CR, LF, NL).
_LINE_ENDS: Final = ("\n", "\r", "\x0b", "\x0c", "\x85", "\u2028", "\u2029")

Finder = Callable[[str, str], int]
"""``finder(text, context)``: the last safe cut in ``text`` (see :func:`last_word_boundary`)."""


def last_word_boundary(text: str, context: str = "") -> int:
    """The last UAX #29 word boundary in ``text`` that no continuation can remove.

    Args:
        text: the held text.
        context: text written just before it in the same field (lookbehind only).

    Returns:
        A cut ``0 < cut < len(text)``, or ``0`` when there is none.
    """
    base = context + text
    start = len(context)
    # The last boundary both probes keep: walk both lists of boundaries down from the end
    # (the probes only change the last few, so this stops after a step or two).
    first, second = (_cuts_down(base + probe, start, len(base)) for probe in _WORD_PROBES)
    a = next(first, 0)
    b = next(second, 0)
    while a != b:
        if a > b:
            a = next(first, 0)
        else:
            b = next(second, 0)
    return a - start if a else 0


def _cuts_down(probed: str, start: int, end: int) -> Iterator[int]:
    """Word boundaries of ``probed`` strictly between ``start`` and ``end``, last first."""
    pos = len(probed)
    for piece in reversed(split_word_bounds(probed)):
        pos -= len(piece)
        if pos <= start:
            return
        if pos < end:
            yield pos


def last_sentence_boundary(text: str, context: str = "") -> int:
    """The last UAX #29 sentence boundary in ``text`` that no continuation can remove.

    Args:
        text: the held text.
        context: text written just before it in the same field (lookbehind only).

    Returns:
        A cut ``0 < cut <= len(text)`` (``len(text)`` only after a paragraph separator other
        than CR), or ``0`` when there is none.
    """
    base = context + text
    probed = base + _SENTENCE_PROBE
    # The last sentence holds the probe's letter, so the lossy API always returns it.
    cut = len(probed) - len(unicode_sentences(probed)[-1]) - len(context)
    if cut == len(text) and text.endswith("\r"):
        # SB3 keeps CR LF together: the LF may still come.
        return last_sentence_boundary(text[:-1], context)
    return cut if cut > 0 else 0


def last_line_boundary(text: str, context: str = "") -> int:
    """The position just after the last line break in ``text`` (a CR at the very end waits for
    a possible LF).

    Args:
        text: the held text.
        context: unused (line breaks need no lookbehind); for the :data:`Finder` signature.

    Returns:
        A cut ``0 < cut <= len(text)``, or ``0`` when ``text`` has no line break.
    """
    last = max(text.rfind(end) for end in _LINE_ENDS)
    if last < 0:
        return 0
    if last == len(text) - 1 and text[last] == "\r":
        return last_line_boundary(text[:-1])
    return last + 1


_FINDERS: Final[dict[str, Finder]] = {
    "word": last_word_boundary,
    "sentence": last_sentence_boundary,
    "line": last_line_boundary,
}


def finder(boundary: FlushBoundary) -> Finder | None:
    """The cut finder of ``boundary``; ``None`` for ``none``.

    Raises:
        ValueError: not one of :data:`FLUSH_BOUNDARIES`.
    """
    if boundary == "none":
        return None
    try:
        return _FINDERS[boundary]
    except KeyError:
        raise ValueError(
            f"flush_boundary must be one of {list(FLUSH_BOUNDARIES)}, got {boundary!r}"
        ) from None


class SplitText(MergeGroup, Protocol):
    """The hook a merge group of a text-carrying format implements to be cut at a boundary.

    Implemented by :class:`~.formats.field_group.FieldGroup` (Anthropic, OpenAI Responses) and
    the OpenAI chat group (each module checks itself against this protocol for ``mypy``); a
    group without ``boundary_text`` is never cut.
    """

    def boundary_text(self) -> tuple[Hashable, str] | None:
        """``(lane, text)``: the merged text that may be held, and what identifies its field
        across groups (same choice and field, same content block...); ``None`` when the group
        must be written whole (tool-call arguments, several fields at once, logprobs)."""

    def split(self, cut: int) -> tuple[SSEEvent, Self]:
        """Render ``text[:cut]`` as one event (no ``id``: it stands for part of an event) and
        return it with a new group holding ``text[cut:]`` in the same envelope (its render is
        the same event with that text, carrying the group's last ``id``)."""


class TextHold:
    """Per-stream state of boundary-aware flushing: the held tail and the lookbehind context.

    Args:
        find: the cut finder (:func:`finder`).
        max_wait: seconds a tail may be held past the write that first held it back.
        max_bytes: a tail of this many UTF-8 bytes or more is written anyway.
    """

    __slots__ = (
        "_context",
        "_find",
        "_lane",
        "_max_bytes",
        "_max_wait",
        "_tail",
        "_tail_chars",
        "_tail_count",
        "until",
    )

    def __init__(self, find: Finder, max_wait: float, max_bytes: int) -> None:
        self._find = find
        self._max_wait = max_wait
        self._max_bytes = max_bytes
        self._tail: SplitText | None = None
        self._tail_count = 0
        self._tail_chars = 0
        self._lane: Hashable = None
        self._context = ""
        self.until = 0.0
        """When the held tail must be written at the latest (valid while one is held)."""

    def __repr__(self) -> str:
        held = "none" if self._tail is None else f"until={self.until:.3f}"
        return f"<TextHold tail={held} context={self._context!r}>"

    def cut(self, items: list[SSEEvent | MergeGroup], now: float | None) -> MergeGroup | None:
        """Cut the last of ``items`` at its last boundary, in place, and return what is held.

        ``items[-1]`` is replaced by the event up to the boundary, or removed when none of it
        may be written yet.

        Args:
            items: the coalescer's held items, in order (not empty).
            now: the time of the write (seconds); ``None`` to write everything (the stream's
                end, or the first content event, which is never delayed).

        Returns:
            The group left held (write the rest of ``items``), or ``None``: write everything.
        """
        # Duck-typed: isinstance() against a runtime-checkable protocol costs ~25 us.
        boundary_text = getattr(items[-1], "boundary_text", None)
        held = None if boundary_text is None else boundary_text()
        if held is None:
            self._tail = None
            self._lane = None
            return None
        last = cast(SplitText, items[-1])
        lane, text = held
        # The context is the text written just before, if nothing came between.
        context = self._context if lane == self._lane and len(items) == 1 else ""
        grown = self._tail is not last or last.count != self._tail_count
        cut = len(text)
        if now is not None and self._max_wait > 0 and (self._tail is not last or now < self.until):
            # A tail to which nothing was added has no new boundary: no need to look.
            cut = self._find(text, context) if grown else 0
        if cut < len(text) and len(text[cut:].encode()) >= self._max_bytes:
            cut = len(text)
        self._lane = lane
        self._context = (context + text[:cut])[-CONTEXT_CHARS:]
        if cut == len(text):
            self._tail = None
            return None
        assert now is not None
        if cut == 0:
            tail: SplitText = last
            items.pop()
        else:
            head, tail = last.split(cut)
            items[-1] = head
        if self._tail is last and cut < self._tail_chars:
            # Text held back by an earlier write is still held: its wait goes on.
            self._tail_chars -= cut
        else:
            self.until = now + self._max_wait
            self._tail_chars = len(text) - cut
        self._tail = tail
        self._tail_count = tail.count
        return tail
