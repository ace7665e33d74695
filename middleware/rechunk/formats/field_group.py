"""A merge group for events whose only growing part is one JSON string field.

Anthropic ``content_block_delta`` (``delta.text`` / ``delta.partial_json`` / ``delta.thinking``)
and OpenAI Responses ``response.*.delta`` (``delta``) events have this shape: consecutive events
merge when everything but that string (and fields named as per-event, such as
``sequence_number``) is equal, and the merged event carries the concatenated string.

A group made ``holdable`` (text, not tool input) can also be cut at a flush boundary
(:class:`~streamhop.middleware.rechunk.boundary.SplitText`): the part before the cut is rendered
as one event and the rest becomes a new group with the same envelope.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import TYPE_CHECKING, Any, cast

import orjson

from streamhop.middleware.sse.events import SSEEvent

FieldParsed = tuple[dict[str, Any], str, str]
"""``(obj, field, text)``: the parsed event, the merged field's name, and its text."""


def same_except(a: dict[str, Any], b: dict[str, Any], skip: frozenset[str]) -> bool:
    """True when ``a`` and ``b`` have the same keys and equal values outside ``skip``."""
    if a.keys() != b.keys():
        return False
    for key, value in a.items():
        if key not in skip and b[key] != value:
            return False
    return True


class JsonGroup:
    """What every merge group of JSON deltas keeps, and its rendering (:class:`FieldGroup`,
    the OpenAI chat group).

    Attributes:
        first: the event the group was opened with, rendered unchanged while it is alone.
        obj: its parsed JSON object, the envelope of the merged event.
        count: the number of events merged.
        wire_size: the upstream bytes they occupied.
        last_id: the last ``id`` among them (the merged event stands for all of them).

    A subclass sets these in its ``__init__``, and its ``add`` counts each event it merges
    (``count``, ``wire_size``, ``last_id``) itself: ``add`` runs once per delta, where a shared
    method would cost a call each time. It says what the merged object is (:meth:`_merged_all`).
    """

    __slots__ = ("count", "first", "last_id", "obj", "wire_size")

    first: SSEEvent
    obj: dict[str, Any]
    count: int
    wire_size: int
    last_id: str | None

    def render(self) -> SSEEvent:
        """The merged event (the first event unchanged when nothing was merged into it)."""
        if self.count == 1:
            return self.first
        return render_like(self.first, self._merged_all(), self.last_id, self.wire_size)

    def _merged_all(self) -> dict[str, Any]:
        """The merged JSON object, with every merged event's text."""
        raise NotImplementedError


class FieldGroup(JsonGroup):
    """Consecutive events merged by concatenating one string field.

    Args:
        event: the first event.
        obj: its parsed JSON object.
        container: key of the nested object holding the field (``"delta"`` for Anthropic), or
            ``None`` when the field is at the top level.
        field: the string field to concatenate.
        text: the first event's value of that field.
        skip: top-level keys that may differ between merged events; the merged event keeps the
            *last* event's value for ``last_wins`` keys and the first's for the others.
        last_wins: keys whose last value is kept (``sequence_number``).
        concat: top-level keys holding lists concatenated in order (``logprobs``).
        holdable: the field is text that may be held for a flush boundary (not tool input).
    """

    __slots__ = (
        "concat",
        "concat_parts",
        "container",
        "container_skip",
        "field",
        "holdable",
        "last_values",
        "pieces",
        "skip",
    )

    def __init__(
        self,
        event: SSEEvent,
        obj: dict[str, Any],
        container: str | None,
        field: str,
        text: str,
        skip: frozenset[str],
        last_wins: tuple[str, ...] = (),
        concat: tuple[str, ...] = (),
        holdable: bool = False,
    ) -> None:
        self.first = event
        self.obj = obj
        self.container = container
        self.field = field
        self.container_skip = frozenset((field,))
        self.skip = skip
        self.pieces = [text]
        self.count = 1
        self.wire_size = event.wire_size
        self.last_id = event.id
        self.last_values: dict[str, Any] = {k: obj[k] for k in last_wins if k in obj}
        self.concat = concat
        self.concat_parts: list[list[Any]] = [[obj.get(k)] for k in concat]
        self.holdable = holdable

    def add(self, event: SSEEvent, parsed: object) -> bool:
        """Merge ``event`` if compatible. Returns False, changing nothing, when it is not.

        Args:
            event: the event.
            parsed: ``(obj, field, text)`` as the format's ``classify`` returned it.
        """
        obj, _, text = cast(FieldParsed, parsed)
        base = self.obj
        if event.event != self.first.event or not same_except(obj, base, self.skip):
            return False
        container = self.container
        if container is not None and not same_except(
            obj[container], base[container], self.container_skip
        ):
            return False
        self.pieces.append(text)
        for key in self.last_values:
            self.last_values[key] = obj[key]
        for parts, key in zip(self.concat_parts, self.concat, strict=True):
            parts.append(obj.get(key))
        self.count += 1
        self.wire_size += event.wire_size
        if event.id is not None:
            self.last_id = event.id
        return True

    def _merged(self, text: str) -> dict[str, Any]:
        """The merged JSON object, with ``text`` as the field's value."""
        merged = dict(self.obj)
        if self.container is None:
            merged[self.field] = text
        else:
            merged[self.container] = {**merged[self.container], self.field: text}
        merged.update(self.last_values)
        for key, parts in zip(self.concat, self.concat_parts, strict=True):
            if key in merged and any(parts):
                merged[key] = [item for part in parts if part for item in part]
        return merged

    def _merged_all(self) -> dict[str, Any]:
        """See :meth:`JsonGroup._merged_all`."""
        return self._merged("".join(self.pieces))

    def boundary_text(self) -> tuple[Hashable, str] | None:
        """See :meth:`streamhop.middleware.rechunk.boundary.SplitText.boundary_text`: the text
        of a ``holdable`` group without ``logprobs`` (token lists cannot be cut in a token)."""
        if not self.holdable or any(any(parts) for parts in self.concat_parts):
            return None
        pieces = self.pieces
        if len(pieces) > 1:
            pieces[:] = ["".join(pieces)]
        # Everything that tells this field from another: event name, field, and the scalar
        # fields that must be equal to merge (Anthropic's index, Responses' item and indexes).
        lane = (
            self.first.event,
            self.field,
            *((k, v) for k, v in self.obj.items() if k not in self.skip and type(v) in _SCALAR),
        )
        return lane, pieces[0]

    def split(self, cut: int) -> tuple[SSEEvent, FieldGroup]:
        """See :meth:`streamhop.middleware.rechunk.boundary.SplitText.split`."""
        text = "".join(self.pieces)
        rest = text[cut:]
        rest_size = len(rest.encode())
        head = render_like(
            self.first, self._merged(text[:cut]), None, max(0, self.wire_size - rest_size)
        )
        obj = self._merged(rest)
        first = render_like(self.first, obj, self.last_id, rest_size)
        tail = FieldGroup(
            first,
            obj,
            self.container,
            self.field,
            rest,
            self.skip,
            tuple(self.last_values),
            self.concat,
            self.holdable,
        )
        return head, tail


_SCALAR = (str, int)

if TYPE_CHECKING:
    from streamhop.middleware.rechunk.boundary import SplitText

    _SPLITS: type[SplitText] = FieldGroup


def render_like(
    first: SSEEvent, obj: dict[str, Any], event_id: str | None, wire_size: int
) -> SSEEvent:
    """A merged (or split) group's event: ``obj`` as its data, ``first``'s event name, the
    given ``id`` and upstream ``wire_size`` (bytes it stands for)."""
    return SSEEvent(
        data=orjson.dumps(obj).decode(), event=first.event, id=event_id, wire_size=wire_size
    )
