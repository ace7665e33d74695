"""Checking the URL-shaped values of the config: base URLs, browser origins and host names.

A URL that may carry credentials (an upstream, a Redis URL) is refused when a reader of it could
see other credentials than the ones sent, or when its log line could not be redacted
(:func:`check_authority`); errors show URLs through :func:`~.model.redact_url` only.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from streamhop.middleware.errors import ConfigError
from streamhop.sidecar.config.model import redact_url


def base_url(key: str, value: str) -> str:
    """An upstream base URL: scheme, host, optional port and path; no query or fragment (the
    request's path is joined to it, so they would end up in the middle of the URL).

    Args:
        key: the dotted key (or ``--upstream``) for the error.
        value: the configured URL.

    Returns:
        ``value`` without trailing ``/``.

    Raises:
        ConfigError: not an http(s) URL with a host, a bad port, a query or fragment, or an
            authority :func:`check_authority` refuses.
    """
    check_authority(key, value)
    parts = urlsplit(value)
    shown = redact_url(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(key, f"expected an http:// or https:// URL, got {shown!r}")
    try:
        parts.port  # noqa: B018 - raises for a port that is not a number in 0..65535
    except ValueError:
        raise ConfigError(key, f"invalid port in {shown!r}") from None
    if parts.query or parts.fragment or "?" in value or "#" in value:
        raise ConfigError(key, f"expected no query or fragment, got {shown!r}")
    return value.rstrip("/")


def check_authority(key: str, value: str) -> None:
    """Refuse a URL whose credentials could be read, or redacted, other than as they are sent.

    Raises:
        ConfigError: whitespace or a control character in it (a URL in a log line ends at
            whitespace, so its userinfo could not be redacted), it cannot be split, or its
            authority holds more than one unescaped ``@`` (yarl, aiohttp and redis-py take
            everything before the last one as userinfo; a reader may take the first).
    """
    if any(c.isspace() or c < " " or c == "\x7f" for c in value):
        raise ConfigError(
            key, "expected no whitespace or control characters (percent-encode them: %20)"
        )
    try:
        # urllib's split, not yarl's: redis-py parses redis_url with it. It delimits the
        # authority as yarl does (yarl's parser is adapted from it) but, unlike yarl, allows a
        # backslash in a Redis password.
        authority = urlsplit(value).netloc
    except ValueError:
        raise ConfigError(key, f"not a valid URL: {redact_url(value)!r}") from None
    if authority.count("@") > 1:
        raise ConfigError(
            key,
            f"more than one '@' before the host in {redact_url(value)!r}: everything before "
            "the last '@' would be the user name and password; percent-encode an '@' in "
            "them as %40",
        )


def origins(key: str, value: Any) -> tuple[str, ...]:
    """An array of serialized origins (RFC 6454 §6.2: ``scheme://host[:port]``, no path).

    Returns:
        The origins, lower case, without trailing ``/``.

    Raises:
        ConfigError: not an array, or an item that is not such an origin (``key[i]``).
    """
    if not isinstance(value, list):
        raise ConfigError(key, 'expected an array of origins, e.g. ["https://app.example.com"]')
    out: list[str] = []
    for i, origin in enumerate(value):
        if not isinstance(origin, str):
            raise ConfigError(f"{key}[{i}]", f"expected a string, got {origin!r}")
        parts = urlsplit(origin)
        if (
            parts.scheme not in ("http", "https")
            or not parts.hostname
            or parts.path not in ("", "/")
            or parts.query
            or parts.fragment
            or parts.username is not None
        ):
            raise ConfigError(
                f"{key}[{i}]",
                f"expected an origin such as 'https://app.example.com' (scheme://host[:port]), "
                f"got {origin!r}",
            )
        out.append(origin.rstrip("/").lower())
    return tuple(out)


def hosts(key: str, value: Any) -> tuple[str, ...]:
    """An array of host names without port (``"*"``: any), as ``Host`` headers are matched.

    Returns:
        The names, lower case, IPv6 literals without brackets.

    Raises:
        ConfigError: not an array of non-empty strings, or an item with ``/`` or a space.
    """
    if not isinstance(value, list) or not all(isinstance(h, str) and h for h in value):
        raise ConfigError(key, 'expected an array of host names, e.g. ["localhost"] or ["*"]')
    out = []
    for i, host in enumerate(value):
        if host != "*" and ("/" in host or " " in host):
            raise ConfigError(f"{key}[{i}]", f"expected a host name without port, got {host!r}")
        out.append(host.strip("[]").lower())
    return tuple(out)
