"""Resumable streams: the replay log behind ``Last-Event-ID`` (see ``docs/resume.md``).

:func:`build_store` makes the configured store; :mod:`.replay` answers resume requests.
"""

from __future__ import annotations

from collections.abc import Callable

from streamhop.sidecar.config import ResumeConfig
from streamhop.sidecar.resume.store import (
    LogReader,
    LogWriter,
    ResumeError,
    ResumeLogFullError,
    ResumeStore,
    StreamNotFoundError,
    parse_last_event_id,
)

__all__ = [
    "LogReader",
    "LogWriter",
    "ResumeError",
    "ResumeLogFullError",
    "ResumeStore",
    "StreamNotFoundError",
    "build_store",
    "parse_last_event_id",
]


def build_store(
    config: ResumeConfig,
    on_error: Callable[[str], None],
    on_evict: Callable[[str], None] | None = None,
) -> ResumeStore:
    """The store ``config.store`` names (call inside the running event loop).

    Args:
        config: ``[resume]``.
        on_error: called with a failure kind (``write``, ``read``, ``log_full``).
        on_evict: called with a reason each time the memory store drops a log before
            ``window_s`` (:data:`~.memory.EVICTION_REASONS`); Redis evicts nothing itself.
    """
    if config.store == "redis":
        from streamhop.sidecar.resume.redis_store import RedisStore

        return RedisStore(
            config.redis_url,
            config.window_s,
            config.max_stream_bytes,
            on_error,
            signing_key=config.binding_key.encode("utf-8"),
        )
    from streamhop.sidecar.resume.memory import MemoryStore

    return MemoryStore(
        config.window_s,
        config.max_streams,
        config.max_stream_bytes,
        on_error,
        max_total_bytes=config.max_total_bytes,
        on_evict=on_evict,
    )
