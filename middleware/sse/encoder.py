"""SSE encoder: :class:`SSEEvent` values to wire bytes.

Writes the field syntax of the WHATWG HTML Standard, "Server-sent events" §9.2.6 with LF line
ends: ``event``, ``id``, ``retry`` then one ``data:`` line per line of data, then a blank line.
A space always follows the colon, so data that itself starts with a space survives the one
leading space a parser strips.
"""

from __future__ import annotations

from collections.abc import Iterable

from streamhop.middleware.sse.events import SSEEvent


def encode_event(event: SSEEvent) -> str:
    """Return one event in wire syntax as text (encode it to UTF-8 to send).

    Text rather than bytes so a flush of many events is joined once and encoded once.

    Args:
        event: the event; its ``data`` may contain ``"\\n"`` (becomes several ``data:`` lines).

    Raises:
        ValueError: ``data`` contains a CR, or another field a CR or LF: SSE cannot carry them.
    """
    data = event.data
    name = event.event
    if (
        event.id is None
        and event.retry is None
        and data is not None
        and "\n" not in data
        and "\r" not in data
    ):
        # The per-event hot path: one f-string.
        if name is None:
            return f"data: {data}\n\n"
        if "\n" not in name and "\r" not in name:
            return f"event: {name}\ndata: {data}\n\n"
    parts: list[str] = []
    if name is not None:
        _check_line("event", name)
        parts.append(f"event: {name}\n")
    if event.id is not None:
        _check_line("id", event.id)
        parts.append(f"id: {event.id}\n")
    if event.retry is not None:
        parts.append(f"retry: {event.retry}\n")
    if data is not None:
        if "\r" in data:
            # A CR would be read back as a line break: data cannot carry one (§9.2.6).
            raise ValueError(f"SSE data cannot contain a carriage return: {data[:80]!r}")
        for line in data.split("\n"):
            parts.append(f"data: {line}\n")
    parts.append("\n")
    return "".join(parts)


def encode_events(events: Iterable[SSEEvent]) -> bytes:
    """Encode several events into one UTF-8 body chunk (one downstream write).

    Surrogate escapes (invalid UTF-8 the decoder kept, PEP 383) become their original bytes.

    Raises:
        ValueError: as :func:`encode_event`.
    """
    return "".join([encode_event(e) for e in events]).encode("utf-8", "surrogateescape")


def _check_line(field: str, value: str) -> None:
    if "\n" in value or "\r" in value:
        raise ValueError(f"SSE field {field!r} cannot contain a line break: {value!r}")
