"""The bounded in-memory log of simulated streams, served at ``/_simulator/streams``.

Tests and benchmarks use it to see what the provider side saw: when the first content event left,
how many events went out, and whether the client (usually the proxy under test) closed the
connection early, and when the simulator noticed. Times are ``time.monotonic()`` seconds, which
on Linux is one system-wide clock, so another process can compare them with its own readings.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Literal

logger = logging.getLogger(__name__)

#: ``complete``: every event written; ``client_closed``: the connection closed first;
#: ``cancelled``: the handler was cancelled with the connection still open (server shutdown).
Outcome = Literal["complete", "client_closed", "cancelled"]

MAX_RECORDS = 1000


@dataclass(slots=True)
class ServedResponse:
    """What happened to one response, streamed or not (a non-streamed one has no events).

    Attributes:
        id: the response's ``x-request-id``.
        path: request path.
        started: ``time.monotonic()`` seconds when the handler began.
        first_content: ``time.monotonic()`` seconds when the first content event was written, or
            ``None`` before that.
        ended: ``time.monotonic()`` seconds of the last write (``complete``) or of noticing the
            close (``client_closed``); ``None`` while running.
        events: SSE events fully written.
        outcome: ``None`` while running, then an :data:`Outcome`.
    """

    id: str
    path: str
    started: float
    first_content: float | None = None
    ended: float | None = None
    events: int = 0
    outcome: Outcome | None = None

    def finish(self, outcome: Outcome) -> None:
        """Stamp the end time and outcome, once, and log one line for the stream."""
        if self.outcome is not None:
            return
        self.ended = time.monotonic()
        self.outcome = outcome
        logger.info(
            "stream end id=%s path=%s outcome=%s events=%d duration_s=%.6f",
            self.id,
            self.path,
            outcome,
            self.events,
            self.ended - self.started,
        )

    def to_json(self) -> dict[str, Any]:
        """Return the record as the JSON object served by ``GET /_simulator/streams``."""
        return {
            "id": self.id,
            "path": self.path,
            "started": self.started,
            "first_content": self.first_content,
            "ended": self.ended,
            "events": self.events,
            "outcome": self.outcome,
        }


class StreamLog:
    """The last :data:`MAX_RECORDS` stream records, oldest first."""

    def __init__(self, max_records: int = MAX_RECORDS) -> None:
        self._records: deque[ServedResponse] = deque(maxlen=max_records)

    def open(self, stream_id: str, path: str, started: float) -> ServedResponse:
        """Add and return the record of a stream that is starting (``started`` in monotonic s)."""
        record = ServedResponse(stream_id, path, started)
        self._records.append(record)
        return record

    def to_json(self) -> list[dict[str, Any]]:
        """Return every kept record as JSON objects, oldest first."""
        return [record.to_json() for record in self._records]

    def clear(self) -> None:
        """Forget every record (running streams keep updating their now unlisted record)."""
        self._records.clear()
