"""The OpenAI Chat Completions stream format (``openai-chat``, ``chat.completion.chunk``).

Wire format: OpenAI API reference, "The chat completion chunk object"
(https://platform.openai.com/docs/api-reference/chat-streaming). Also the OpenAI-compatible
streams of Cerebras, Groq (``delta.reasoning``, ``x_groq``), vLLM and DeepSeek
(``delta.reasoning_content``).

A chunk is a ``DELTA`` when every choice only continues text (``content``,
``reasoning_content``, ``reasoning``, ``refusal``) or the ``function.arguments`` of tool calls
already announced, with ``logprobs`` optional. Deltas merge when they continue the same fields of
the same choices and tool-call indexes in the same order, and every other field is equal (unknown
top-level and choice fields included, so nothing a provider adds is lost). ``obfuscation``
(random padding) keeps the first value, and so do ``id`` and ``created``: some OpenAI-compatible
servers change them on every chunk (Groq's compound models change the id on every event), while
the ``openai`` SDK's stream accumulator takes both from the first chunk only, so a merged chunk
that carries the first one's builds the same message (see docs/rechunking.md).

A delta carrying a field streamhop does not know (Groq's ``channel``, say) is ``HOLD``: batched
into the window's write but never rewritten. The ``openai`` SDK's accumulator concatenates every
string field of a delta, so merging two ``"channel": "analysis"`` deltas into one would change the
message it builds, while keeping one value per event would change what a per-event reader sees.

A role, a tool call's ``id``/``name``, ``finish_reason``, a non-null ``usage``, an
empty ``choices``, ``error`` and ``[DONE]`` are boundaries.

Detection: a JSON object with ``choices`` or ``"object": "chat.completion.chunk"`` (no ``event:``
name; registered after the formats with typed events, so those win a tie). Terminal: ``[DONE]``
or an ``error`` object. Usage: the chunk with ``usage`` (``prompt_tokens``,
``completion_tokens``), sent when the request has ``stream_options.include_usage``. Response
facts: ``id`` and ``model`` of the first chunk, ``finish_reason`` of each choice. Errors:
OpenAI's error object (https://platform.openai.com/docs/guides/error-codes) as ``data:`` without
an event name, on which the ``openai`` SDK raises ``APIError``; the same object is the body of an
error response. Paths: ``/v1/chat/completions``, and the other OpenAI APIs an OpenAI-compatible
upstream serves (``/v1/completions``, ``/v1/embeddings``).
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import TYPE_CHECKING, Any, Final, cast

import orjson

from streamhop.middleware.rechunk.formats.base import (
    Content,
    Kind,
    Match,
    ResponseFacts,
    Usage,
    openai_error_object,
    parse_object,
    text_or_none,
    token_count,
    usage_object,
)
from streamhop.middleware.rechunk.formats.field_group import same_except
from streamhop.middleware.sse.events import SSEEvent

_TEXT_FIELDS: Final = ("content", "reasoning_content", "reasoning", "refusal")
_TEXT_SET: Final = frozenset(_TEXT_FIELDS)
_TOOL_KEYS: Final = frozenset(("index", "id", "type", "function"))
_FUNCTION_KEYS: Final = frozenset(("arguments", "name"))
_MISSING: Final = object()
# Top-level chunk fields that may differ between merged chunks; the merged chunk keeps the first
# chunk's value. The openai SDK's ChatCompletionStreamState takes them from the first chunk only
# (openai/lib/streaming/chat/_completions.py: _convert_initial_chunk_into_snapshot builds the
# snapshot from the first chunk; _accumulate_chunk then merges only choices and replaces usage,
# system_fingerprint and moderation), and some OpenAI-compatible servers change them on every
# chunk (Groq's compound models: id; older llama.cpp servers: id and created).
_FIRST_CHUNK_KEYS: Final = ("id", "created")
# path suffix -> gen_ai.operation.name, longest first ("/chat/completions" ends "/completions")
_OPERATIONS: Final = (
    ("/chat/completions", "chat"),
    ("/completions", "text_completion"),
    ("/embeddings", "embeddings"),
)

# A slot names where one merged string goes: (choice position, text field name) or
# (choice position, tool-call position in delta.tool_calls).
Slot = tuple[int, "str | int"]
_Parsed = tuple[dict[str, Any], tuple[Slot, ...], list[str]]


class OpenAIChatFormat:
    """Classifies and merges ``chat.completion.chunk`` events (stateless, shareable)."""

    name = "openai-chat"
    has_terminal = True
    terminal_hint = "data: [DONE]"
    provider_name = "openai"

    def detect(self, event: SSEEvent, obj: dict[str, Any] | None) -> Match:
        """See :meth:`streamhop.middleware.rechunk.formats.base.Format.detect`."""
        if obj is not None and ("choices" in obj or obj.get("object") == "chat.completion.chunk"):
            return Match.BODY
        return Match.NONE

    def is_terminal(self, event: SSEEvent) -> bool:
        """``data: [DONE]`` (the Chat Completions stream's end), or an ``error`` object (the
        provider's in-stream error, after which it closes)."""
        data = event.data
        if data is None:
            return False
        if data == "[DONE]":
            return True
        if '"error"' not in data:
            return False
        obj = parse_object(event)
        return type(obj) is dict and obj.get("error") is not None and "choices" not in obj

    def classify(self, event: SSEEvent) -> tuple[Kind, Content | bool, object]:
        """See :meth:`streamhop.middleware.rechunk.formats.base.Format.classify`."""
        if event.data == "[DONE]":
            return Kind.FLUSH, False, None
        obj = parse_object(event)
        if type(obj) is not dict:
            return Kind.FLUSH, False, obj
        choices = obj.get("choices")
        if type(choices) is not list or not choices or obj.get("usage") is not None:
            return Kind.FLUSH, _has_content(choices), None
        slots: list[Slot] = []
        strings: list[str] = []
        content: Content | bool = False
        unknown = False
        for pos, choice in enumerate(choices):
            if type(choice) is not dict or choice.get("finish_reason") is not None:
                return Kind.FLUSH, _has_content(choices), None
            delta = choice.get("delta")
            if type(delta) is not dict:
                return Kind.FLUSH, _has_content(choices), None
            # One pass over the delta's fields, in the order the provider sent them.
            for key, value in delta.items():
                if value is None:
                    continue
                if key in _TEXT_SET:
                    if type(value) is not str:
                        return Kind.FLUSH, False, None
                    if value:
                        content = Content.TEXT
                        slots.append((pos, key))
                        strings.append(value)
                elif key == "tool_calls":
                    if type(value) is not list:
                        return Kind.FLUSH, False, None
                    for tpos, call in enumerate(value):
                        args = _continued_arguments(call)
                        if args is None:
                            # A new tool call (id/name) or a shape we do not know: a boundary.
                            # Content only if it already carries argument text (an id, a name
                            # and `arguments: ""` are not: the first argument byte is TTFT).
                            return Kind.FLUSH, _has_content(choices), None
                        if args:
                            content = content or Content.TOOL_ARGS
                        slots.append((pos, tpos))
                        strings.append(args)
                elif key == "role":
                    return Kind.FLUSH, _has_content(choices), None
                else:
                    # SDKs accumulate unknown delta fields too (the openai SDK concatenates
                    # strings, e.g. Groq's `channel`); a merge would change what they build.
                    # Keep scanning: a role or a new tool call later in the delta is still a
                    # boundary (key order carries no meaning).
                    unknown = True
        if unknown:
            return Kind.HOLD, _has_content(choices), None
        return Kind.DELTA, content, (obj, tuple(slots), strings)

    def open_group(self, event: SSEEvent, parsed: object) -> _ChatGroup:
        """Start a merge group with a ``DELTA`` event (``parsed`` from :meth:`classify`)."""
        obj, slots, strings = cast(_Parsed, parsed)
        return _ChatGroup(event, obj, slots, strings)

    def usage(self, event: SSEEvent) -> Usage | None:
        """``usage.prompt_tokens`` / ``usage.completion_tokens`` of the usage chunk."""
        obj = usage_object(event)
        usage = obj.get("usage") if obj is not None else None
        if type(usage) is not dict:
            return None
        return token_count(usage.get("prompt_tokens")), token_count(usage.get("completion_tokens"))

    def response_facts(self, event: SSEEvent) -> ResponseFacts | None:
        """``id`` and ``model`` of a chunk, and the non-null ``finish_reason`` of its choices."""
        data = event.data
        if data is None or data == "[DONE]":
            return None
        obj = parse_object(event)
        if type(obj) is not dict:
            return None
        choices = obj.get("choices")
        reasons: tuple[str, ...] = ()
        if type(choices) is list:
            reasons = tuple(
                reason
                for choice in choices
                if type(choice) is dict
                and (reason := text_or_none(choice.get("finish_reason"))) is not None
            )
        response_id = text_or_none(obj.get("id"))
        model = text_or_none(obj.get("model"))
        if response_id is None and model is None and not reasons:
            return None
        return ResponseFacts(response_id, model, reasons)

    def error_event(self, code: str, message: str) -> SSEEvent:
        """``data: {"error": {...}}``, OpenAI's error object without an event name."""
        return SSEEvent(data=orjson.dumps(openai_error_object(code, message)).decode())

    def error_body(self, code: str, message: str) -> bytes:
        """OpenAI's error object."""
        return orjson.dumps(openai_error_object(code, message))

    def claims_path(self, path: str) -> bool:
        """The OpenAI API paths of :meth:`operation_name`."""
        return self.operation_name(path) is not None

    def operation_name(self, path: str) -> str | None:
        """``chat``, ``text_completion`` or ``embeddings`` by the path's last segments."""
        for suffix, operation in _OPERATIONS:
            if path.endswith(suffix):
                return operation
        return None


def _continued_arguments(call: object) -> str | None:
    """Return the ``arguments`` fragment of a tool call that continues one, else ``None``."""
    if type(call) is not dict or not call.keys() <= _TOOL_KEYS or call.get("id"):
        return None
    function = call.get("function")
    if type(function) is not dict or not function.keys() <= _FUNCTION_KEYS:
        return None
    if function.get("name"):
        return None
    args = function.get("arguments")
    if args is None:
        return ""
    return args if type(args) is str else None


def _has_content(choices: object) -> Content:
    """What a boundary chunk carries: :attr:`Content.TEXT` for non-empty text in any choice,
    else :attr:`Content.TOOL_ARGS` for a non-empty tool-call ``arguments`` fragment, else
    :attr:`Content.NONE` (a tool call's id and name alone are not content)."""
    if type(choices) is not list:
        return Content.NONE
    found = Content.NONE
    for choice in choices:
        delta = choice.get("delta") if type(choice) is dict else None
        if type(delta) is not dict:
            continue
        for field in _TEXT_FIELDS:
            text = delta.get(field)
            if type(text) is str and text:
                return Content.TEXT
        calls = delta.get("tool_calls")
        if type(calls) is list:
            for call in calls:
                function = call.get("function") if type(call) is dict else None
                args = function.get("arguments") if type(function) is dict else None
                if type(args) is str and args:
                    found = Content.TOOL_ARGS
    return found


_CALL_SKIP: Final = frozenset(("function",))
_FUNCTION_SKIP: Final = frozenset(("arguments",))


def _same_envelope(obj: dict[str, Any], base: dict[str, Any]) -> bool:
    """True when two chunks are equal outside ``choices`` and ``obfuscation``, and outside
    ``id`` and ``created`` (:data:`_FIRST_CHUNK_KEYS`: the merged chunk keeps the first's).

    Swaps ``base``'s values into ``obj`` for one C-level dict comparison, then restores them:
    several times faster than a Python loop over the keys, and this runs once per delta. The
    ``id``/``created`` swap is tried only when that comparison fails, so providers that keep
    them constant pay nothing for it.
    """
    choices = obj["choices"]
    obj["choices"] = base["choices"]
    obfuscation = obj.get("obfuscation", _MISSING)
    if obfuscation is not _MISSING and "obfuscation" in base:
        obj["obfuscation"] = base["obfuscation"]
    saved: list[tuple[str, Any]] | None = None
    try:
        if obj == base:
            return True
        for key in _FIRST_CHUNK_KEYS:
            value = obj.get(key, _MISSING)
            if value is not _MISSING and key in base and value != base[key]:
                if saved is None:
                    saved = []
                saved.append((key, value))
                obj[key] = base[key]
        return saved is not None and obj == base
    finally:
        obj["choices"] = choices
        if obfuscation is not _MISSING:
            obj["obfuscation"] = obfuscation
        if saved is not None:
            for key, value in saved:
                obj[key] = value


def _same_choice(choice: dict[str, Any], base: dict[str, Any]) -> bool:
    """True when two choices are equal outside ``delta`` and ``logprobs`` and both or neither
    carry ``logprobs`` (same swap technique as :func:`_same_envelope`)."""
    logprobs = choice.get("logprobs", _MISSING)
    base_logprobs = base.get("logprobs", _MISSING)
    if (logprobs is None or logprobs is _MISSING) != (
        base_logprobs is None or base_logprobs is _MISSING
    ):
        return False
    delta = choice["delta"]
    choice["delta"] = base["delta"]
    if logprobs is not _MISSING and base_logprobs is not _MISSING:
        choice["logprobs"] = base_logprobs
    try:
        return choice == base
    finally:
        choice["delta"] = delta
        if logprobs is not _MISSING:
            choice["logprobs"] = logprobs


class _ChatGroup:
    __slots__ = ("count", "first", "last_id", "logprobs", "obj", "pieces", "slots", "wire_size")

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
        obj, slots, strings = cast(_Parsed, parsed)
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
            # classify() let only known fields through (text, tool_calls, null role), and the
            # slots say which carry text: equal key sets leave only tool calls to compare.
            if delta.keys() != bdelta.keys() or not _same_choice(choice, bchoice):
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

    def render(self) -> SSEEvent:
        if self.count == 1:
            return self.first
        texts = ["".join(piece) for piece in self.pieces]
        return self._render(self._merged(texts), self.last_id, self.wire_size)

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

    def _render(self, obj: dict[str, Any], event_id: str | None, wire_size: int) -> SSEEvent:
        return SSEEvent(
            data=orjson.dumps(obj).decode(),
            event=self.first.event,
            id=event_id,
            wire_size=wire_size,
        )

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

    def split(self, cut: int) -> tuple[SSEEvent, _ChatGroup]:
        """See :meth:`streamhop.middleware.rechunk.boundary.SplitText.split`."""
        text = "".join(self.pieces[0])
        rest = text[cut:]
        rest_size = len(rest.encode())
        head = self._render(self._merged([text[:cut]]), None, max(0, self.wire_size - rest_size))
        obj = self._merged([rest])
        tail = _ChatGroup(self._render(obj, self.last_id, rest_size), obj, self.slots, [rest])
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

    _SPLITS: type[SplitText] = _ChatGroup
