"""SSEDecoder: framing per WHATWG HTML §9.2.6 at every read split, bounds, EOF handling."""

from __future__ import annotations

import bisect
import itertools
import random
from collections.abc import Callable, Iterable, Sequence

import pytest

from streamhop.middleware import (
    END,
    NEED_DATA,
    EventTooLargeError,
    SSEDecoder,
    SSEEvent,
    SSEProtocolError,
)

from ..accumulate import replacement_characters
from ..conftest import FIXTURE_NAMES, FIXTURES_DIR, decode_all, fixture_bytes, fixture_events

BOM = b"\xef\xbb\xbf"

LINE_ENDINGS: dict[str, Callable[[bytes], bytes]] = {
    "lf": lambda raw: raw,
    "crlf": lambda raw: raw.replace(b"\n", b"\r\n"),
    "cr": lambda raw: raw.replace(b"\n", b"\r"),
}

SMALL_FIXTURES = tuple(n for n in FIXTURE_NAMES if len(fixture_bytes(n)) <= 10_000)


def feed_pieces(pieces: Iterable[bytes], max_event_bytes: int = 1024 * 1024) -> SSEDecoder:
    """A decoder that was fed ``pieces`` (empty ones skipped: ``b""`` means EOF) then EOF."""
    decoder = SSEDecoder(max_event_bytes)
    for piece in pieces:
        if piece:
            decoder.receive_data(piece)
    decoder.receive_data(b"")
    return decoder


def decode_pieces(pieces: Iterable[bytes], max_event_bytes: int = 1024 * 1024) -> list[SSEEvent]:
    """Events from feeding ``pieces`` one read each with :meth:`SSEDecoder.feed`, then EOF."""
    decoder = SSEDecoder(max_event_bytes)
    events: list[SSEEvent] = []
    for piece in pieces:
        if piece:
            events += decoder.feed(piece)
    events += decoder.feed(b"")
    return events


def drain(decoder: SSEDecoder) -> list[SSEEvent]:
    """Every event :meth:`SSEDecoder.next_event` has ready (stops at NEED_DATA or END)."""
    events: list[SSEEvent] = []
    while True:
        item = decoder.next_event()
        if item is NEED_DATA or item is END:
            return events
        assert isinstance(item, SSEEvent)
        events.append(item)


def split_at(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    """``data`` cut at the sorted offsets ``cuts``."""
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def every_split(data: bytes) -> Iterable[tuple[int, list[bytes]]]:
    """Each two-piece split of ``data`` (both pieces non-empty)."""
    for k in range(1, len(data)):
        yield k, [data[:k], data[k:]]


def ev(
    data: str | None, event: str | None = None, id: str | None = None, retry: int | None = None
) -> tuple[str | None, str | None, str | None, int | None]:
    """The fields of an expected event (``wire_size`` aside)."""
    return (data, event, id, retry)


def fields(
    events: Iterable[SSEEvent],
) -> list[tuple[str | None, str | None, str | None, int | None]]:
    """The fields of decoded events (``wire_size`` aside)."""
    return [(e.data, e.event, e.id, e.retry) for e in events]


def assert_same_at_every_split(
    stream: bytes, expected: list[tuple[str | None, str | None, str | None, int | None]]
) -> None:
    """``stream`` gives ``expected`` whole, at every two-piece split, and byte by byte."""
    assert fields(decode_pieces([stream])) == expected
    for k, pieces in every_split(stream):
        assert fields(decode_pieces(pieces)) == expected, f"split at byte {k}"
    assert fields(decode_pieces(stream[i : i + 1] for i in range(len(stream)))) == expected


# ----------------------------------------------------------------------------------------------
# The recorded provider streams at every read split


def test_fixture_set_is_complete() -> None:
    """Every recording in the shared folder is listed in conftest with its format."""
    assert sorted(p.name for p in FIXTURES_DIR.glob("*.sse")) == list(FIXTURE_NAMES)


def test_fixture_decodes_to_one_event_per_block(fixture_name: str) -> None:
    """Whole fixture in one read: one event per blank-line-terminated block, exact wire sizes."""
    raw = fixture_bytes(fixture_name)
    events = decode_all(raw)
    blocks = raw.split(b"\n\n")
    assert blocks[-1] == b""
    # comment-only blocks (OpenRouter's `: OPENROUTER PROCESSING`) are no events
    comments = [b for b in blocks[:-1] if b.startswith(b":") and b"\n" not in b]
    blocks = [b for b in blocks if b not in comments]
    assert len(events) == len(blocks) - 1
    assert all(e.data is not None for e in events)
    # LF stream: each event's wire_size is its block plus the blank line, summing to the body.
    assert [e.wire_size for e in events] == [len(b) + 2 for b in blocks[:-1]]
    assert sum(e.wire_size for e in events) == len(raw) - sum(len(c) + 2 for c in comments)
    assert replacement_characters(events) == []


@pytest.mark.parametrize("fixture_name", SMALL_FIXTURES)
def test_every_two_piece_split_of_whole_fixture(fixture_name: str) -> None:
    """Fixtures up to 10 kB: the whole body in two reads, at every split point, is identical."""
    raw = fixture_bytes(fixture_name)
    expected = fixture_events(fixture_name)
    for k, pieces in every_split(raw):
        assert decode_pieces(pieces) == expected, f"split at byte {k}"


@pytest.mark.parametrize("ending", sorted(LINE_ENDINGS))
def test_every_split_point_in_context(fixture_name: str, ending: str) -> None:
    """Every split point of every fixture (LF, CRLF, CR line ends), with its neighbours.

    Splitting the whole body at each of ~100k points is quadratic (~40 s), so each split point
    is tested in the stretch from the event before it to the event after it. A decoder is in
    its initial state at an event boundary, so this decodes exactly what the whole body would
    there; whole-body splits of the small fixtures are checked above.
    """
    raw = LINE_ENDINGS[ending](fixture_bytes(fixture_name))
    terminator = {"lf": b"\n\n", "crlf": b"\r\n\r\n", "cr": b"\r\r"}[ending]
    expected = decode_all(raw)
    bounds = [0]
    while (at := raw.find(terminator, bounds[-1])) >= 0:
        bounds.append(at + len(terminator))
    assert bounds[-1] == len(raw)
    # the events of each block (none for a comment-only block)
    per_block = [decode_all(raw[a:b]) for a, b in itertools.pairwise(bounds)]
    assert [e for block in per_block for e in block] == expected
    for k in range(1, len(raw)):
        j = bisect.bisect_right(bounds, k) - 1
        lo, hi = max(j - 1, 0), min(j + 2, len(bounds) - 1)
        window = raw[bounds[lo] : bounds[hi]]
        got = decode_pieces(split_at(window, [k - bounds[lo]]))
        assert got == [e for block in per_block[lo:hi] for e in block], f"split at byte {k}"


@pytest.mark.parametrize("ending", sorted(LINE_ENDINGS))
def test_byte_by_byte(fixture_name: str, ending: str) -> None:
    """Every fixture fed one byte per read gives the events of one read."""
    raw = LINE_ENDINGS[ending](fixture_bytes(fixture_name))
    expected = decode_all(raw)
    assert decode_pieces(raw[i : i + 1] for i in range(len(raw))) == expected


@pytest.mark.parametrize("seed", range(5))
def test_seeded_random_splits(fixture_name: str, seed: int) -> None:
    """Random partitions (1 to 200 pieces, mixed line ends) give the events of one read."""
    rng = random.Random(f"{fixture_name}/{seed}")
    ending = rng.choice(sorted(LINE_ENDINGS))
    raw = LINE_ENDINGS[ending](fixture_bytes(fixture_name))
    expected = decode_all(raw)
    cuts = sorted(rng.sample(range(1, len(raw)), rng.randint(1, 200)))
    assert decode_pieces(split_at(raw, cuts)) == expected


@pytest.mark.parametrize("seed", range(3))
def test_receive_data_next_event_matches_feed(fixture_name: str, seed: int) -> None:
    """The h11-style API (receive_data + next_event) yields the same events as feed()."""
    raw = fixture_bytes(fixture_name)
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(raw)), 40))
    decoder = SSEDecoder()
    assert decoder.next_event() is NEED_DATA
    events: list[SSEEvent] = []
    for piece in split_at(raw, cuts):
        decoder.receive_data(piece)
        events += drain(decoder)
        assert decoder.next_event() is NEED_DATA
    decoder.receive_data(b"")
    events += drain(decoder)
    assert decoder.next_event() is END
    assert events == fixture_events(fixture_name)


# ----------------------------------------------------------------------------------------------
# WHATWG HTML §9.2.6 interpretation, each case at every split


MIXED = b"data: a\rdata: b\ndata: c\r\n\r\nevent: e\rdata: d\n\rid: 7\r\ndata: f\r\r\n"


@pytest.mark.parametrize(
    ("stream", "expected"),
    [
        (b"data: a\n\ndata: b\n\n", [ev("a"), ev("b")]),
        (b"data: a\r\rdata: b\r\r", [ev("a"), ev("b")]),
        (b"data: a\r\n\r\ndata: b\r\n\r\n", [ev("a"), ev("b")]),
        # all three line ends in one stream, a CR directly followed by a next line
        (MIXED, [ev("a\nb\nc"), ev("d", event="e"), ev("f", id="7")]),
        (b"data: x\r\ndata: y\r\n\r\n", [ev("x\ny")]),
    ],
    ids=["lf", "cr", "crlf", "mixed", "crlf-multiline"],
)
def test_line_endings(
    stream: bytes, expected: list[tuple[str | None, str | None, str | None, int | None]]
) -> None:
    """LF, CR and CRLF end lines, also mixed and with a CRLF pair split across two reads."""
    assert_same_at_every_split(stream, expected)


def test_cr_then_lf_terminated_line_in_next_read() -> None:
    """A CR-ended line then a partial line in one read: the next read's LF ends that line.

    The LF is not the second half of a CRLF (a byte came between), so it must not be skipped.
    """
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\rdata: b") == []
    assert fields(decoder.feed(b"\n\n")) == [ev("a\nb")]


def test_crlf_split_between_cr_and_lf_is_one_line_end() -> None:
    """``\\r`` at the end of one read and ``\\n`` at the start of the next are one line end."""
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"\n") == []
    # Had the LF been a second line end, this block would have been dispatched already.
    assert fields(decoder.feed(b"data: b\r")) == []
    assert fields(decoder.feed(b"\n\r")) == [ev("a\nb")]
    assert fields(decoder.feed(b"\ndata: c\n\n")) == [ev("c")]


@pytest.mark.parametrize(
    ("stream", "expected"),
    [
        (b": comment\ndata: a\n: another\n\n", [ev("a")]),
        (b":\n\n: only a comment\n\ndata: b\n\n", [ev("b")]),
        (b"data\n\n", [ev("")]),
        (b"data\ndata\n\n", [ev("\n")]),
        (b"data:\n\n", [ev("")]),
        (b"data:x\n\n", [ev("x")]),
        (b"data: x\n\n", [ev("x")]),
        (b"data:  x\n\n", [ev(" x")]),
        (b"data:   x \n\n", [ev("  x ")]),
        (b"data: a\ndata:\ndata: b\n\n", [ev("a\n\nb")]),
        (b"data: \n\n", [ev("")]),
        (b"data: a:b: c\n\n", [ev("a:b: c")]),
        (b"event: e\n\ndata: x\n\n", [ev("x")]),
        (b"event: e\nevent: f\ndata: x\n\n", [ev("x", event="f")]),
        (b"event:\ndata: x\n\n", [ev("x", event="")]),
        (b"id: 1\ndata: x\n\n", [ev("x", id="1")]),
        (b"id: a\x00b\ndata: x\n\n", [ev("x")]),
        (b"id\ndata: x\n\n", [ev("x", id="")]),
        (b"retry: 1500\ndata: x\n\n", [ev("x", retry=1500)]),
        (b"retry: 15a\ndata: x\n\n", [ev("x")]),
        (b"retry: -1\ndata: x\n\n", [ev("x")]),
        (b"retry: 1.5\ndata: x\n\n", [ev("x")]),
        (b"retry:\ndata: x\n\n", [ev("x")]),
        (b"retry: \xd9\xa3\ndata: x\n\n", [ev("x")]),  # ARABIC-INDIC DIGIT THREE
        (b"retry:  15\ndata: x\n\n", [ev("x")]),  # only one space is stripped
        (b"foo: bar\ndata: x\nDATA: y\nData: z\n\n", [ev("x")]),
        (b"foo: bar\n\n", []),
        (b" data: x\n\n", []),  # a field name with a leading space is unknown
        (b"data: x\n\n\n\n\ndata: y\n\n", [ev("x"), ev("y")]),
    ],
)
def test_field_interpretation(
    stream: bytes, expected: list[tuple[str | None, str | None, str | None, int | None]]
) -> None:
    """Comments, ``data`` without a colon, one leading space stripped, multi-line data,
    ``event`` alone not dispatched, ``id`` with NUL ignored, ``retry`` digits only, unknown
    fields ignored, names case-sensitive."""
    assert_same_at_every_split(stream, expected)


@pytest.mark.parametrize(
    ("stream", "expected"),
    [
        (b"id: 42\n\n", [ev(None, id="42")]),
        (b"retry: 3000\n\n", [ev(None, retry=3000)]),
        (b"event: e\nid: 5\n\n", [ev(None, event="e", id="5")]),
        (b"id: a\x00\n\n", []),
        (b"retry: x\n\n", []),
    ],
)
def test_id_or_retry_only_blocks_surface_without_data(
    stream: bytes, expected: list[tuple[str | None, str | None, str | None, int | None]]
) -> None:
    """A block setting only ``id``/``retry`` is surfaced with ``data=None`` (to be forwarded);
    one whose ``id``/``retry`` is invalid sets nothing and is not."""
    assert_same_at_every_split(stream, expected)


@pytest.mark.parametrize(
    ("stream", "expected"),
    [
        (BOM + b"data: x\n\n", [ev("x")]),
        (BOM + b"\n" + b"data: x\n\n", [ev("x")]),
        (BOM + BOM + b"data: x\n\ndata: y\n\n", [ev("y")]),  # one BOM only is stripped
        (b"data: a\n\n" + BOM + b"data: b\n\n", [ev("a")]),  # not stripped mid-stream
        (b"data: " + BOM + b"x\n\n", [ev("\ufeffx")]),
        # U+FF1A FULLWIDTH COLON starts like a BOM (EF ...) and must not be eaten
        ("\uff1a\ndata: x\n\n".encode(), [ev("x")]),
        ("data: \uff1ax\n\n".encode(), [ev("\uff1ax")]),
    ],
)
def test_byte_order_mark(
    stream: bytes, expected: list[tuple[str | None, str | None, str | None, int | None]]
) -> None:
    """One leading UTF-8 BOM is stripped, also when split across reads; none mid-stream."""
    assert_same_at_every_split(stream, expected)


def test_bom_split_byte_by_byte_then_fields() -> None:
    """A BOM arriving one byte per read is held back, then stripped."""
    decoder = SSEDecoder()
    assert decoder.feed(BOM[:1]) == []
    assert decoder.feed(BOM[1:2]) == []
    assert decoder.feed(BOM[2:]) == []
    assert fields(decoder.feed(b"data: x\n\n")) == [ev("x")]


MULTIBYTE_TEXT = "°C é 中文 \U0001f600 \U0001f469\u200d\U0001f4bb e\u0301 \u05e9\u05c1 \U00010348"


@pytest.mark.parametrize("where", ["data", "event", "id"])
def test_code_point_split_across_reads_is_never_decoded_early(where: str) -> None:
    """2-, 3- and 4-byte UTF-8 sequences cut at every byte: exact text, never U+FFFD."""
    stream = f"{where}: {MULTIBYTE_TEXT}\ndata: {MULTIBYTE_TEXT}\n\n".encode()
    expected = {
        "data": ev(f"{MULTIBYTE_TEXT}\n{MULTIBYTE_TEXT}"),
        "event": ev(MULTIBYTE_TEXT, event=MULTIBYTE_TEXT),
        "id": ev(MULTIBYTE_TEXT, id=MULTIBYTE_TEXT),
    }[where]
    for k, pieces in every_split(stream):
        events = decode_pieces(pieces)
        assert fields(events) == [expected], f"split at byte {k}"
        assert replacement_characters(events) == []
    events = decode_pieces(stream[i : i + 1] for i in range(len(stream)))
    assert fields(events) == [expected]


def test_fixture_with_multibyte_text_split_inside_code_points() -> None:
    """The recorded "°C" stream cut inside every non-ASCII sequence keeps the exact text."""
    raw = fixture_bytes("openai_chat_json_multibyte_degree.sse")
    inside = [i for i in range(1, len(raw)) if 0x80 <= raw[i] < 0xC0]  # continuation bytes
    assert inside, "the fixture holds raw UTF-8"
    expected = fixture_events("openai_chat_json_multibyte_degree.sse")
    assert decode_pieces(split_at(raw, inside)) == expected
    assert any("°" in (e.data or "") for e in expected)


# ----------------------------------------------------------------------------------------------
# EOF


@pytest.mark.parametrize(
    "stream",
    [
        b"data: x",
        b"data: x\n",
        b"data: x\r",
        b"data: x\r\n",
        b"event: e\n",
        b"id: 1\n",
        b"data: a\n\ndata: b\n",
    ],
)
def test_eof_inside_an_event_is_not_dispatched_and_reported(stream: bytes) -> None:
    """EOF before the blank line: the partial event is dropped and ``truncated`` is True."""
    whole = [ev("a")] if stream.startswith(b"data: a\n\n") else []
    for pieces in [[stream], *(p for _, p in every_split(stream))]:
        decoder = SSEDecoder()
        events: list[SSEEvent] = []
        for piece in pieces:
            events += decoder.feed(piece)
        assert decoder.truncated is False
        events += decoder.feed(b"")
        assert fields(events) == whole
        assert decoder.truncated is True


@pytest.mark.parametrize("stream", [b"data: x\n\n", b"data: x\r\r", b"data: x\n\n: bye\n", b""])
def test_eof_after_complete_events_is_not_truncated(stream: bytes) -> None:
    """A stream that ends on an event boundary (or after a comment) is complete."""
    decoder = SSEDecoder()
    if stream:
        decoder.feed(stream)
    decoder.feed(b"")
    assert decoder.truncated is False
    assert decoder.next_event() is END


def test_receive_data_after_eof_raises() -> None:
    """More bytes (or a second EOF) after EOF is a local protocol error."""
    decoder = SSEDecoder()
    decoder.feed(b"data: x\n\n")
    decoder.receive_data(b"")
    with pytest.raises(SSEProtocolError):
        decoder.receive_data(b"data: y\n\n")
    with pytest.raises(SSEProtocolError):
        decoder.feed(b"")


def test_next_event_sentinels() -> None:
    """NEED_DATA until an event is complete, the events in order, END only after EOF."""
    decoder = SSEDecoder()
    assert decoder.next_event() is NEED_DATA
    decoder.receive_data(b"data: 1\n\ndata: 2\n\nda")
    assert fields(drain(decoder)) == [ev("1"), ev("2")]
    assert decoder.next_event() is NEED_DATA
    decoder.receive_data(b"ta: 3\n\n")
    decoder.receive_data(b"")
    first = decoder.next_event()
    assert isinstance(first, SSEEvent) and first.data == "3"
    assert decoder.next_event() is END
    assert decoder.next_event() is END


# ----------------------------------------------------------------------------------------------
# max_event_bytes


def test_max_event_bytes_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_event_bytes"):
        SSEDecoder(0)


def test_event_at_the_limit_is_accepted() -> None:
    """An event whose wire size equals ``max_event_bytes`` is decoded, at every split."""
    event = b"event: e\ndata: " + b"x" * 100 + b"\ndata: y\n\n"
    for k, pieces in every_split(event):
        got = decode_pieces(pieces, max_event_bytes=len(event))
        assert fields(got) == [ev("x" * 100 + "\ny", event="e")], f"split at byte {k}"


@pytest.mark.parametrize("read_size", [1, 7, 100, 10_000])
def test_event_over_the_limit_raises(read_size: int) -> None:
    """A multi-line event larger than the bound raises, however it is cut into reads."""
    limit = 200
    prefix = b"data: ok\n\n" * 3
    stream = (
        prefix
        + b"data: "
        + b"x" * 60
        + b"\n"
        + b"data: "
        + b"y" * 60
        + b"\n" * 1
        + (b"data: " + b"z" * 100 + b"\n\n")
    )
    decoder = SSEDecoder(limit)
    events: list[SSEEvent] = []
    with pytest.raises(EventTooLargeError) as info:
        for i in range(0, len(stream), read_size):
            events += decoder.feed(stream[i : i + read_size])
    error = info.value
    assert isinstance(error, SSEProtocolError)
    assert error.limit == limit
    assert error.size > limit
    assert error.offset == len(prefix)
    assert str(limit) in str(error)
    events += drain(decoder)
    assert fields(events) == [ev("ok")] * 3
    with pytest.raises(SSEProtocolError):
        decoder.receive_data(b"data: more\n\n")


@pytest.mark.parametrize("read_size", [1, 64, 5000])
def test_one_long_unterminated_line_raises_before_its_end(read_size: int) -> None:
    """A line that never ends is refused once it passes the bound, not buffered forever."""
    limit = 1000
    decoder = SSEDecoder(limit)
    fed = 0
    with pytest.raises(EventTooLargeError) as info:
        while fed < 100 * limit:
            decoder.receive_data(b"data: " if fed == 0 else b"x" * read_size)
            fed += 6 if fed == 0 else read_size
    assert fed <= limit + read_size + 6
    assert info.value.offset == 0
    assert info.value.size > limit


def test_many_small_events_never_hit_the_limit() -> None:
    """The bound is per event: 10k small events far past it in total decode fine."""
    limit = 64
    stream = b"".join(b"id: %d\ndata: %d\n\n" % (i, i) for i in range(10_000))
    assert len(stream) > 1000 * limit
    events = decode_pieces([stream], max_event_bytes=limit)
    assert len(events) == 10_000
    assert events[-1].data == "9999" and events[-1].id == "9999"
    events = decode_pieces(split_at(stream, list(range(33, len(stream), 33))), limit)
    assert len(events) == 10_000


def test_comments_count_towards_the_event_bound() -> None:
    """Comment lines are part of the event's bytes too (a comment flood is bounded)."""
    decoder = SSEDecoder(100)
    with pytest.raises(EventTooLargeError):
        decoder.feed(b": keep-alive padding\n" * 10 + b"data: x\n\n")


def _outcome(pieces: Iterable[bytes], limit: int) -> tuple[str, list[SSEEvent] | int]:
    """Events, or the offset of the EventTooLargeError, from feeding ``pieces`` then EOF."""
    try:
        return "events", decode_pieces(pieces, max_event_bytes=limit)
    except EventTooLargeError as error:
        return "too large", error.offset


@pytest.mark.parametrize("extra", [-2, -1, 0, 1, 2])
def test_event_bound_does_not_depend_on_read_boundaries(extra: int) -> None:
    """Around the bound, an event is accepted or refused (at the same offset) whether it
    arrives whole in one read after another event, byte by byte, or cut anywhere."""
    limit = 120
    first = b"data: warm-up\n\n"
    body = b"event: e\ndata: "
    big = body + b"x" * (limit + extra - len(body) - 2) + b"\n\n"
    assert len(big) == limit + extra
    stream = first + big + b"data: after\n\n"
    reference = _outcome([first, big + b"data: after\n\n"], limit)
    if reference[0] == "too large":
        assert reference[1] == len(first)
    assert _outcome([stream], limit) == reference
    assert _outcome((stream[i : i + 1] for i in range(len(stream))), limit) == reference
    for k, pieces in every_split(stream):
        assert _outcome(pieces, limit) == reference, f"split at byte {k}"
