"""The timeline of a recording (``<request-id>.json``): what the stream was and when each
upstream read arrived. docs/recording.md documents the format; ``streamhop simulate --timing``
reads it (:mod:`streamhop.sidecar.simulate.timing`).

Offsets are milliseconds from the request's arrival at the sidecar (``received_at``), rounded to
microseconds. ``reads[i].bytes`` are consecutive slices of the ``.sse`` file: their sum is its
size. ``upstream_connected_offset_ms`` is when the request went upstream (after any connect):
a replay writes each read that long after it got the request minus this offset.
"""

from __future__ import annotations

import base64
import datetime
from typing import Any, Final

from streamhop.sidecar.observe.record import StreamRecord
from streamhop.sidecar.recording.recorder import StreamRecorder

TIMELINE_VERSION: Final = 1
OUTCOMES: Final = ("complete", "cancelled", "error")
"""``outcome``: the stream ended as the provider ended it, streamhop ended it early
(``cancel_reason`` says why), or the provider failed it (``error`` says how)."""


def outcome(record: StreamRecord) -> str:
    """One of :data:`OUTCOMES` for a finished stream's record."""
    if record.cancel_reason is not None:
        return "cancelled"
    if record.error is not None:
        return "error"
    return "complete"


def _offset_ms(at: float | None, origin: float) -> float | None:
    return None if at is None else round((at - origin) * 1000.0, 3)


def build_timeline(recorder: StreamRecorder, record: StreamRecord) -> dict[str, Any]:
    """The timeline of a finished recorded stream, as a JSON-ready dict.

    Args:
        recorder: the stream's bytes, read times and (redacted) headers.
        record: the stream's finished record.

    Returns:
        The document of the module docstring (``request_body`` only when the recorder kept it:
        UTF-8 text, or ``request_body_base64`` for other bytes).
    """
    origin = record.received_at
    timeline: dict[str, Any] = {
        "version": TIMELINE_VERSION,
        "request_id": record.request_id,
        "recorded_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds"),
        "route": record.route,
        "method": record.method,
        "path": record.path,
        "model": record.model,
        "status": record.status,
        "format": record.format,
        "outcome": outcome(record),
        "cancel_reason": record.cancel_reason,
        "error": record.error,
        "content_encoding": recorder.content_encoding,
        "bytes": recorder.size,
        "upstream_request_offset_ms": _offset_ms(record.upstream_request_at, origin),
        "upstream_connected_offset_ms": _offset_ms(record.upstream_connected_at, origin),
        "upstream_headers_offset_ms": _offset_ms(record.upstream_headers_at, origin),
        "finished_offset_ms": _offset_ms(record.finished_at, origin),
        "request_headers": [list(pair) for pair in recorder.request_headers],
        "response_headers": [list(pair) for pair in recorder.response_headers],
        "reads": [
            {"offset_ms": round((at - origin) * 1000.0, 3), "bytes": len(chunk)}
            for at, chunk in zip(recorder.times, recorder.chunks, strict=True)
        ],
    }
    body = recorder.request_body
    if body is not None:
        try:
            timeline["request_body"] = body.decode("utf-8")
        except UnicodeDecodeError:
            timeline["request_body_base64"] = base64.b64encode(body).decode("ascii")
    return timeline
