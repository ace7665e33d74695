"""streamhop's one exception hierarchy.

Every error names what was expected, what came, and where (stream offset, config key), so a log
line is enough to act on. Errors in the provider's stream are *remote* protocol errors (the peer
broke the wire format); errors in streamhop's own use of the engine are *local*.
"""

from __future__ import annotations


class StreamHopError(Exception):
    """Base class of every error streamhop raises on purpose."""


class SSEProtocolError(StreamHopError):
    """The upstream sent bytes that cannot be framed as SSE within streamhop's bounds."""


class EventTooLargeError(SSEProtocolError):
    """One SSE event (or one unterminated line) grew past ``max_event_bytes``.

    Attributes:
        limit: the bound in bytes.
        size: how many bytes were buffered when the bound was crossed.
        offset: byte offset in the stream where the oversized event began.
    """

    def __init__(self, limit: int, size: int, offset: int) -> None:
        super().__init__(
            f"SSE event starting at byte {offset} is larger than max_event_bytes={limit} "
            f"({size} bytes buffered without an event terminator)"
        )
        self.limit = limit
        self.size = size
        self.offset = offset


class ConfigError(StreamHopError):
    """Invalid configuration.

    Attributes:
        key: the dotted config key (``routes[0].upstream``) or flag (``--upstream``).
        reason: what was expected and what came.
    """

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"invalid config {key}: {reason}")
        self.key = key
        self.reason = reason
