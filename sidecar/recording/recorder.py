"""One stream's recording while it runs: the upstream body bytes exactly as received, and when
each read arrived. Sans-IO: the caller passes the clock.

The bytes are those of the HTTP body after transfer decoding (chunked) and before content
decoding (a gzip body stays gzip): :func:`~streamhop.sidecar.upstream.relay.relay` hands every
body chunk here before it decompresses it. Memory is bounded by ``limit``: past it the recording
is abandoned (:attr:`StreamRecorder.too_large`) and its bytes freed at once; the stream itself
goes on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from streamhop.sidecar.observe.record import StreamRecord
from streamhop.sidecar.recording.redact import redact_headers

__all__ = ["StreamRecorder"]


class StreamRecorder:
    """Bytes and read times of one recorded stream (see the module docstring).

    Args:
        limit: the most body bytes kept (``[record] max_recording_bytes``).
        on_end: called once with this recorder and the stream's record when the stream is over
            (:meth:`end`): the writer's hook.
        request_headers: the headers sent upstream, already redacted.
        request_body: the request body, or ``None`` when it is not to be kept.
        redact: more header names whose values are never kept (:mod:`.redact`).
    """

    __slots__ = (
        "_on_end",
        "_redact",
        "chunks",
        "content_encoding",
        "ended",
        "limit",
        "request_body",
        "request_headers",
        "response_headers",
        "size",
        "times",
        "too_large",
    )

    def __init__(
        self,
        limit: int,
        on_end: Callable[[StreamRecorder, StreamRecord], Any],
        request_headers: Sequence[tuple[str, str]] = (),
        request_body: bytes | None = None,
        redact: Sequence[str] = (),
    ) -> None:
        self.limit = limit
        self._on_end = on_end
        self._redact = tuple(redact)
        self.request_headers = list(request_headers)
        self.request_body = request_body
        self.response_headers: list[tuple[str, str]] = []
        self.content_encoding = "identity"
        self.chunks: list[bytes] = []
        self.times: list[float] = []
        """``time.monotonic()`` seconds at which each of :attr:`chunks` arrived."""
        self.size = 0
        self.too_large = False
        self.ended = False

    def __repr__(self) -> str:
        state = "too large" if self.too_large else f"{len(self.chunks)} reads"
        return f"<StreamRecorder {self.size} bytes {state} limit={self.limit}>"

    def begin(self, raw_headers: Sequence[tuple[bytes, bytes]]) -> None:
        """The SSE answer starts: note its headers (redacted) and its ``Content-Encoding``."""
        headers = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in raw_headers]
        self.response_headers = redact_headers(headers, self._redact)
        for name, value in headers:
            if name.lower() == "content-encoding":
                self.content_encoding = value.strip().lower() or "identity"

    def add(self, chunk: bytes, now: float) -> None:
        """One upstream read of ``chunk`` at ``now`` (``time.monotonic()`` seconds)."""
        if self.too_large:
            return
        size = self.size + len(chunk)
        if size > self.limit:
            self.too_large = True
            self.chunks = []
            self.times = []
            return
        self.size = size
        self.chunks.append(chunk)
        self.times.append(now)

    def body(self) -> bytes:
        """Every recorded byte, in order (the ``.sse`` file)."""
        return b"".join(self.chunks)

    def end(self, record: StreamRecord) -> None:
        """The stream is over (its record final): hand the recording on, once."""
        if not self.ended:
            self.ended = True
            self._on_end(self, record)
