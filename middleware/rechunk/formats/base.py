"""The one protocol every wire format implements, and helpers the JSON formats share.

A format is one stateless, shared object (:class:`Format`) that owns everything streamhop knows
about one provider stream format: how to recognise it from the first event, its merge rules, its
terminal event, where it reports token usage, how an error looks in it, which request paths speak
it, and the OpenTelemetry GenAI names of its API. Nothing outside the format's own module switches
on its name.

The merge rules: a format classifies each event once (parsing its JSON once) as:

* ``DELTA``: a content delta that may merge with the held delta before it (same stream position,
  same text field, same tool-call index, every other field equal);
* ``HOLD``: an event that is held and batched into the next write but never rewritten (plain
  ``sse`` streams);
* ``FLUSH``: a boundary (role, new tool call, ``finish_reason``, ``usage``, ``[DONE]``,
  ``message_delta``, ``message_stop``, ``error``, any event type the format does not know): never
  merged across; it and everything held before it are written at once.

A change of phase (a content event whose :class:`Content` kind differs from the content before
it, or the first content after a boundary: the answer after reasoning, a tool call's first
argument bytes, a new content block) is written at once, as the stream's first content is.

Whether a stream is *finished* is the format's to say, per stream: :meth:`Format.completion`
returns a :class:`Completion` that the coalescer shows every boundary event. A clean upstream
close before it is finished is ``upstream_incomplete``; a finished stream passes as it came.

Cost: :meth:`Format.classify` runs once per upstream event and is the only per-event hook;
:meth:`Format.detect` runs once per ``auto`` stream; :meth:`Format.is_terminal`,
:meth:`Format.usage` and :meth:`Format.response_facts` run on ``FLUSH`` events only (a few per
stream; ``response_facts`` also on the stream's first event); the rest run once per request or
per fault.

Formats are stateless and shared; the per-stream state is the :class:`MergeGroup`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Protocol, runtime_checkable

from streamhop.middleware.rechunk.formats.parsing import MALFORMED as MALFORMED
from streamhop.middleware.rechunk.formats.parsing import json_object
from streamhop.middleware.rechunk.formats.parsing import parse_object as parse_object
from streamhop.middleware.sse.events import SSEEvent


class Kind(IntEnum):
    """How the coalescer treats one event."""

    DELTA = 0
    HOLD = 1
    FLUSH = 2


class Content(IntEnum):
    """What an event carries for time-to-first-token: the second item of ``classify``'s result
    (any true value is content; plain ``bool`` is accepted too)."""

    NONE = 0
    TEXT = 1
    """Answer text or a refusal (or any content whose kind is not told apart): the first one is
    the answer's first token, timed on its own
    (``streamhop_time_to_first_answer_token_seconds``)."""
    TOOL_ARGS = 2
    """A non-empty tool-call argument fragment (its first one is timed on its own)."""
    REASONING = 3
    """Reasoning or thinking text (``reasoning_content``, ``reasoning``, ``thinking_delta``,
    ``response.reasoning_summary_text.delta``): content for TTFT, but not the answer."""


class Completion(Protocol):
    """Whether one stream has said it is over (one object per stream, from
    :meth:`Format.completion`).

    :meth:`observe` is shown every ``FLUSH`` event of the stream, in order (it may also be shown
    deltas: it must ignore them). Once :attr:`finished` is true it stays true.
    """

    finished: bool
    """True once the stream said it is over: its normal end (``openai-chat``: every choice
    reported a ``finish_reason``, or ``[DONE]``; ``anthropic``: ``message_stop``; Responses:
    ``response.completed`` / ``response.incomplete`` / ``response.failed``) or its own error
    event."""

    def observe(self, event: SSEEvent) -> None:
        """Take one event of the stream (cheap for events that cannot end it)."""


class TerminalCompletion:
    """The :class:`Completion` of a format whose streams end with one terminal event: finished
    once :meth:`Format.is_terminal` says so of an event."""

    __slots__ = ("_format", "finished")

    def __init__(self, fmt: Format) -> None:
        self._format = fmt
        self.finished = False

    def observe(self, event: SSEEvent) -> None:
        """Finished at the format's terminal event."""
        if not self.finished and self._format.is_terminal(event):
            self.finished = True

    def __repr__(self) -> str:
        return f"<TerminalCompletion {self._format.name} finished={self.finished}>"


class MergeGroup(Protocol):
    """Consecutive deltas merged into one event.

    ``first`` is the event the group was opened with; a group of one renders it unchanged.
    """

    count: int
    wire_size: int

    def add(self, event: SSEEvent, parsed: object) -> bool:
        """Merge ``event`` (parsed as ``parsed``) if compatible; False leaves it untouched."""

    def render(self) -> SSEEvent:
        """Return the merged event: one event whose accumulation equals that of the parts."""


class Match(IntEnum):
    """How strongly the first event of a stream says it is in a format (:meth:`Format.detect`).

    :func:`~streamhop.middleware.rechunk.formats.detect_format` takes the highest match; among
    equal ones, the format registered first.
    """

    NONE = 0
    """Not this format."""
    ANY = 1
    """Any event with data: the catch-all (plain ``sse``), never claimed by a provider format."""
    BODY = 2
    """The JSON data has this format's shape (a known ``type``, a ``choices`` list)."""
    NAME = 3
    """The SSE ``event:`` name is one of this format's; it wins over what the data looks like."""


Usage = tuple[int | None, int | None]
"""``(input_tokens, output_tokens)``; either is ``None`` when the event reports only the other."""


@dataclass(frozen=True, slots=True)
class ResponseFacts:
    """What one event says about the response as a whole (:meth:`Format.response_facts`): the
    OpenTelemetry GenAI span attributes ``gen_ai.response.id``, ``gen_ai.response.model`` and
    ``gen_ai.response.finish_reasons``
    (https://github.com/open-telemetry/semantic-conventions-genai, ``docs/gen-ai/gen-ai-spans.md``,
    "Inference").

    Attributes:
        response_id: the provider's id of the completion (``chatcmpl-...``, ``msg_...``,
            ``resp_...``), or ``None`` when the event does not carry it.
        response_model: the model that answered, as the provider names it, or ``None``.
        finish_reasons: why generation stopped, one per choice that finished in this event, in
            the provider's own words (``stop``, ``length``, ``end_turn``, ``tool_use``).
    """

    response_id: str | None = None
    response_model: str | None = None
    finish_reasons: tuple[str, ...] = ()


@runtime_checkable
class Format(Protocol):
    """Everything streamhop knows about one wire format (stateless, shared by every stream).

    Implementations are plain classes whose attributes are class constants; one module per
    format under :mod:`streamhop.middleware.rechunk.formats`, registered in that package's
    ``REGISTERED`` tuple.
    """

    @property
    def name(self) -> str:
        """The name in config (``[[routes]].format``), logs and metrics: ``openai-chat``."""

    @property
    def has_terminal(self) -> bool:
        """True when the format can tell a finished stream from a cut one (:meth:`completion`),
        so a clean close before the stream is finished is a truncated answer
        (``upstream_incomplete``)."""

    @property
    def terminal_hint(self) -> str | None:
        """How the normal terminal event looks, for messages (``data: [DONE]``); ``None`` when
        :attr:`has_terminal` is false."""

    @property
    def provider_name(self) -> str | None:
        """``gen_ai.provider.name`` (OpenTelemetry GenAI semantic conventions) of an upstream
        that speaks this format when its host is not a well-known one; ``None``: say nothing."""

    def detect(self, event: SSEEvent, obj: dict[str, Any] | None) -> Match:
        """How strongly the first event with data of an ``auto`` stream says it is this format.

        Runs once per ``auto`` stream, never per event.

        Args:
            event: the first event whose ``data`` is not ``None``.
            obj: its data parsed as a JSON object, parsed once for every format; ``None`` when
                the data is not a JSON object.

        Returns:
            :attr:`Match.NAME` when the SSE ``event:`` name is this format's,
            :attr:`Match.BODY` when ``obj`` has its shape, else :attr:`Match.NONE` (only the
            plain ``sse`` catch-all answers :attr:`Match.ANY`).
        """

    def classify(self, event: SSEEvent) -> tuple[Kind, Content | bool, object]:
        """Classify one event (runs once per upstream event: parse once, allocate nothing more).

        Returns:
            ``(kind, is_content, parsed)``: ``is_content`` is true when the event carries
            non-empty text, reasoning or tool-call arguments (counts for TTFT; a tool call's
            id and name with empty arguments do not), :attr:`Content.TOOL_ARGS` for arguments;
            ``parsed`` is the decoded JSON
            for a ``DELTA`` (handed back to :meth:`open_group` / :meth:`MergeGroup.add`), else
            ``None``. Malformed JSON is never an exception: such an event is ``FLUSH`` with
            ``parsed`` set to :data:`MALFORMED` so it is forwarded verbatim and counted.
        """

    def open_group(self, event: SSEEvent, parsed: object) -> MergeGroup:
        """Start a merge group with a ``DELTA`` event (``parsed`` from :meth:`classify`).

        Raises:
            TypeError: the format has no deltas (plain ``sse``); the coalescer never asks then.
        """

    def is_terminal(self, event: SSEEvent) -> bool:
        """True when ``event`` (a ``FLUSH`` event) ends the stream by itself: its terminal event
        (``[DONE]``, ``message_stop``, ``response.completed``) or an error event. A stream may
        also be finished without one (:meth:`completion`)."""

    def completion(self) -> Completion:
        """A new :class:`Completion` for one stream of this format: whether the stream said it
        is over. Formats without such a state return :class:`TerminalCompletion`."""

    def usage(self, event: SSEEvent) -> Usage | None:
        """Token usage reported by ``event`` (a ``FLUSH`` event), or ``None`` if it reports none.

        Returns:
            ``(input_tokens, output_tokens)`` in tokens; either may be ``None`` when the event
            reports only the other. A later report replaces an earlier one.
        """

    def response_facts(self, event: SSEEvent) -> ResponseFacts | None:
        """The response's id, model and finish reasons as far as ``event`` reports them.

        Called by the coalescer on ``FLUSH`` events and on the stream's first event with data,
        never on the deltas between them (the first event of a provider stream names the
        response and its model; finish reasons ride on boundaries). The coalescer keeps the
        first id and model reported and every finish reason, in order.

        Returns:
            The facts, or ``None`` when the event reports none of them (cheaply: formats test
            the event name or a substring before parsing).
        """

    def error_event(self, code: str, message: str) -> SSEEvent | None:
        """The terminal error event streamhop appends to a stream of this format, in the shape
        the provider's own SDK raises on, or ``None`` when the format has no such event (plain
        ``sse``: streamhop never adds to a stream it does not understand).

        Args:
            code: streamhop's machine-readable reason (``upstream_timeout``).
            message: a sentence for a person.
        """

    def error_body(self, code: str, message: str, status: int | None = None) -> bytes:
        """A JSON error response body in the provider's shape: a request streamhop refuses
        itself (400, 404, 413...) or a 502/503/504 before any byte.

        Args:
            code: streamhop's machine-readable reason (``upstream_unreachable``).
            message: a sentence for a person.
            status: the HTTP status the body goes out with; it picks the provider's error
                ``type`` (a 4xx is the client's fault, a 5xx streamhop's or the upstream's).
                ``None``: a server-side failure (the type of a 500).

        Returns:
            UTF-8 JSON bytes.
        """

    def claims_path(self, path: str) -> bool:
        """True when a request to ``path`` (the upstream path, query excluded) is this format's
        API, so its errors take this format's shape when the route says ``auto``."""

    def operation_name(self, path: str) -> str | None:
        """``gen_ai.operation.name`` (``chat``, ``text_completion``, ``embeddings``) of a request
        to ``path`` when it is one of this format's API endpoints, else ``None``."""


def json_type(event: SSEEvent) -> str | None:
    """The ``type`` member of the event's JSON object data, else ``None`` (never raises)."""
    data = event.data
    if data is None or '"type"' not in data:
        return None
    obj = json_object(data)
    kind = None if obj is None else obj.get("type")
    return kind if type(kind) is str else None


def usage_object(event: SSEEvent) -> dict[str, Any] | None:
    """The data of an event that may report usage, as a JSON object; ``None`` when it cannot.

    A substring test first, so most boundary events cost no parse: the first step of every
    JSON format's :meth:`Format.usage`.
    """
    data = event.data
    if data is None or "usage" not in data:
        return None
    return json_object(data)


def named_object(event: SSEEvent, names: frozenset[str]) -> tuple[str, dict[str, Any]] | None:
    """The event's name and its data as a JSON object, when that name is one of ``names``.

    The name is the ``event:`` line, else the data's JSON ``type`` (:func:`json_type`); an event
    with another name is skipped unparsed: the first step of the :meth:`Format.response_facts`
    of formats with typed events.

    Returns:
        ``(name, object)``, or ``None`` for another name or data that is not a JSON object.
    """
    name = event.event or json_type(event)
    if name is None or name not in names:
        return None
    obj = parse_object(event)
    if type(obj) is not dict:
        return None
    return name, obj


def token_usage(usage: object, input_key: str, output_key: str) -> Usage | None:
    """``(input_tokens, output_tokens)`` of a provider's usage object, read from its
    ``input_key`` and ``output_key`` members (:func:`token_count` each); ``None`` when ``usage``
    is not a JSON object: the last step of every JSON format's :meth:`Format.usage`."""
    if type(usage) is not dict:
        return None
    return token_count(usage.get(input_key)), token_count(usage.get(output_key))


def text_or_none(value: object) -> str | None:
    """``value`` when it is a non-empty ``str``, else ``None``."""
    return value if type(value) is str and value else None


def token_count(value: object) -> int | None:
    """``value`` when it is an ``int`` (a token count), else ``None`` (``bool`` excluded)."""
    return value if type(value) is int else None


def openai_error_type(status: int | None) -> str:
    """OpenAI's error ``type`` for a response of HTTP ``status``.

    OpenAI's API answers the client's faults (400, 404, 405, 413...) with
    ``invalid_request_error`` and its own with ``server_error``
    (https://platform.openai.com/docs/guides/error-codes and the error objects the API returns).
    The SDKs pick the exception class from the status (``openai.NotFoundError`` for 404); the
    type is what code that inspects ``exc.type`` or the body sees, so a refused request must not
    read as an outage. ``None`` (no status known, and every in-stream error event) is
    ``server_error``: a stream cut by streamhop or the upstream is not the client's fault.
    """
    if status is not None and 400 <= status < 500:
        return "invalid_request_error"
    return "server_error"


def openai_error_object(code: str, message: str, status: int | None = None) -> dict[str, Any]:
    """OpenAI's error object ``{"error": {"message", "type", "code", "param"}}``
    (https://platform.openai.com/docs/guides/error-codes): the shape OpenAI-compatible clients
    parse, so also the one of formats without their own. ``type`` follows ``status``
    (:func:`openai_error_type`)."""
    return {
        "error": {
            "message": message,
            "type": openai_error_type(status),
            "code": code,
            "param": None,
        }
    }
