"""Binds a resume log to the caller that started the stream.

A stream id alone must not be enough to read someone else's answer: ids travel in response
headers, browser storage and traces. Each log is stored under a key derived with HMAC-SHA256
(RFC 2104) from the route's prefix, the stream id and the values of the caller's credential
headers (``[resume] binding_headers``: ``Authorization``, ``x-api-key``, ``api-key``, ``Cookie``
by default). A resume recomputes the key from its own route and credentials, so on another route
or with other credentials it finds nothing and gets ``404`` exactly as for an unknown stream.

The HMAC key is ``[resume] binding_key`` (give replicas sharing a Redis store the same one, from
a Secret), or random per process when empty (enough for the ``memory`` store). Callers that send
no credential header (the sidecar adds the provider key itself) all share one fingerprint: for
them the 64-bit random stream id is the only secret (docs/security.md).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable

from streamhop.sidecar.config import ResumeConfig


class ResumeBinding:
    """Computes the store key of a stream's log.

    Args:
        key: the HMAC key (bytes; empty: a random 32-byte key for this process).
        header_names: lower-case names of the headers that identify the caller.
    """

    __slots__ = ("_key", "_names")

    def __init__(self, key: bytes, header_names: Iterable[str]) -> None:
        self._key = key or secrets.token_bytes(32)
        self._names = tuple(sorted({n.lower().encode("latin-1") for n in header_names}))

    @classmethod
    def from_config(cls, config: ResumeConfig) -> ResumeBinding:
        """The binding ``[resume]`` configures."""
        return cls(config.binding_key.encode("utf-8"), config.binding_headers)

    def log_key(self, route: str, stream_id: str, headers: Iterable[tuple[bytes, bytes]]) -> str:
        """The store key of ``stream_id`` on ``route`` for a caller sending ``headers``.

        Args:
            route: the route's ``prefix``.
            stream_id: the public stream id (``X-Streamhop-Stream-Id``).
            headers: the caller's request headers (lower-case names, as in ASGI).

        Returns:
            40 hex digits (160 bits of HMAC-SHA256).
        """
        mac = hmac.new(self._key, digestmod=hashlib.sha256)
        mac.update(route.encode("utf-8", "surrogateescape") + b"\0" + stream_id.encode() + b"\0")
        values: dict[bytes, list[bytes]] = {}
        for name, value in headers:
            lower = name.lower()
            if lower in self._names:
                values.setdefault(lower, []).append(value)
        for name in self._names:
            for value in values.get(name, ()):
                mac.update(name + b"=" + len(value).to_bytes(4, "big") + value)
        return mac.hexdigest()[:40]
