"""The ``[resume]`` table: where the resume log lives, its bounds, and how streams are bound to
their callers.

``${NAME}`` in ``redis_url`` and ``binding_key`` is replaced from the environment (a Redis
password and the shared binding secret belong there, not in the file).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import urlsplit

from streamhop.middleware.defaults import ResumeStoreKind
from streamhop.middleware.errors import ConfigError
from streamhop.sidecar.config.model import ResumeConfig, redact_url
from streamhop.sidecar.config.readers import (
    interpolate,
    no_unknown,
    read_choice,
    read_int,
    read_num,
    read_str,
)
from streamhop.sidecar.config.urls import check_authority

_TOKEN: Final = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def resume_config(t: Mapping[str, Any], env: Mapping[str, str]) -> ResumeConfig:
    """``[resume]`` as a :class:`~.model.ResumeConfig` (absent keys: the defaults).

    Args:
        t: the table.
        env: where ``${NAME}`` is looked up.

    Raises:
        ConfigError: an unknown key, a wrong type, a value below its minimum, a ``redis_url``
            that is not ``redis://``, ``rediss://`` or ``unix://``, no ``binding_key`` with an
            enabled Redis store, or ``binding_headers`` that are not header names.
    """
    no_unknown("resume", t, set(ResumeConfig.__dataclass_fields__))
    d = ResumeConfig()
    store = read_choice(t, "resume", "store", d.store, ResumeStoreKind)
    enabled = t.get("enabled", d.enabled)
    if not isinstance(enabled, bool):
        raise ConfigError("resume.enabled", f"expected true or false, got {enabled!r}")
    redis_url = interpolate(
        "resume.redis_url", read_str(t, "resume", "redis_url", d.redis_url), env
    )
    check_authority("resume.redis_url", redis_url)
    if urlsplit(redis_url).scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(
            "resume.redis_url",
            f"expected a redis://, rediss:// or unix:// URL, got {redact_url(redis_url)!r}",
        )
    binding_key = interpolate(
        "resume.binding_key", read_str(t, "resume", "binding_key", d.binding_key), env
    )
    if store == "redis" and enabled and not binding_key:
        raise ConfigError(
            "resume.binding_key",
            "required with store = 'redis': every replica sharing the store must bind streams "
            'to callers with the same key (e.g. binding_key = "${STREAMHOP_RESUME_KEY}")',
        )
    binding_headers = t.get("binding_headers", list(d.binding_headers))
    if (
        not isinstance(binding_headers, list)
        or not binding_headers
        or not all(isinstance(h, str) and _TOKEN.fullmatch(h) for h in binding_headers)
    ):
        raise ConfigError("resume.binding_headers", "expected a non-empty array of header names")
    return ResumeConfig(
        enabled=enabled,
        store=store,
        redis_url=redis_url,
        window_s=read_num(t, "resume", "window_s", d.window_s, minimum=1),
        max_streams=read_int(t, "resume", "max_streams", d.max_streams, minimum=1),
        max_stream_bytes=read_int(
            t, "resume", "max_stream_bytes", d.max_stream_bytes, minimum=1024
        ),
        max_total_bytes=read_int(t, "resume", "max_total_bytes", d.max_total_bytes, minimum=1024),
        binding_key=binding_key,
        binding_headers=tuple(h.lower() for h in binding_headers),
        handoff_jitter_ms=read_num(
            t, "resume", "handoff_jitter_ms", d.handoff_jitter_ms, minimum=0
        ),
    )
