"""The defaults every surface of streamhop shares: the sidecar's config model
(:mod:`streamhop.sidecar.config.model`), the middleware's options
(:mod:`streamhop.middleware.asgi.options`), the pump's options
(:class:`~streamhop.middleware.pump_types.PumpOptions`) and the engine's own constants import
them from here, so a default is written once. The chart's values schema and docs/config.md are
generated from the config model (``scripts/``), not from this module directly.

Units: seconds (``_S``), milliseconds (``_MS``), bytes (``_BYTES``).
"""

from __future__ import annotations

from typing import Final, Literal

FLUSH_INTERVAL_MS: Final = 20.0
"""The coalescing window: from the first held delta to its write (``[rechunk]
flush_interval_ms``)."""
FLUSH_INTERVAL_S: Final = FLUSH_INTERVAL_MS / 1000.0
MAX_FLUSH_BYTES: Final = 16 * 1024
"""Held wire bytes at which a write is due before the window ends."""
MAX_EVENT_BYTES: Final = 1024 * 1024
"""Largest SSE event accepted from the provider (or app)."""
MAX_PENDING_BYTES: Final = 1024 * 1024
"""Held bytes per stream above which reading stops (backpressure)."""
STALL_TIMEOUT_S: Final = 30.0
"""Seconds a client may accept no bytes before it is dropped (``stall``)."""
DISCONNECT_GRACE_MS: Final = 10_000
"""``[[routes]] disconnect_grace_ms``: how long a generation runs on after its client left
(``on_disconnect = "grace"``) waiting for a resume, before it is cancelled."""
KEEPALIVE_INTERVAL_S: Final = 15.0
"""Seconds of silence before a ``: keep-alive`` comment (WHATWG HTML §9.2.7: "every 15
seconds or so")."""

RechunkMode = Literal["coalesce", "passthrough"]
"""``[rechunk] mode`` / the middleware's ``mode``."""
OnDisconnect = Literal["cancel", "detach", "grace"]
"""``[[routes]] on_disconnect``: what a client leaving does to its generation (docs/resume.md)."""
ResumeStoreKind = Literal["memory", "redis"]
"""``[resume] store``."""
FormatName = Literal["auto", "anthropic", "openai-responses", "openai-chat", "sse"]
"""A stream format by name, or ``auto`` (``FORMAT_NAMES`` of the format registry must equal
it; a test checks)."""
