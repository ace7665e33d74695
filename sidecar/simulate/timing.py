"""Loading a recording's timeline for ``--replay FILE.sse --timing FILE.json``: the bytes cut
into the reads the sidecar saw, each with when to write it.

The timeline is what ``[record]`` writes (docs/recording.md, "The timeline"; version
:data:`TIMELINE_VERSION`). Offsets there count from the request's arrival at the recording
sidecar; a replay counts from the request's arrival here, so every offset is taken relative to
when the recorded request went upstream (``upstream_connected_offset_ms``, else
``upstream_request_offset_ms``, else 0): the replaying provider answers its request as late as
the recorded one answered its own. The recorded status and ``Content-Type`` /
``Content-Encoding`` are sent back (the bytes are as received, so a gzip body stays gzip).

How the recorded stream ended decides how the replay ends (:data:`Ending`): a provider that cut
the connection (``error`` ``disconnected`` or ``truncated``) is cut again; one that went silent
(``read_timeout``) or was still generating when streamhop ended the stream (a
``cancel_reason``) keeps the connection open until the client leaves; anything else ends the
body cleanly.

Read once at start-up; the pair is checked against each other (the reads' byte counts must add
up to the ``.sse`` file's size) and every problem is a :class:`~.errors.SimulatorConfigError`
naming the file.
"""

from __future__ import annotations

import math
import pathlib
from dataclasses import dataclass
from typing import Any, Final, Literal

import orjson

from streamhop.sidecar.simulate.errors import SimulatorConfigError

TIMELINE_VERSION: Final = 1
Ending = Literal["eof", "abort", "hold"]
"""``eof``: end the body; ``abort``: close the connection mid-body; ``hold``: send nothing more
and wait for the client to leave."""
_ABORTED: Final = frozenset(("disconnected", "truncated"))
_SENT_HEADERS: Final = ("content-type", "content-encoding")


@dataclass(frozen=True, slots=True)
class TimedReplay:
    """A recording ready to replay read by read.

    Attributes:
        status: the recorded HTTP status.
        headers: the recorded ``Content-Type`` and ``Content-Encoding`` (when there).
        headers_delay_s: seconds from the request's arrival to the response headers.
        reads: ``(delay_s, chunk)`` per recorded read, delays from the request's arrival, in
            order; the chunks joined are the ``.sse`` file.
        ending: how the body ends (module docstring).
    """

    status: int
    headers: tuple[tuple[str, str], ...]
    headers_delay_s: float
    reads: tuple[tuple[float, bytes], ...]
    ending: Ending


def load_timed_replay(sse_path: pathlib.Path, timing_path: pathlib.Path) -> TimedReplay:
    """Read a recording's ``.sse`` and ``.json`` and cut the bytes into timed reads.

    Raises:
        SimulatorConfigError: (key ``timing``) a file cannot be read, the timeline is not a
            version-1 timeline, or its reads do not add up to the ``.sse`` file's size.
    """
    try:
        raw = sse_path.read_bytes()
        doc = orjson.loads(timing_path.read_bytes())
    except OSError as exc:
        raise SimulatorConfigError(
            "timing", f"cannot read {exc.filename}: {exc.strerror}"
        ) from None
    except orjson.JSONDecodeError as exc:
        raise SimulatorConfigError("timing", f"{timing_path} is not JSON: {exc}") from None
    return timed_replay(raw, doc, str(timing_path), str(sse_path))


def timed_replay(raw: bytes, doc: Any, timing_name: str, sse_name: str) -> TimedReplay:
    """:func:`load_timed_replay` on bytes already read (``*_name`` for the errors)."""

    def bad(reason: str) -> SimulatorConfigError:
        return SimulatorConfigError("timing", f"{timing_name}: {reason}")

    if not isinstance(doc, dict) or doc.get("version") != TIMELINE_VERSION:
        version = doc.get("version") if isinstance(doc, dict) else None
        raise bad(f"expected a streamhop timeline of version 1, got version {version!r}")
    status = doc.get("status")
    if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 599:
        raise bad(f"status must be an HTTP status, got {status!r}")
    anchor = _anchor(doc)
    reads_doc = doc.get("reads")
    if not isinstance(reads_doc, list):
        raise bad("reads must be a list of {offset_ms, bytes}")
    reads: list[tuple[float, bytes]] = []
    pos = 0
    last = 0.0
    for i, read in enumerate(reads_doc):
        offset = _ms(read.get("offset_ms")) if isinstance(read, dict) else None
        size = read.get("bytes") if isinstance(read, dict) else None
        if offset is None or not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise bad(f"reads[{i}] must be {{offset_ms: number >= 0, bytes: integer >= 0}}")
        if offset < last:
            raise bad(f"reads[{i}].offset_ms={offset} is before the read above it ({last})")
        last = offset
        reads.append((max(offset - anchor, 0.0) / 1000.0, raw[pos : pos + size]))
        pos += size
    if pos != len(raw):
        raise bad(
            f"the reads add up to {pos} bytes but {sse_name} holds {len(raw)}: "
            "not the timeline of this recording"
        )
    headers_at = _ms(doc.get("upstream_headers_offset_ms"))
    headers_delay = 0.0 if headers_at is None else max(headers_at - anchor, 0.0) / 1000.0
    first = reads[0][0] if reads else headers_delay
    return TimedReplay(
        status=status,
        headers=_headers(doc.get("response_headers")),
        headers_delay_s=min(headers_delay, first),
        reads=tuple(reads),
        ending=_ending(doc),
    )


def _ms(value: object) -> float | None:
    """``value`` when it is a finite number of milliseconds >= 0 (not a boolean), else ``None``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) and value >= 0 else None


def _anchor(doc: dict[str, Any]) -> float:
    for key in ("upstream_connected_offset_ms", "upstream_request_offset_ms"):
        value = _ms(doc.get(key))
        if value is not None:
            return value
    return 0.0


def _headers(value: object) -> tuple[tuple[str, str], ...]:
    found: dict[str, str] = {}
    if isinstance(value, list):
        for pair in value:
            if isinstance(pair, list) and len(pair) == 2 and all(isinstance(p, str) for p in pair):
                name = pair[0].lower()
                if name in _SENT_HEADERS and name not in found:
                    found[name] = pair[1]
    found.setdefault("content-type", "text/event-stream")
    return tuple(found.items())


def _ending(doc: dict[str, Any]) -> Ending:
    if doc.get("error") in _ABORTED:
        return "abort"
    if doc.get("cancel_reason") is not None or doc.get("error") == "read_timeout":
        return "hold"
    return "eof"
