"""The ``[record]`` table: which streams are written to disk for replay, where, and the bounds.

Recording is off while ``dir`` is empty. ``routes`` names route prefixes exactly as configured
(checked against ``[[routes]]`` by :mod:`.load`); empty means every route. The directory itself
is created (mode 0700) when the sidecar starts (:mod:`streamhop.sidecar.recording`), not here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from streamhop.middleware.errors import ConfigError
from streamhop.sidecar.config.model import RecordConfig, RouteConfig
from streamhop.sidecar.config.readers import no_unknown, read_bool, read_int, read_num, read_str

MIN_RECORDING_BYTES = 1024
"""Smallest ``max_recording_bytes`` (and ``max_bytes``) accepted."""


def record_config(t: Mapping[str, Any]) -> RecordConfig:
    """``[record]`` as a :class:`~.model.RecordConfig` (absent keys: the defaults).

    Raises:
        ConfigError: an unknown key, a wrong type, ``sample`` outside 0..1, a bound below
            :data:`MIN_RECORDING_BYTES`, ``max_recording_bytes`` above ``max_bytes`` (no
            recording could be kept; unset, it is lowered to ``max_bytes``), or ``routes`` that is
            not a list of prefixes.
    """
    no_unknown("record", t, set(RecordConfig.__dataclass_fields__))
    d = RecordConfig()
    sample = read_num(t, "record", "sample", d.sample, minimum=0)
    if not sample <= 1 or math.isnan(sample):
        raise ConfigError("record.sample", f"must be between 0 and 1, got {sample}")
    max_bytes = read_int(t, "record", "max_bytes", d.max_bytes, minimum=MIN_RECORDING_BYTES)
    # Unset, it follows a small max_bytes down: only a value written in the file can conflict.
    max_recording_bytes = read_int(
        t,
        "record",
        "max_recording_bytes",
        min(d.max_recording_bytes, max_bytes),
        minimum=MIN_RECORDING_BYTES,
    )
    if max_recording_bytes > max_bytes:
        raise ConfigError(
            "record.max_recording_bytes",
            f"must be <= max_bytes={max_bytes} (one recording must fit), got {max_recording_bytes}",
        )
    routes = t.get("routes", list(d.routes))
    if not isinstance(routes, list) or not all(
        isinstance(r, str) and r.startswith("/") for r in routes
    ):
        raise ConfigError("record.routes", 'expected a list of route prefixes (e.g. ["/openai"])')
    return RecordConfig(
        dir=read_str(t, "record", "dir", d.dir),
        sample=sample,
        max_bytes=max_bytes,
        max_recording_bytes=max_recording_bytes,
        routes=tuple(routes),
        record_request=read_bool(t, "record", "record_request", d.record_request),
    )


def check_record_routes(record: RecordConfig, routes: Sequence[RouteConfig]) -> None:
    """Every prefix in ``[record] routes`` is a configured route's.

    Raises:
        ConfigError: ``record.routes[i]`` names no route (with the configured prefixes).
    """
    prefixes = [route.prefix for route in routes]
    for i, prefix in enumerate(record.routes):
        if prefix not in prefixes:
            raise ConfigError(
                f"record.routes[{i}]", f"{prefix!r} is not a route prefix; routes: {prefixes}"
            )
