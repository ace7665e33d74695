"""The EventSource conformance cases, one per rule of the WHATWG HTML Standard, §9.2
"Server-sent events" (https://html.spec.whatwg.org/multipage/server-sent-events.html).

Sections cited: §9.2.3 "Processing model" (status and MIME type checks, reestablishing the
connection, the reconnection time, the `Last-Event-ID` request header), §9.2.4 "The
`Last-Event-ID` header", §9.2.5 "Parsing an event stream" (the ABNF) and §9.2.6 "Interpreting an
event stream" (decoding, line ends, fields, dispatch).

Each case is what an upstream writes on each connection of one ``EventSource`` (raw bytes, in
one write or several), and what the spec says the page then observes: per connection an ``open``,
the dispatched events as ``(type, data, lastEventId)``, and the ``error`` that starts the next
reconnect; the ``Last-Event-ID`` bytes each request must carry; the reconnection time the browser
must wait. The page stops a case after its last connection closes, so no case waits on the
browser's default reconnection time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

Event = tuple[str, str, str]
"""A dispatched event as the page sees it: ``(type, data, lastEventId)``."""

Entry = tuple[str, ...]
"""One thing the page observed, in order: ``("open",)``, ``("event", type, data, lastEventId)``,
``("reconnect",)`` (``error`` with ``readyState`` CONNECTING) or ``("failed",)`` (``error`` with
``readyState`` CLOSED)."""

ELLIPSIS: Final = "\u2026"
"""U+2026 HORIZONTAL ELLIPSIS, ``e2 80 a6`` in UTF-8: a non-ASCII event id."""


@dataclass(frozen=True, slots=True)
class Connection:
    """One connection of a case.

    Attributes:
        writes: the response body, as the upstream writes it (several items: several reads,
            written ``SPLIT_PAUSE_S`` apart).
        events: what the spec says the page gets dispatched from this body.
        last_event_id: the raw ``Last-Event-ID`` header this request must carry (``None``: none).
    """

    writes: tuple[bytes, ...]
    events: tuple[Event, ...] = ()
    last_event_id: bytes | None = None


@dataclass(frozen=True, slots=True)
class Case:
    """One rule of the spec, as a script for the upstream and the observation it implies.

    Attributes:
        name: the case's id (also a URL path segment).
        section: the section of the HTML Standard the rule is in.
        rule: the rule, in the spec's words (abridged).
        connections: the connections the browser makes, in order.
        content_type: the response's ``Content-Type``.
        status: the response's status (anything but 200 fails the connection).
        reconnect_ms: the reconnection time the browser must wait between connections.
        types: event types the page listens for besides ``message`` and ``error``.
    """

    name: str
    section: str
    rule: str
    connections: tuple[Connection, ...]
    content_type: str = "text/event-stream"
    status: int = 200
    reconnect_ms: int | None = None
    types: tuple[str, ...] = field(default=())

    @property
    def fails(self) -> bool:
        """The spec says the browser fails the connection (no open, no reconnect)."""
        return self.status != 200 or not self.content_type.lower().startswith("text/event-stream")

    def expected_entries(self) -> tuple[Entry, ...]:
        """What the page observes according to the spec."""
        if self.fails:
            return (("failed",),)
        entries: list[Entry] = []
        for conn in self.connections:
            entries.append(("open",))
            entries.extend(("event", *event) for event in conn.events)
            entries.append(("reconnect",))
        return tuple(entries)

    def expected_last_event_ids(self) -> tuple[bytes | None, ...]:
        """The ``Last-Event-ID`` header of each request according to the spec."""
        return tuple(conn.last_event_id for conn in self.connections)


def one(body: bytes, *events: Event) -> tuple[Connection, ...]:
    """A single connection whose body is written at once."""
    return (Connection((body,), events),)


def message(data: str, last_event_id: str = "") -> Event:
    return ("message", data, last_event_id)


CASES: Final[tuple[Case, ...]] = (
    Case(
        "bom",
        "§9.2.6",
        "Streams must be decoded using the UTF-8 decode algorithm [which] strips one leading "
        "UTF-8 Byte Order Mark (BOM), if any. (§9.2.5: stream = [ bom ] *event end-of-line)",
        one(b"\xef\xbb\xbfdata: after a BOM\n\n", message("after a BOM")),
    ),
    Case(
        "bom-twice",
        "§9.2.6",
        "UTF-8 decode strips *one* leading BOM: a second one is part of the first field name "
        "(U+FEFF 'data', an unknown field, ignored).",
        one(
            b"\xef\xbb\xbf\xef\xbb\xbfdata: one\n\ndata: two\n\n",
            message("two"),
        ),
    ),
    Case(
        "comments",
        "§9.2.6",
        "If the line starts with a U+003A COLON character (:): ignore the line.",
        one(
            b": keep-alive\n\n:\ndata: a\n: between data lines\n:data: not data\ndata: b\n\n",
            message("a\nb"),
        ),
    ),
    Case(
        "line-end-lf",
        "§9.2.6",
        "A line ends with a single U+000A LINE FEED (LF) character not preceded by a CR.",
        one(b"data: a\ndata: b\n\ndata: c\n\n", message("a\nb"), message("c")),
    ),
    Case(
        "line-end-cr",
        "§9.2.6",
        "A line ends with a single U+000D CARRIAGE RETURN (CR) character not followed by a LF.",
        one(b"data: a\rdata: b\r\rdata: c\r\r", message("a\nb"), message("c")),
    ),
    Case(
        "line-end-crlf",
        "§9.2.6",
        "A line ends with a U+000D CARRIAGE RETURN U+000A LINE FEED (CRLF) character pair.",
        one(b"data: a\r\ndata: b\r\n\r\ndata: c\r\n\r\n", message("a\nb"), message("c")),
    ),
    Case(
        "line-end-mixed",
        "§9.2.6",
        "CRLF, a lone LF and a lone CR are all line ends, and may be mixed in one stream.",
        one(
            b"data: a\r\ndata: b\rdata: c\n\r\ndata: d\n\r",
            message("a\nb\nc"),
            message("d"),
        ),
    ),
    Case(
        "line-end-crlf-split",
        "§9.2.6",
        "A CR followed by a LF is one line end (CRLF), also when the LF arrives in a later read.",
        (
            Connection(
                (b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n"),
                (message("a\nb"),),
            ),
        ),
    ),
    Case(
        "nul-in-data",
        "§9.2.6",
        "data: append the field value to the data buffer (U+0000 NULL is kept as is).",
        one(b"data: a\x00b\n\n", message("a\x00b")),
    ),
    Case(
        "utf-8",
        "§9.2.6",
        "Streams must be decoded using the UTF-8 decode algorithm.",
        one(
            "data: café ☕ 日本 👩‍💻\n\n".encode(),
            message("café ☕ 日本 👩‍💻"),
        ),
    ),
    Case(
        "utf-8-split",
        "§9.2.6",
        "The stream is decoded as one UTF-8 stream: a code point split across reads is one "
        "character.",
        (
            Connection(
                (b"data: \xf0\x9f", b"\x91\xa9 x\xc3", b"\xa9\n\n"),
                (message("\U0001f469 x\u00e9"),),
            ),
        ),
    ),
    Case(
        "utf-8-invalid",
        "§9.2.6",
        "UTF-8 decode: a byte sequence that is not UTF-8 becomes U+FFFD REPLACEMENT CHARACTER.",
        one(b"data: a\xffb\xc3\n\n", message("a\ufffdb\ufffd")),
    ),
    Case(
        "id",
        "§9.2.6",
        "id: set the last event ID buffer to the field value; dispatch sets the event's "
        "lastEventId to it, and the buffer does not get reset.",
        one(
            b"id: 1\ndata: a\n\ndata: b\n\nid: 2\ndata: c\n\n",
            message("a", "1"),
            message("b", "1"),
            message("c", "2"),
        ),
    ),
    Case(
        "id-with-nul",
        "§9.2.6",
        "id: if the field value does not contain U+0000 NULL, set the last event ID buffer; "
        "otherwise, ignore the field.",
        one(
            b"id: 1\ndata: a\n\nid: 2\x003\ndata: b\n\n",
            message("a", "1"),
            message("b", "1"),
        ),
    ),
    Case(
        "id-without-data",
        "§9.2.6",
        "Dispatch: first set the last event ID string to the last event ID buffer; only then, "
        "if the data buffer is empty, return without dispatching.",
        one(b"id: 7\n\ndata: a\n\n", message("a", "7")),
    ),
    Case(
        "id-empty-resets",
        "§9.2.6, §9.2.3",
        "id with an empty value sets the last event ID buffer to the empty string; a reconnect "
        "sends Last-Event-ID only if the last event ID string is not empty.",
        (
            Connection(
                (b"retry: 300\nid: 5\ndata: a\n\nid:\ndata: b\n\n",),
                (message("a", "5"), message("b", "")),
            ),
            Connection((b"data: c\n\n",), (message("c", ""),), last_event_id=None),
        ),
        reconnect_ms=300,
    ),
    Case(
        "retry",
        "§9.2.6, §9.2.3",
        "retry: if the field value consists of only ASCII digits, interpret it as an integer in "
        "base ten and set the reconnection time to it; reestablishing waits that long.",
        (
            Connection((b"retry: 0500\ndata: a\n\n",), (message("a"),)),
            Connection((b"data: b\n\n",), (message("b"),)),
        ),
        reconnect_ms=500,
    ),
    Case(
        "retry-invalid",
        "§9.2.6",
        "retry: a field value that is not only ASCII digits is ignored (one leading space is "
        "stripped first, so '  9' is not a number).",
        (
            Connection(
                (
                    b"retry: 400\n\n"
                    b"retry: 12x\nretry: -1\nretry: 1.5\nretry: +9\nretry:  9\n"
                    b"retry: \xef\xbc\x99\n"  # U+FF19 FULLWIDTH DIGIT NINE: a digit, not ASCII
                    b"retry: 0x10\ndata: a\n\n",
                ),
                (message("a"),),
            ),
            Connection((b"data: b\n\n",), (message("b"),)),
        ),
        reconnect_ms=400,
    ),
    Case(
        "unknown-fields",
        "§9.2.6",
        "Otherwise [the field name is not event, data, id or retry]: the field is ignored "
        "(field names are compared exactly: case and spaces count).",
        one(
            b"foo: bar\nDATA: x\nData: y\n data: z\nevent : w\nid : 9\ndata: a\n\n",
            message("a"),
        ),
    ),
    Case(
        "field-without-colon",
        "§9.2.6",
        "A line that is not empty and has no colon: process the field using the whole line as "
        "the field name, and the empty string as the field value.",
        one(
            b"data\ndata\ndata: a\n\nevent: ignored\nevent\ndata: b\n\n",
            message("\n\na"),
            message("b"),
        ),
    ),
    Case(
        "leading-space",
        "§9.2.6",
        "If value starts with a U+0020 SPACE character, remove it from value (one space only; "
        "tabs and trailing spaces stay).",
        one(
            b"data:a\ndata: b\ndata:  c\ndata:\td\ndata:   \n\n",
            message("a\nb\n c\n\td\n  "),
        ),
    ),
    Case(
        "colon-in-value",
        "§9.2.6",
        "field is the characters before the first colon, value those after it.",
        one(b"data: a: b\ndata::c\n\n", message("a: b\n:c")),
    ),
    Case(
        "multi-line-data",
        "§9.2.6",
        "data: append the value and then a single U+000A LINE FEED to the data buffer; dispatch "
        "removes one trailing LF.",
        one(b"data: a\ndata:\ndata: b\ndata:\n\n", message("a\n\nb\n")),
    ),
    Case(
        "empty-data",
        "§9.2.6",
        "'data:' or 'data' appends a LF: the data buffer is not empty, so an event with empty "
        "data is dispatched.",
        one(b"data:\n\ndata\n\n", message(""), message("")),
    ),
    Case(
        "no-data-no-dispatch",
        "§9.2.6",
        "Dispatch: if the data buffer is an empty string, set the data buffer and the event type "
        "buffer to the empty string and return (blank lines and a lone event field dispatch "
        "nothing, and the type does not carry over).",
        one(b"\n\n\nevent: named\n\ndata: a\n\n", message("a")),
        types=("named",),
    ),
    Case(
        "event-names",
        "§9.2.6",
        "event: set the event type buffer to the field value; dispatch uses it as the type if it "
        "is not empty (else 'message') and then resets it.",
        one(
            b"event: add\ndata: 1\n\nevent: remove\ndata: 2\n\ndata: 3\n\n"
            b"event:\ndata: 4\n\nevent: first\nevent: last\ndata: 5\n\n"
            + "event: délai\ndata: 6\n\n".encode(),
            ("add", "1", ""),
            ("remove", "2", ""),
            message("3"),
            message("4"),
            ("last", "5", ""),
            ("délai", "6", ""),
        ),
        types=("add", "remove", "first", "last", "délai"),
    ),
    Case(
        "event-named-error",
        "§9.2.6",
        "The event type buffer becomes the event's type whatever it says: 'event: error' "
        "dispatches a MessageEvent named error (not a connection error; no reconnect).",
        one(b"event: error\ndata: e\n\ndata: after\n\n", ("error", "e", ""), message("after")),
    ),
    Case(
        "data-verbatim",
        "§9.2.6",
        "data: append the field value to the data buffer: the text is kept as it came, JSON or "
        "not (spacing included).",
        one(
            b'data: {"x": 1,  "y": [1, 2]}\n\ndata: {"error": "not an error"}\n\n',
            message('{"x": 1,  "y": [1, 2]}'),
            message('{"error": "not an error"}'),
        ),
    ),
    Case(
        "mime-charset",
        "§9.2.3",
        "A Content-Type of text/event-stream (MIME type parameters do not matter) announces "
        "the connection and the body is interpreted.",
        one(b"data: a\n\n", message("a")),
        content_type="text/event-stream; charset=utf-8",
    ),
    Case(
        "mime-case",
        "§9.2.3",
        "The Content-Type is compared as a MIME type: its essence is case-insensitive.",
        one(b"data: a\n\n", message("a")),
        content_type="Text/Event-Stream;Charset=UTF-8",
    ),
    Case(
        "mime-not-event-stream",
        "§9.2.3",
        "If res's Content-Type is not text/event-stream, fail the connection (no open, no "
        "reconnect, no event).",
        one(b"data: a\n\n"),
        content_type="text/plain",
    ),
    Case(
        "status-204",
        "§9.2.3",
        "If res's status is not 200, fail the connection (204 No Content: the server says stop).",
        one(b""),
        status=204,
    ),
    Case(
        "eof-mid-event",
        "§9.2.6, §9.2.3",
        "Once the end of the file is reached, any pending data must be discarded: an event "
        "without its final empty line is not dispatched (nor its id); the browser reconnects.",
        (
            Connection(
                (b"retry: 300\ndata:test1\n\nid:test\ndata:test2\n",),
                (message("test1"),),
            ),
            Connection((b"data:test3\n\n",), (message("test3"),), last_event_id=None),
        ),
        reconnect_ms=300,
    ),
    Case(
        "eof-mid-line",
        "§9.2.6, §9.2.3",
        "The end of the file in the middle of a line: the pending line and event are discarded.",
        (
            Connection(
                (b"retry: 300\ndata:test1\n\nid:test\ndata:test2",),
                (message("test1"),),
            ),
            Connection((b"data:test3\n\n",), (message("test3"),), last_event_id=None),
        ),
        reconnect_ms=300,
    ),
    Case(
        "reconnect-last-event-id",
        "§9.2.3, §9.2.4",
        "Reestablishing the connection: if the last event ID string is not empty, set "
        "`Last-Event-ID` to it, encoded as UTF-8.",
        (
            Connection((b"retry: 300\nid: 42\ndata: a\n\n",), (message("a", "42"),)),
            Connection((b"data: b\n\n",), (message("b", "42"),), last_event_id=b"42"),
        ),
        reconnect_ms=300,
    ),
    Case(
        "reconnect-non-ascii-id",
        "§9.2.3, §9.2.4",
        "Last-Event-ID is the last event ID string encoded as UTF-8: U+2026 is sent as e2 80 a6.",
        (
            Connection(
                ("retry: 300\nid: …\ndata: a\n\n".encode(),),
                (message("a", ELLIPSIS),),
            ),
            Connection(
                (b"data: b\n\n",), (message("b", ELLIPSIS),), last_event_id=ELLIPSIS.encode()
            ),
        ),
        reconnect_ms=300,
    ),
    Case(
        "reconnect-non-ascii-id-again",
        "§9.2.3, §9.2.4",
        "The last event ID string persists until the server sets another: every reconnect "
        "sends it again, as the same UTF-8 bytes.",
        (
            Connection(
                ("retry: 300\nid: …\ndata: a\n\n".encode(),),
                (message("a", ELLIPSIS),),
            ),
            Connection(
                (b"data: b\n\n",), (message("b", ELLIPSIS),), last_event_id=ELLIPSIS.encode()
            ),
            Connection(
                (b"data: c\n\n",), (message("c", ELLIPSIS),), last_event_id=ELLIPSIS.encode()
            ),
        ),
        reconnect_ms=300,
    ),
)
