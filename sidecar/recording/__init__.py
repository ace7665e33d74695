"""``[record]``: sampled production streams written to disk, to be replayed by ``streamhop
simulate --replay X.sse --timing X.json`` (docs/recording.md).

One job per module: :mod:`.recorder` (one stream's bytes and read times, in memory, bounded),
:mod:`.timeline` (the ``.json`` format), :mod:`.redact` (which header values are never kept),
:mod:`.store` (the directory: files written, ``max_bytes`` kept by deleting the oldest),
:mod:`.recordings` (the decision per stream and the write at its end), :mod:`.metrics`.

Imports :mod:`~streamhop.sidecar.config` and :mod:`~streamhop.sidecar.observe` only; the
upstream package feeds it.
"""

from __future__ import annotations

from streamhop.sidecar.recording.recorder import StreamRecorder
from streamhop.sidecar.recording.recordings import Recordings

__all__ = ["Recordings", "StreamRecorder"]
