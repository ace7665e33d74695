"""Incremental SSE decoder: bytes in, :class:`SSEEvent` out, no IO.

Implements the event stream interpretation of the WHATWG HTML Standard, "Server-sent events"
§9.2.6: LF, CR and CRLF line ends (also when a CRLF pair is split across reads), comment lines,
the `event`/`data`/`id`/`retry` fields, multi-line data, a leading UTF-8 BOM, unknown fields
ignored. Shaped like h11: :meth:`SSEDecoder.receive_data` takes bytes (``b""`` means EOF),
:meth:`SSEDecoder.next_event` returns an event, :data:`NEED_DATA` or :data:`END`.

Bytes are decoded only once a line is complete. Line terminators are ASCII and never occur inside
a multi-byte UTF-8 sequence, so a code point split across reads is never decoded early and no
U+FFFD is produced by framing. Invalid UTF-8 is not replaced either: it is decoded with the
``surrogateescape`` error handler (PEP 383), so the encoder writes the very bytes that came (a
browser then replaces them itself, as it would without a proxy). Such data is never valid JSON
(orjson refuses lone surrogates), so the event is forwarded verbatim, never merged.

Deliberate divergences from the spec, each because streamhop is a proxy, not a browser:

* a block with only `id`/`retry` fields is surfaced (``data=None``) so it can be forwarded;
* an event is bounded by ``max_event_bytes``; past it :class:`EventTooLargeError` is raised
  instead of buffering without limit (the spec sets no bound);
* at EOF an unterminated event is discarded as the spec says, but :attr:`SSEDecoder.truncated`
  tells the caller, so a stream that ended mid-event is reported rather than silently shortened.
"""

from __future__ import annotations

from collections import deque
from typing import Final

from streamhop.middleware import defaults
from streamhop.middleware.errors import EventTooLargeError, SSEProtocolError
from streamhop.middleware.sse.events import SSEEvent


class _Sentinel:
    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


NEED_DATA: Final = _Sentinel("NEED_DATA")
"""Returned by :meth:`SSEDecoder.next_event` when more bytes are needed."""
END: Final = _Sentinel("END")
"""Returned by :meth:`SSEDecoder.next_event` once EOF was received and every event was returned."""

DEFAULT_MAX_EVENT_BYTES: Final = defaults.MAX_EVENT_BYTES
_BOM: Final = b"\xef\xbb\xbf"


class SSEDecoder:
    """Frames an SSE byte stream into events.

    Args:
        max_event_bytes: largest event accepted, in bytes on the wire (all its lines and line
            terminators, counting a partial line still being received). Default 1 MiB.

    Raises:
        EventTooLargeError: from :meth:`receive_data` when the event being received grows past
            ``max_event_bytes``. The decoder is unusable afterwards.
        SSEProtocolError: from :meth:`receive_data` after EOF or after an error.
    """

    __slots__ = (
        "_buf",
        "_consumed",
        "_data",
        "_eof",
        "_error",
        "_event",
        "_event_bytes",
        "_id",
        "_max",
        "_ready",
        "_retry",
        "_skip_lf",
        "_started",
        "comment",
        "truncated",
    )

    def __init__(self, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        if max_event_bytes <= 0:
            raise ValueError(f"max_event_bytes must be > 0, got {max_event_bytes}")
        self._max = max_event_bytes
        self._buf = bytearray()
        self._ready: deque[SSEEvent] = deque()
        self._consumed = 0  # stream bytes before self._buf
        self._skip_lf = False  # last processed byte was CR: a following LF ends the same line
        self._started = False  # BOM check done
        self._eof = False
        self._error = False
        self._data: list[bytes] | None = None
        self._event: bytes | None = None
        self._id: bytes | None = None
        self._retry: int | None = None
        self._event_bytes = 0
        self.truncated = False
        """True when EOF arrived inside an unterminated event (those bytes were discarded)."""
        self.comment: bytes | None = None
        """The last comment line received (``:`` included, no line end), until the caller
        clears it; comments are never events (§9.2.6), but a proxy may forward a keep-alive."""

    def receive_data(self, data: bytes) -> None:
        """Feed bytes read from the stream; ``b""`` signals EOF.

        Raises:
            EventTooLargeError: the current event is larger than ``max_event_bytes``.
            SSEProtocolError: data after EOF, or after an earlier error.
        """
        if self._eof or self._error:
            raise SSEProtocolError("SSEDecoder.receive_data called after EOF or after an error")
        if not data:
            self._eof = True
            if (
                self._buf
                or self._data is not None
                or self._event is not None
                or self._id is not None
                or self._retry is not None
            ):
                self.truncated = True
            self._buf.clear()
            return
        buf = self._buf
        if (
            not buf
            and self._started
            and self._event_bytes == 0
            and self._data is None
            and self._event is None
            and self._id is None
            and self._retry is None
            and not self._skip_lf
            and data.endswith(b"\n\n")
            and b"\r" not in data
        ):
            self._whole_events(data)
            return
        if self._skip_lf:
            self._skip_lf = False
            if data[0] == 0x0A:
                data = data[1:]
                self._consumed += 1
                if not data:
                    return
        buf += data
        if not self._started:
            if len(buf) < 3 and _BOM.startswith(bytes(buf)):
                return
            self._started = True
            if buf.startswith(_BOM):
                del buf[:3]
                self._consumed += 3
        end = max(buf.rfind(b"\n"), buf.rfind(b"\r"))
        if end < 0:
            if len(buf) + self._event_bytes > self._max:
                self._fail(len(buf))
            return
        region = bytes(buf[: end + 1])
        del buf[: end + 1]
        if region[-1] == 0x0D and not buf:
            # Only when the CR was the last byte read: an LF in the next read may complete the
            # CRLF. Bytes after the CR (a partial line) mean a later LF ends that line instead.
            self._skip_lf = True
        if 0x0D in region:
            region = region.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        self._consumed += end + 1
        self._lines(region)
        if buf and len(buf) + self._event_bytes > self._max:
            self._fail(len(buf))

    def next_event(self) -> SSEEvent | _Sentinel:
        """Return the next complete event, :data:`NEED_DATA`, or :data:`END` after EOF."""
        if self._ready:
            return self._ready.popleft()
        return END if self._eof else NEED_DATA

    def feed(self, data: bytes) -> list[SSEEvent]:
        """:meth:`receive_data` then return every complete event (the hot-path form).

        Raises:
            The errors of :meth:`receive_data`.
        """
        self.receive_data(data)
        ready = self._ready
        if not ready:
            return []
        events = list(ready)
        ready.clear()
        return events

    def _fail(self, tail: int, unparsed: int = 0) -> None:
        # ``unparsed``: bytes already counted in ``_consumed`` that lie after the current line.
        self._error = True
        size = self._event_bytes + tail
        raise EventTooLargeError(self._max, size, self._consumed - unparsed - self._event_bytes)

    def _whole_events(self, data: bytes) -> None:
        """Fast path: ``data`` holds only whole LF-terminated events and no state is pending.

        This is how fast providers' reads usually look. The common shapes (``data: X`` and
        ``event: E`` + ``data: X``) become events without the per-line state machine; any other
        block goes through :meth:`_lines`, which gives the same result for it.
        """
        limit = self._max
        ready = self._ready
        for block in data.split(b"\n\n")[:-1]:
            size = len(block) + 2
            self._consumed += size
            if size > limit:
                # Let the line-by-line path apply the bound (and report where the event began)
                # exactly as for any other read boundary: a split never decides acceptance.
                self._lines(block + b"\n\n")
                continue
            if block.startswith(b"data: ") and b"\n" not in block:
                ready.append(
                    SSEEvent(block[6:].decode("utf-8", "surrogateescape"), None, None, None, size)
                )
                continue
            if block.startswith(b"event: "):
                nl = block.find(b"\n")
                if nl > 0 and block.startswith(b"data: ", nl + 1) and block.find(b"\n", nl + 1) < 0:
                    ready.append(
                        SSEEvent(
                            block[nl + 7 :].decode("utf-8", "surrogateescape"),
                            block[7:nl].decode("utf-8", "surrogateescape"),
                            None,
                            None,
                            size,
                        )
                    )
                    continue
            self._lines(block + b"\n\n")

    def _lines(self, region: bytes) -> None:
        # region ends with b"\n"; the last split element is the empty remainder after it.
        lines = region.split(b"\n")
        lines.pop()
        limit = self._max
        parsed = 0
        for line in lines:
            parsed += len(line) + 1
            if not line:
                self._dispatch()
                continue
            self._event_bytes += len(line) + 1
            if self._event_bytes > limit:
                self._fail(0, len(region) - parsed)
            if line[0] == 0x3A:  # ":" comment
                self.comment = line
                continue
            colon = line.find(b":")
            if colon < 0:
                name, value = line, b""
            else:
                name = line[:colon]
                value = line[colon + 1 :]
                if value[:1] == b" ":
                    value = value[1:]
            if name == b"data":
                if self._data is None:
                    self._data = [value]
                else:
                    self._data.append(value)
            elif name == b"event":
                self._event = value
            elif name == b"id":
                if b"\x00" not in value:
                    self._id = value
            elif name == b"retry" and value.isdigit():
                # bytes.isdigit is true for ASCII digits only, as the spec requires.
                self._retry = int(value)
            # any other field name is ignored (§9.2.6)

    def _dispatch(self) -> None:
        data = self._data
        size = self._event_bytes + 1
        if data is None and self._id is None and self._retry is None:
            # Only comments or an `event` field: nothing is dispatched (§9.2.6).
            self._event = None
            self._event_bytes = 0
            return
        event = self._event
        ident = self._id
        self._ready.append(
            SSEEvent(
                data=None
                if data is None
                else (data[0] if len(data) == 1 else b"\n".join(data)).decode(
                    "utf-8", "surrogateescape"
                ),
                event=None if event is None else event.decode("utf-8", "surrogateescape"),
                id=None if ident is None else ident.decode("utf-8", "surrogateescape"),
                retry=self._retry,
                wire_size=size,
            )
        )
        self._data = None
        self._event = None
        self._id = None
        self._retry = None
        self._event_bytes = 0
