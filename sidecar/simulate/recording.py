"""Loading an SSE recording for ``--replay``: the file cut into events, bytes kept exactly.

An event ends after a blank line (``\\n``, ``\\r\\n`` or ``\\r`` alone, per the WHATWG SSE
grammar), so the concatenation of the events is the file, byte for byte, whatever its line ends.
Trailing bytes without a final blank line form one last event. The file is read once, at start-up,
never in a request handler.
"""

from __future__ import annotations

import pathlib

_BLANK_LINES = (b"\n", b"\r\n", b"\r")


def split_events(raw: bytes) -> tuple[bytes, ...]:
    """Cut an SSE byte stream into events, each ending with its blank line.

    Args:
        raw: the recorded response body.

    Returns:
        The events; ``b"".join(result) == raw``.
    """
    events: list[bytes] = []
    start = 0
    pos = 0
    for line in raw.splitlines(keepends=True):
        pos += len(line)
        if line in _BLANK_LINES:
            events.append(raw[start:pos])
            start = pos
    if start < len(raw):
        events.append(raw[start:])
    return tuple(events)


def load_replay(path: pathlib.Path) -> tuple[bytes, ...]:
    """Read and split a recording.

    Raises:
        OSError: the file cannot be read.
    """
    return split_events(path.read_bytes())
