"""encode_event / encode_events: wire syntax that the decoder (and a browser) reads back exactly."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamhop.middleware import SSEDecoder, SSEEvent, encode_event, encode_events

from ..conftest import decode_all, fixture_bytes, fixture_events


def roundtrip(events: list[SSEEvent]) -> list[SSEEvent]:
    """Encode ``events`` in one body and decode it again."""
    return decode_all(encode_events(events))


def without_size(event: SSEEvent) -> SSEEvent:
    return event._replace(wire_size=0)


@pytest.mark.parametrize(
    "event",
    [
        SSEEvent(data="hello"),
        SSEEvent(data="line one\nline two\n\nline four"),
        SSEEvent(data="\n"),
        SSEEvent(data="trailing newline\n"),
        SSEEvent(data=" starts with a space"),
        SSEEvent(data="  two spaces\n three"),
        SSEEvent(data=""),
        SSEEvent(data=": looks like a comment"),
        SSEEvent(data="data: looks like a field"),
        SSEEvent(data="°C 中文 \U0001f469\u200d\U0001f4bb e\u0301"),
        SSEEvent(data='{"a": "b"}', event="content_block_delta"),
        SSEEvent(data="x", event=" spaced name"),
        SSEEvent(data="x", event=""),
        SSEEvent(data="x", id="stream-1:42"),
        SSEEvent(data="x", id=""),
        SSEEvent(data="x", retry=0),
        SSEEvent(data="multi\nline", event="e", id="7", retry=1500),
        SSEEvent(data=None, id="stream-1:43"),
        SSEEvent(data=None, retry=2500),
        SSEEvent(data=None, event="e", id="9", retry=10),
    ],
)
def test_roundtrip(event: SSEEvent) -> None:
    """decode(encode(event)) == event, and the decoder's wire size is the encoded length."""
    wire = encode_event(event).encode()
    (decoded,) = decode_all(wire)
    assert without_size(decoded) == without_size(event)
    assert decoded.wire_size == len(wire)
    assert wire.endswith(b"\n\n")


def test_wire_syntax() -> None:
    """The documented layout: event, id, retry, one ``data:`` line per line, a blank line."""
    assert encode_event(SSEEvent(data="x")) == "data: x\n\n"
    assert encode_event(SSEEvent(data="x", event="e")) == "event: e\ndata: x\n\n"
    assert encode_event(SSEEvent(data="a\nb", event="e", id="1", retry=5)) == (
        "event: e\nid: 1\nretry: 5\ndata: a\ndata: b\n\n"
    )
    assert encode_event(SSEEvent(data=None, id="1")) == "id: 1\n\n"
    assert encode_event(SSEEvent(data="")) == "data: \n\n"


@pytest.mark.parametrize("bad", ["a\nb", "a\rb", "a\r\nb", "\n", "end\r"])
@pytest.mark.parametrize("field", ["event", "id"])
def test_line_break_in_event_or_id_raises(field: str, bad: str) -> None:
    """``event`` and ``id`` are single-line fields: a CR or LF cannot be encoded."""
    for data in ("x", "two\nlines", None):
        event = SSEEvent(data=data)._replace(**{field: bad})
        with pytest.raises(ValueError, match=field):
            encode_event(event)
        with pytest.raises(ValueError, match=field):
            encode_events([SSEEvent(data="fine"), event])


def test_encode_events_is_one_utf8_body_in_order() -> None:
    """Several events become one body chunk, in order, UTF-8 encoded."""
    events = [SSEEvent(data="ä"), SSEEvent(data="b", event="e"), SSEEvent(data=None, id="3")]
    body = encode_events(events)
    assert body == "".join(encode_event(e) for e in events).encode("utf-8")
    assert [without_size(e) for e in roundtrip(events)] == events
    assert encode_events([]) == b""


def test_fixture_reencodes_to_identical_events(fixture_name: str) -> None:
    """Every recorded event survives encode → decode (the JSON text is kept byte for byte)."""
    events = fixture_events(fixture_name)
    again = roundtrip(events)
    assert [without_size(e) for e in again] == [without_size(e) for e in events]
    # The recordings use exactly the encoder's syntax, so even the bytes are the same (but for
    # comment blocks, which are no events).
    blocks = fixture_bytes(fixture_name).split(b"\n\n")
    body = b"".join(b + b"\n\n" for b in blocks[:-1] if not b.startswith(b":"))
    assert encode_events(events) == body


_NO_SURROGATES = st.characters(blacklist_categories=("Cs",))
# Data from a decoded stream never holds a CR (it ends lines); LF is the line separator.
_DATA = st.text(_NO_SURROGATES.filter(lambda c: c != "\r"), max_size=60)
_LINE = st.text(_NO_SURROGATES.filter(lambda c: c not in "\r\n"), max_size=30)
_ID = st.text(_NO_SURROGATES.filter(lambda c: c not in "\r\n\x00"), max_size=30)

_EVENTS = st.builds(
    # explicit fields only: ``wire_size`` is the decoder's to set, never an input
    lambda data, event, id, retry: SSEEvent(data=data, event=event, id=id, retry=retry),
    data=st.none() | _DATA,
    event=st.none() | _LINE,
    id=st.none() | _ID,
    retry=st.none() | st.integers(min_value=0, max_value=10**12),
).filter(lambda e: e.data is not None or e.id is not None or e.retry is not None)


@settings(deadline=None, max_examples=300, derandomize=True, database=None)
@given(events=st.lists(_EVENTS, max_size=8), cuts=st.lists(st.integers(min_value=1), max_size=6))
def test_roundtrip_property(events: list[SSEEvent], cuts: list[int]) -> None:
    """Any events (multi-line, leading spaces, empty, id/retry-only, any Unicode) survive
    encode → decode, whatever the read splits of the body."""
    body = encode_events(events)
    points = sorted({c % len(body) for c in cuts} - {0}) if body else []
    decoder = SSEDecoder()
    decoded: list[SSEEvent] = []
    for a, b in zip([0, *points], [*points, len(body)], strict=True):
        if b > a:
            decoded += decoder.feed(body[a:b])
    decoded += decoder.feed(b"")
    assert not decoder.truncated
    assert [without_size(e) for e in decoded] == events
    assert sum(e.wire_size for e in decoded) == len(body)


def test_carriage_return_in_data_is_refused() -> None:
    """A CR in data would be read back as a line break, changing the event."""
    with pytest.raises(ValueError, match="carriage return"):
        encode_event(SSEEvent(data="a\rb"))
