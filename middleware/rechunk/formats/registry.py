"""The registered formats, and the lookups over them that callers use by format name.

:data:`REGISTERED` is the one list a new format is added to. Its order is the tie-break of
detection (:func:`detect_format`) and of path hints (:func:`format_for_path`): stricter formats
first, the plain ``sse`` catch-all last. Every function here iterates or indexes that list; none
knows a format by name except :data:`DEFAULT_FORMAT_NAME`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from streamhop.middleware.rechunk.formats.anthropic import AnthropicFormat
from streamhop.middleware.rechunk.formats.base import Format, Match
from streamhop.middleware.rechunk.formats.openai_chat import OpenAIChatFormat
from streamhop.middleware.rechunk.formats.openai_responses import OpenAIResponsesFormat
from streamhop.middleware.rechunk.formats.parsing import json_object
from streamhop.middleware.rechunk.formats.plain import PlainSSEFormat
from streamhop.middleware.sse.events import SSEEvent

REGISTERED: Final[tuple[Format, ...]] = (
    AnthropicFormat(),
    OpenAIResponsesFormat(),
    OpenAIChatFormat(),
    PlainSSEFormat(),
)
"""Every format, in detection order; the last one is the catch-all of :func:`detect_format`."""

FORMATS: Final[Mapping[str, Format]] = {f.name: f for f in REGISTERED}
"""Format by name."""

FORMAT_NAMES: Final = ("auto", *FORMATS)
"""The values ``[[routes]].format`` and the middleware's ``format`` accept."""

DEFAULT_FORMAT_NAME: Final = "openai-chat"
"""The format whose shapes errors take when the stream's format is unknown (``auto`` before the
first event, a path no format claims): OpenAI's error object is what OpenAI-compatible clients,
the most common ones, parse."""

TERMINAL_HINTS: Final[Mapping[str, str]] = {
    f.name: f.terminal_hint for f in REGISTERED if f.has_terminal and f.terminal_hint is not None
}
"""Format name -> how its terminal event looks (``data: [DONE]``), for formats that have one."""


def get_format(name: str) -> Format:
    """Return the format called ``name`` (not ``auto``).

    Raises:
        KeyError: unknown name; the message lists the known ones.
    """
    try:
        return FORMATS[name]
    except KeyError:
        raise KeyError(f"unknown stream format {name!r}; expected one of {list(FORMATS)}") from None


def error_format(name: str | None) -> Format:
    """The format whose error shapes a stream or route called ``name`` answers in.

    Args:
        name: a format name; ``None``, ``auto`` or an unknown name give
            :data:`DEFAULT_FORMAT_NAME`'s format (never raises).
    """
    if name is None:
        return FORMATS[DEFAULT_FORMAT_NAME]
    return FORMATS.get(name) or FORMATS[DEFAULT_FORMAT_NAME]


def detect_format(event: SSEEvent) -> Format | None:
    """Guess the format from the first event that has data.

    Parses the data once and asks every registered format (:meth:`Format.detect`); the highest
    :class:`Match` wins, the earlier-registered format on a tie. So an ``event:`` name beats the
    data's shape, a typed JSON event (``response.*``, ``message_start``) beats a ``choices``
    list, and a stream no provider format claims is plain ``sse``.

    Returns:
        The format, or ``None`` when ``event`` has no data (look at the next one).
    """
    data = event.data
    if data is None:
        return None
    obj = json_object(data)
    best = REGISTERED[-1]
    best_match = Match.NONE
    for fmt in REGISTERED:
        match = fmt.detect(event, obj)
        if match > best_match:
            best, best_match = fmt, match
            if match is Match.NAME:
                break
    return best


def format_for_path(path: str) -> str:
    """Guess a provider format from a request path when the route says ``auto``.

    The first registered format that claims the path (:meth:`Format.claims_path`:
    ``/v1/messages`` is Anthropic's, ``/v1/responses`` the Responses API's), else
    :data:`DEFAULT_FORMAT_NAME`.

    Args:
        path: the request path, query excluded.

    Returns:
        A format name (never ``auto``).
    """
    for fmt in REGISTERED:
        if fmt.claims_path(path):
            return fmt.name
    return DEFAULT_FORMAT_NAME


def _api_format(path: str) -> Format | None:
    """The first registered format that names an operation for ``path``."""
    for fmt in REGISTERED:
        if fmt.operation_name(path) is not None:
            return fmt
    return None


def operation_for_path(path: str) -> str | None:
    """``gen_ai.operation.name`` of a request to ``path`` (OpenTelemetry GenAI semantic
    conventions), from the first registered format that names one; ``None`` for a request that
    is no GenAI call."""
    fmt = _api_format(path)
    return None if fmt is None else fmt.operation_name(path)


def provider_for(format_name: str, path: str) -> str | None:
    """``gen_ai.provider.name`` implied by a route's format, else by the API the path calls.

    Args:
        format_name: the route's format (``auto`` and plain ``sse`` name no provider).
        path: the request path; the format whose API it is (:func:`operation_for_path`) names
            the provider when the route's format does not.

    Returns:
        The provider name (``openai``, ``anthropic``), or ``None`` when neither names one.
    """
    fmt = FORMATS.get(format_name)
    if fmt is None or fmt.provider_name is None:
        fmt = _api_format(path)
    return None if fmt is None else fmt.provider_name


def error_event(format_name: str | None, code: str, message: str) -> SSEEvent:
    """A terminal error event for a stream of ``format_name`` (:meth:`Format.error_event`).

    Kept for callers that always append an event: a format without error events (plain
    ``sse``), ``None``, ``auto`` and unknown names answer in :data:`DEFAULT_FORMAT_NAME`'s shape.
    A caller that must not add to a plain ``sse`` stream asks
    ``error_format(name).error_event(code, message)``, which is ``None`` there.

    Args:
        format_name: the stream's format name.
        code: a short machine-readable reason (``upstream_disconnected``).
        message: a sentence for a person.
    """
    event = error_format(format_name).error_event(code, message)
    if event is None:
        event = FORMATS[DEFAULT_FORMAT_NAME].error_event(code, message)
        assert event is not None, "the default format has error events"
    return event


def error_body(
    format_name: str | None, code: str, message: str, status: int | None = None
) -> bytes:
    """A JSON error response body in ``format_name``'s shape (:meth:`Format.error_body`;
    ``None``, ``auto`` and unknown names: the default's).

    Args:
        format_name: the route's or request path's format.
        code: streamhop's machine-readable reason (``no_route``).
        message: a sentence for a person.
        status: the response's HTTP status; it picks the provider's error ``type``
            (``invalid_request_error``, ``not_found_error``...). ``None`` answers as for a
            server-side failure (``server_error``, ``api_error``).

    Returns:
        UTF-8 JSON bytes.
    """
    return error_format(format_name).error_body(code, message, status)
