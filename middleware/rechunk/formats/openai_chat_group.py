"""The merge group of OpenAI Chat Completions deltas: consecutive chunks whose choices only
continue text fields or announced tool calls' arguments, merged into one chunk whose
accumulation equals that of the parts (see :mod:`.openai_chat` for the rules and sources)."""

from __future__ import annotations

from collections.abc import Hashable
from typing import TYPE_CHECKING, Any, Final, cast

from streamhop.middleware.rechunk.formats.field_group import JsonGroup, render_like, same_except
from streamhop.middleware.sse.events import SSEEvent

MISSING: Final = object()
# Top-level chunk fields that may differ between merged chunks; the merged chunk keeps the first
# chunk's value. The openai SDK's ChatCompletionStreamState takes them from the first chunk only
# (openai/lib/streaming/chat/_completions.py: _convert_initial_chunk_into_snapshot builds the
# snapshot from the first chunk; _accumulate_chunk then merges only choices and replaces usage,
# system_fingerprint and moderation), and some OpenAI-compatible servers change them on every
# chunk (Groq's compound models: id; older llama.cpp servers: id and created).
FIRST_CHUNK_KEYS: Final = ("id", "created")

# A slot names where one merged string goes: (choice position, text field name) or
# (choice position, tool-call position in delta.tool_calls).
Slot = tuple[int, "str | int"]
Parsed = tuple[dict[str, Any], tuple[Slot, ...], list[str]]


_CALL_SKIP: Final = frozenset(("function",))
# Delta keys that are not labels: the text fields (in the slots) and the tool calls (compared
# call by call). Every other key classify() lets through is a string label or null, and must be
# equal for two deltas to merge (the merged delta carries it once).
TEXT_FIELDS: Final = ("content", "reasoning_content", "reasoning", "refusal")
"""The delta fields whose strings are concatenated (the text of a choice)."""
_NOT_LABELS: Final = frozenset((*TEXT_FIELDS, "tool_calls"))
_FUNCTION_SKIP: Final = frozenset(("arguments",))


def _same_envelope(obj: dict[str, Any], base: dict[str, Any]) -> bool:
    """True when two chunks are equal outside ``choices`` and ``obfuscation``, and outside
    ``id`` and ``created`` (:data:`FIRST_CHUNK_KEYS`: the merged chunk keeps the first's).

    Swaps ``base``'s values into ``obj`` for one C-level dict comparison, then restores them:
    several times faster than a Python loop over the keys, and this runs once per delta. The
    ``id``/``created`` swap is tried only when that comparison fails, so providers that keep
    them constant pay nothing for it.
    """
    choices = obj["choices"]
    obj["choices"] = base["choices"]
    obfuscation = obj.get("obfuscation", MISSING)
    if obfuscation is not MISSING and "obfuscation" in base:
        obj["obfuscation"] = base["obfuscation"]
    saved: list[tuple[str, Any]] | None = None
    try:
        if obj == base:
            return True
        for key in FIRST_CHUNK_KEYS:
            value = obj.get(key, MISSING)
            if value is not MISSING and key in base and value != base[key]:
                if saved is None:
                    saved = []
                saved.append((key, value))
                obj[key] = base[key]
        return saved is not None and obj == base
    finally:
        obj["choices"] = choices
        if obfuscation is not MISSING:
            obj["obfuscation"] = obfuscation
        if saved is not None:
            for key, value in saved:
                obj[key] = value


def _same_choice(choice: dict[str, Any], base: dict[str, Any]) -> bool:
    """True when two choices are equal outside ``delta`` and ``logprobs`` and both or neither
    carry ``logprobs`` (same swap technique as :func:`_same_envelope`)."""
    logprobs = choice.get("logprobs", MISSING)
    base_logprobs = base.get("logprobs", MISSING)
    if (logprobs is None or logprobs is MISSING) != (
        base_logprobs is None or base_logprobs is MISSING
    ):
        return False
    delta = choice["delta"]
    choice["delta"] = base["delta"]
    if logprobs is not MISSING and base_logprobs is not MISSING:
        choice["logprobs"] = base_logprobs
    try:
        return choice == base
    finally:
        choice["delta"] = delta
        if logprobs is not MISSING:
            choice["logprobs"] = logprobs


class ChatGroup(JsonGroup):
    __slots__ = ("logprobs", "pieces", "slots")

    def __init__(
        self, event: SSEEvent, obj: dict[str, Any], slots: tuple[Slot, ...], strings: list[str]
    ) -> None:
        self.first = event
        self.obj = obj
        self.slots = slots
        self.pieces: list[list[str]] = [[s] for s in strings]
        self.count = 1
        self.wire_size = event.wire_size
        self.last_id = event.id
        choices: list[dict[str, Any]] = obj["choices"]
        self.logprobs: list[list[Any]] | None = None
        if any(c.get("logprobs") is not None for c in choices):
            self.logprobs = [[c.get("logprobs")] for c in choices]

    def add(self, event: SSEEvent, parsed: object) -> bool:
        obj, slots, strings = cast(Parsed, parsed)
        if slots != self.slots or event.event != self.first.event:
            return False
        base = self.obj
        choices = obj["choices"]
        base_choices = base["choices"]
        if len(choices) != len(base_choices) or not _same_envelope(obj, base):
            return False
        for choice, bchoice in zip(choices, base_choices, strict=True):
            delta = choice["delta"]
            bdelta = bchoice["delta"]
            # classify() let only text fields, tool_calls, null values and string labels
            # through, and the slots say which carry text: equal key sets leave labels and
            # tool calls to compare.
            if delta.keys() != bdelta.keys() or not _same_choice(choice, bchoice):
                return False
            for key, value in delta.items():
                if key not in _NOT_LABELS and value != bdelta[key]:
                    return False
            calls = delta.get("tool_calls")
            if calls:
                # Same positions are guaranteed by the slots; the calls must also be the same
                # calls (index, type) with only the arguments differing.
                for call, bcall in zip(calls, bdelta["tool_calls"], strict=True):
                    if not same_except(call, bcall, _CALL_SKIP):
                        return False
                    if not same_except(call["function"], bcall["function"], _FUNCTION_SKIP):
                        return False
        for piece, text in zip(self.pieces, strings, strict=True):
            piece.append(text)
        if self.logprobs is not None:
            for acc, choice in zip(self.logprobs, choices, strict=True):
                acc.append(choice.get("logprobs"))
        self.count += 1
        self.wire_size += event.wire_size
        if event.id is not None:
            self.last_id = event.id
        return True

    def _merged(self, texts: list[str]) -> dict[str, Any]:
        """The merged chunk, with ``texts[i]`` in slot ``i``."""
        base = self.obj
        choices = [dict(c) for c in base["choices"]]
        deltas = [dict(c["delta"]) for c in choices]
        calls: dict[int, list[dict[str, Any]]] = {}
        for (pos, where), text in zip(self.slots, texts, strict=True):
            if isinstance(where, str):
                deltas[pos][where] = text
            else:
                if pos not in calls:
                    calls[pos] = [dict(c) for c in deltas[pos]["tool_calls"]]
                    deltas[pos]["tool_calls"] = calls[pos]
                call = calls[pos][where]
                call["function"] = {**call["function"], "arguments": text}
        for choice, delta in zip(choices, deltas, strict=True):
            choice["delta"] = delta
        if self.logprobs is not None:
            for choice, parts in zip(choices, self.logprobs, strict=True):
                choice["logprobs"] = _merge_logprobs(parts)
        merged = dict(base)
        merged["choices"] = choices
        return merged

    def _merged_all(self) -> dict[str, Any]:
        """See :meth:`~.field_group.JsonGroup._merged_all`."""
        return self._merged(["".join(piece) for piece in self.pieces])

    def boundary_text(self) -> tuple[Hashable, str] | None:
        """See :meth:`streamhop.middleware.rechunk.boundary.SplitText.boundary_text`: only a
        group continuing one text field of one choice, without ``logprobs``, may be held."""
        slots = self.slots
        if len(slots) != 1 or self.logprobs is not None:
            return None
        pos, field = slots[0]
        if not isinstance(field, str):
            return None  # tool-call arguments are never held
        piece = self.pieces[0]
        if len(piece) > 1:
            piece[:] = ["".join(piece)]
        return (self.first.event, self.obj["choices"][pos].get("index"), field), piece[0]

    def split(self, cut: int) -> tuple[SSEEvent, ChatGroup]:
        """See :meth:`streamhop.middleware.rechunk.boundary.SplitText.split`."""
        text = "".join(self.pieces[0])
        rest = text[cut:]
        rest_size = len(rest.encode())
        head = render_like(
            self.first, self._merged([text[:cut]]), None, max(0, self.wire_size - rest_size)
        )
        obj = self._merged([rest])
        tail = ChatGroup(
            render_like(self.first, obj, self.last_id, rest_size), obj, self.slots, [rest]
        )
        return head, tail


def _merge_logprobs(parts: list[Any]) -> Any:
    """Concatenate ``logprobs.content`` / ``logprobs.refusal`` token lists in order."""
    first = parts[0]
    if type(first) is not dict:
        return first
    merged = dict(first)
    for key in ("content", "refusal"):
        lists = [p.get(key) for p in parts if type(p) is dict]
        if any(x is not None for x in lists):
            merged[key] = [tok for lst in lists if lst for tok in lst]
    return merged


if TYPE_CHECKING:
    from streamhop.middleware.rechunk.boundary import SplitText

    _SPLITS: type[SplitText] = ChatGroup
