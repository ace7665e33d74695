"""Which header values a recording never holds: credentials, and whatever the config sets.

A header is redacted (its value replaced by :data:`REDACTED`, its name kept so a replay shows
it was there) when its name is one of :data:`CREDENTIAL_HEADERS`, when a ``-``/``_``-separated
part of its name is one of :data:`SECRET_WORDS` (``x-api-key``, ``x-amz-security-token``,
``set-cookie``; not ``x-ratelimit-remaining-tokens``), or when the caller names it: a route's own
``headers`` (the provider key the sidecar adds) and ``[resume] binding_headers``. A URL with
userinfo in any value kept is shown through :func:`~streamhop.sidecar.config.redact_url`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final

from streamhop.sidecar.config import redact_url

REDACTED: Final = "[redacted]"
CREDENTIAL_HEADERS: Final = frozenset(
    ("authorization", "proxy-authorization", "x-api-key", "api-key", "cookie", "set-cookie")
)
SECRET_WORDS: Final = frozenset(
    (
        "auth",
        "authorization",
        "key",
        "apikey",
        "token",
        "secret",
        "cookie",
        "session",
        "password",
        "credential",
        "credentials",
        "signature",
    )
)
_PARTS: Final = re.compile(r"[-_]")


def is_secret(name: str, also: frozenset[str] = frozenset()) -> bool:
    """True when the header ``name`` (any case) may carry a credential (module docstring)."""
    lower = name.lower()
    if lower in CREDENTIAL_HEADERS or lower in also:
        return True
    return any(part in SECRET_WORDS for part in _PARTS.split(lower))


def redact_headers(
    headers: Iterable[tuple[str, str]], also: Iterable[str] = ()
) -> list[tuple[str, str]]:
    """``headers`` (name, value) with every secret value replaced by :data:`REDACTED`.

    Args:
        headers: header pairs, in order (names in any case).
        also: more header names to redact (any case).
    """
    extra = frozenset(name.lower() for name in also)
    return [
        (name, REDACTED if is_secret(name, extra) else redact_url(value)) for name, value in headers
    ]
