"""The first step of every JSON format's ``classify``: an event's data as a JSON object.

Here and not in :mod:`.base` because it runs once per upstream event: this module is compiled
with the engine (``ENGINE`` in ``setup.py``), ``base`` is not.
"""

from __future__ import annotations

from typing import Any

import orjson

from streamhop.middleware.sse.events import SSEEvent


class _Malformed:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MALFORMED"


MALFORMED = _Malformed()
"""``parsed`` value of an event whose data should have been JSON and was not."""


def parse_object(event: SSEEvent, end: str | None = None) -> dict[str, Any] | _Malformed | None:
    """The event's data as a JSON object: the first step of every JSON format's ``classify``.

    Args:
        event: the event.
        end: the data of the format's end marker, which is not JSON (``[DONE]`` of the OpenAI
            streams), or ``None``.

    Returns:
        The object; ``None`` for a block without data, with ``retry``, or with the ``end``
        marker (a boundary with nothing to parse); :data:`MALFORMED` when the data is not a
        JSON object. Callers return ``(Kind.FLUSH, False, result)`` for anything that is not a
        ``dict``.
    """
    data = event.data
    if data is None or event.retry is not None or (end is not None and data == end):
        return None
    obj = json_object(data)
    return MALFORMED if obj is None else obj


def json_object(data: str) -> dict[str, Any] | None:
    """``data`` parsed as JSON when it is a JSON object, else ``None`` (never raises)."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return obj if type(obj) is dict else None
