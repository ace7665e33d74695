"""The tables that shape a stream: ``[rechunk]`` (how events are merged into writes) and
``[backpressure]`` (how much a slow client may hold back, and for how long)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from streamhop.middleware.defaults import RechunkMode
from streamhop.middleware.errors import ConfigError
from streamhop.middleware.rechunk.boundary import FLUSH_BOUNDARIES
from streamhop.sidecar.config.model import BackpressureConfig, RechunkConfig
from streamhop.sidecar.config.readers import (
    no_unknown,
    read_bool,
    read_choice,
    read_int,
    read_num,
    read_str,
)


def rechunk_config(t: Mapping[str, Any]) -> RechunkConfig:
    """``[rechunk]`` as a :class:`~.model.RechunkConfig` (absent keys: the defaults).

    Raises:
        ConfigError: an unknown key, a wrong type, a value below its minimum, or a
            ``flush_boundary`` that is not one of ``FLUSH_BOUNDARIES``.
    """
    no_unknown("rechunk", t, set(RechunkConfig.__dataclass_fields__))
    d = RechunkConfig()
    mode = read_choice(t, "rechunk", "mode", d.mode, RechunkMode)
    boundary = read_str(t, "rechunk", "flush_boundary", d.flush_boundary)
    flush_boundary = next((b for b in FLUSH_BOUNDARIES if b == boundary), None)
    if flush_boundary is None:
        raise ConfigError(
            "rechunk.flush_boundary",
            f"expected one of {', '.join(repr(b) for b in FLUSH_BOUNDARIES)}, got {boundary!r}",
        )
    return RechunkConfig(
        mode=mode,
        flush_interval_ms=read_num(
            t, "rechunk", "flush_interval_ms", d.flush_interval_ms, minimum=0
        ),
        max_flush_bytes=read_int(t, "rechunk", "max_flush_bytes", d.max_flush_bytes, minimum=1),
        max_event_bytes=read_int(t, "rechunk", "max_event_bytes", d.max_event_bytes, minimum=64),
        flush_boundary=flush_boundary,
        max_boundary_wait_ms=read_num(
            t, "rechunk", "max_boundary_wait_ms", d.max_boundary_wait_ms, minimum=0
        ),
        coalesce_reads=read_bool(t, "rechunk", "coalesce_reads", d.coalesce_reads),
    )


def backpressure_config(t: Mapping[str, Any]) -> BackpressureConfig:
    """``[backpressure]`` as a :class:`~.model.BackpressureConfig` (absent keys: the defaults).

    Raises:
        ConfigError: an unknown key, a wrong type, or a value below its minimum (1024 bytes,
            1 ms).
    """
    no_unknown("backpressure", t, set(BackpressureConfig.__dataclass_fields__))
    d = BackpressureConfig()
    return BackpressureConfig(
        max_pending_bytes=read_int(
            t, "backpressure", "max_pending_bytes", d.max_pending_bytes, minimum=1024
        ),
        stall_timeout_s=read_num(
            t, "backpressure", "stall_timeout_s", d.stall_timeout_s, minimum=0.001
        ),
    )
