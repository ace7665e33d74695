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

A delta field streamhop does not know is a *label* when its value is a string (gpt-oss's
``channel: "analysis"`` on Groq and Cerebras): deltas merge when their labels are equal, and the
merged delta carries the label once, as ``id`` and ``obfuscation`` carry the first chunk's value.
The ``openai`` SDK's accumulator concatenates every string field of a delta, so it builds
``"analysis"`` repeated once per *written* event instead of once per upstream event (see
docs/rechunking.md). Any other unknown field (a number such as ``token_id``, a list, an object)
is per-token data that a merge could lose: such a delta is ``HOLD``, batched into the window's
write but never rewritten.

Content kinds: ``content`` and ``refusal`` are the answer (:attr:`Content.TEXT`);
``reasoning_content`` (DeepSeek, xAI) and ``reasoning`` (Groq, Cerebras, OpenRouter, vLLM) are
:attr:`Content.REASONING`; argument fragments :attr:`Content.TOOL_ARGS`. The coalescer writes the
first delta of each new kind at once (the answer after reasoning).

Finished (:meth:`OpenAIChatFormat.completion`): once every choice the stream named has reported a
``finish_reason``, or at ``[DONE]`` or an ``error`` object. ``[DONE]`` is OpenAI's convention, not
a rule of every OpenAI-compatible server (Cerebras closes right after the chunk with
``finish_reason`` and ``usage``); a usage chunk may follow the finish and is not awaited.

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

from typing import Any, Final, cast

import orjson

from streamhop.middleware.rechunk.formats.base import (
    Content,
    Kind,
    Match,
    ResponseFacts,
    Usage,
    openai_error_object,
    text_or_none,
    token_usage,
    usage_object,
)
from streamhop.middleware.rechunk.formats.openai_chat_group import (
    TEXT_FIELDS,
    ChatGroup,
    Parsed,
    Slot,
)
from streamhop.middleware.rechunk.formats.parsing import parse_object
from streamhop.middleware.sse.events import SSEEvent

_TEXT_FIELDS: Final = TEXT_FIELDS
_TEXT_SET: Final = frozenset(_TEXT_FIELDS)
_REASONING_SET: Final = frozenset(("reasoning_content", "reasoning"))
_TOOL_KEYS: Final = frozenset(("index", "id", "type", "function"))
_FUNCTION_KEYS: Final = frozenset(("arguments", "name"))
# path suffix -> gen_ai.operation.name, longest first ("/chat/completions" ends "/completions")
_OPERATIONS: Final = (
    ("/chat/completions", "chat"),
    ("/completions", "text_completion"),
    ("/embeddings", "embeddings"),
)


class OpenAIChatFormat:
    """Classifies and merges ``chat.completion.chunk`` events (stateless, shareable)."""

    name = "openai-chat"
    has_terminal = True
    terminal_hint = "a finish_reason for every choice, or data: [DONE]"
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

    def completion(self) -> ChatCompletionState:
        """See :meth:`streamhop.middleware.rechunk.formats.base.Format.completion`."""
        return ChatCompletionState()

    def classify(self, event: SSEEvent) -> tuple[Kind, Content | bool, object]:
        """See :meth:`streamhop.middleware.rechunk.formats.base.Format.classify`."""
        obj = parse_object(event, "[DONE]")
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
                    if type(value) is list and value:
                        # Content parts (Mistral's magistral sends thinking as
                        # `[{"type": "thinking", ...}]`): per-part data, held unmerged.
                        unknown = True
                        content = content or _parts_content(value)
                        continue
                    if type(value) is not str:
                        return Kind.FLUSH, False, None
                    if value:
                        if key in _REASONING_SET:
                            content = content or Content.REASONING
                        else:
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
                        if args and content != Content.TEXT:
                            content = Content.TOOL_ARGS
                        slots.append((pos, tpos))
                        strings.append(args)
                elif key == "role":
                    return Kind.FLUSH, _has_content(choices), None
                elif type(value) is not str:
                    # Per-token data (`token_id`, a list, an object): a merge could lose it.
                    # Keep scanning: a role or a new tool call later in the delta is still a
                    # boundary (key order carries no meaning).
                    unknown = True
                # else: a label (gpt-oss `channel`): merges with equal labels (ChatGroup.add).
        if unknown:
            return Kind.HOLD, _has_content(choices), None
        return Kind.DELTA, content, (obj, tuple(slots), strings)

    def open_group(self, event: SSEEvent, parsed: object) -> ChatGroup:
        """Start a merge group with a ``DELTA`` event (``parsed`` from :meth:`classify`)."""
        obj, slots, strings = cast(Parsed, parsed)
        return ChatGroup(event, obj, slots, strings)

    def usage(self, event: SSEEvent) -> Usage | None:
        """``usage.prompt_tokens`` / ``usage.completion_tokens`` of the usage chunk."""
        obj = usage_object(event)
        usage = obj.get("usage") if obj is not None else None
        return token_usage(usage, "prompt_tokens", "completion_tokens")

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

    def error_body(self, code: str, message: str, status: int | None = None) -> bytes:
        """OpenAI's error object, its ``type`` by ``status``."""
        return orjson.dumps(openai_error_object(code, message, status))

    def claims_path(self, path: str) -> bool:
        """The OpenAI API paths of :meth:`operation_name`."""
        return self.operation_name(path) is not None

    def operation_name(self, path: str) -> str | None:
        """``chat``, ``text_completion`` or ``embeddings`` by the path's last segments."""
        for suffix, operation in _OPERATIONS:
            if path.endswith(suffix):
                return operation
        return None


class ChatCompletionState:
    """Whether a ``chat.completion.chunk`` stream is finished (:class:`~.base.Completion`).

    Finished at ``[DONE]``, at an ``error`` object, or once every choice the stream has named
    (by ``index``) has reported a non-null ``finish_reason``. Only chunks that carry a role, a
    ``finish_reason`` or an error are parsed: a choice opens with its role chunk (or at latest
    with its ``finish_reason``), so deltas need not be looked at.
    """

    __slots__ = ("_done", "_open", "finished")

    def __init__(self) -> None:
        self.finished = False
        self._open: set[object] = set()
        self._done: set[object] = set()

    def observe(self, event: SSEEvent) -> None:
        """Take one event; parses only chunks that may open or finish a choice."""
        if self.finished:
            return
        data = event.data
        if data is None:
            return
        if data == "[DONE]":
            self.finished = True
            return
        if '"role"' not in data and '"finish_reason"' not in data and '"error"' not in data:
            return
        obj = parse_object(event)
        if type(obj) is not dict:
            return
        choices = obj.get("choices")
        if type(choices) is not list:
            if obj.get("error") is not None:
                self.finished = True  # the provider's in-stream error: it closes next
            return
        for pos, choice in enumerate(choices):
            if type(choice) is not dict:
                continue
            index = choice.get("index", pos)
            if type(index) is not int:
                index = pos
            if choice.get("finish_reason") is not None:
                self._done.add(index)
            else:
                self._open.add(index)
        if self._done and self._open <= self._done:
            self.finished = True

    def __repr__(self) -> str:
        return (
            f"<ChatCompletionState finished={self.finished} "
            f"choices={len(self._open | self._done)} done={len(self._done)}>"
        )


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


def _parts_content(parts: list[Any]) -> Content:
    """The content kind of a list of content parts: :attr:`Content.REASONING` when a part is
    ``thinking``, else :attr:`Content.TEXT`."""
    for part in parts:
        if type(part) is dict and part.get("type") == "thinking":
            return Content.REASONING
    return Content.TEXT


def _has_content(choices: object) -> Content:
    """What a boundary chunk carries: :attr:`Content.TEXT` for non-empty answer text in any
    choice, else :attr:`Content.TOOL_ARGS` for a non-empty tool-call ``arguments`` fragment, else
    :attr:`Content.REASONING` for reasoning text, else :attr:`Content.NONE` (a tool call's id and
    name alone are not content)."""
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
                if field not in _REASONING_SET:
                    return Content.TEXT
                if found == Content.NONE:
                    found = Content.REASONING
        calls = delta.get("tool_calls")
        if type(calls) is list:
            for call in calls:
                function = call.get("function") if type(call) is dict else None
                args = function.get("arguments") if type(function) is dict else None
                if type(args) is str and args:
                    found = Content.TOOL_ARGS
    return found
