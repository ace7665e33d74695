"""A format is one object: every registered format implements the whole :class:`Format`
protocol, detection follows the registration order, and errors, usage, paths and span names come
from the format objects (a format registered in the list alone is picked up everywhere)."""

from __future__ import annotations

import inspect
import json
from typing import Any, Final, cast

import orjson
import pytest

from streamhop.middleware import Coalescer, SSEEvent
from streamhop.middleware.rechunk.formats import (
    DEFAULT_FORMAT_NAME,
    FORMAT_NAMES,
    FORMATS,
    REGISTERED,
    TERMINAL_HINTS,
    Content,
    Format,
    Kind,
    Match,
    ResponseFacts,
    detect_format,
    error_body,
    error_event,
    error_format,
    format_for_path,
    get_format,
    operation_for_path,
    provider_for,
    registry,
)
from streamhop.middleware.rechunk.formats.base import (
    TerminalCompletion,
    token_count,
    usage_object,
)
from streamhop.middleware.rechunk.formats.field_group import FieldGroup, FieldParsed

from ..conftest import FIXTURE_FORMATS, FIXTURE_NAMES, fixture_events

PROVIDER_FORMATS: Final = ("anthropic", "openai-responses", "openai-chat")


def _members(cls: type) -> dict[str, Any]:
    return {
        name: value
        for name, value in vars(cls).items()
        if not name.startswith("_") and (callable(value) or isinstance(value, property))
    }


PROTOCOL_MEMBERS: Final = _members(Format)


# ----------------------------------------------------------------------------------------------
# The protocol


def test_protocol_has_every_member_a_format_owns() -> None:
    assert set(PROTOCOL_MEMBERS) == {
        "name",
        "has_terminal",
        "terminal_hint",
        "provider_name",
        "detect",
        "classify",
        "open_group",
        "is_terminal",
        "completion",
        "usage",
        "response_facts",
        "error_event",
        "error_body",
        "claims_path",
        "operation_name",
    }


@pytest.mark.parametrize("fmt", REGISTERED, ids=lambda f: f.name)
def test_each_registered_format_implements_the_protocol(fmt: Format) -> None:
    assert isinstance(fmt, Format)
    for name, member in PROTOCOL_MEMBERS.items():
        value = getattr(type(fmt), name)
        if isinstance(member, property):
            assert not callable(value), f"{fmt.name}.{name} is a constant"
            continue
        expected = list(inspect.signature(member).parameters)
        assert list(inspect.signature(value).parameters) == expected, f"{fmt.name}.{name}"
    assert isinstance(fmt.name, str) and fmt.name
    assert isinstance(fmt.has_terminal, bool)
    assert (fmt.terminal_hint is not None) == fmt.has_terminal
    # Stateless and shared: no per-instance state (a class compiled with mypyc has no
    # ``__dict__`` at all).
    assert getattr(fmt, "__dict__", {}) == {}


def test_registry_names_are_unique_and_match_the_lookups() -> None:
    names = [f.name for f in REGISTERED]
    assert len(set(names)) == len(names)
    assert list(FORMATS) == names
    assert ("auto", *names) == FORMAT_NAMES
    for fmt in REGISTERED:
        assert get_format(fmt.name) is fmt
    assert DEFAULT_FORMAT_NAME in FORMATS
    assert TERMINAL_HINTS == {
        "anthropic": "message_stop",
        "openai-responses": "response.completed",
        "openai-chat": "a finish_reason for every choice, or data: [DONE]",
    }


# ----------------------------------------------------------------------------------------------
# Detection


def test_detection_order_is_the_registration_order_with_plain_sse_last() -> None:
    assert [f.name for f in REGISTERED] == [
        "anthropic",
        "openai-responses",
        "openai-chat",
        "sse",
    ]


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (SSEEvent(data="{}", event="message_start"), {"anthropic": Match.NAME}),
        (SSEEvent(data='{"type": "content_block_delta"}'), {"anthropic": Match.BODY}),
        (SSEEvent(data="x", event="response.created"), {"openai-responses": Match.NAME}),
        (SSEEvent(data='{"type": "response.created"}'), {"openai-responses": Match.BODY}),
        (SSEEvent(data='{"choices": []}'), {"openai-chat": Match.BODY}),
        (SSEEvent(data='{"object": "chat.completion.chunk"}'), {"openai-chat": Match.BODY}),
        (SSEEvent(data='{"type": "ping"}', event="ping"), {}),
        (SSEEvent(data="hello"), {}),
    ],
)
def test_each_format_says_how_strongly_an_event_is_its_own(
    event: SSEEvent, expected: dict[str, Match]
) -> None:
    assert event.data is not None
    try:
        parsed = json.loads(event.data)
    except json.JSONDecodeError:
        parsed = None
    obj = parsed if type(parsed) is dict else None
    got = {f.name: f.detect(event, obj) for f in REGISTERED}
    assert got == {
        **{name: Match.NONE for name in PROVIDER_FORMATS},
        **expected,
        "sse": Match.ANY,
    }


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_only_the_fixtures_own_format_claims_its_first_event(name: str) -> None:
    first = fixture_events(name)[0]
    assert first.data is not None
    parsed = json.loads(first.data)
    claims = [f.name for f in REGISTERED if f.detect(first, parsed) > Match.ANY]
    assert claims == [FIXTURE_FORMATS[name]]


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        # The event name wins over the data's shape ...
        (SSEEvent(data='{"type": "response.created"}', event="message_start"), "anthropic"),
        (SSEEvent(data='{"type": "message_start"}', event="response.created"), "openai-responses"),
        (SSEEvent(data='{"choices": []}', event="content_block_delta"), "anthropic"),
        # ... a typed event wins over a `choices` list (registered before openai-chat) ...
        (SSEEvent(data='{"type": "response.created", "choices": []}'), "openai-responses"),
        (SSEEvent(data='{"type": "message_start", "choices": []}'), "anthropic"),
        # ... and what no provider format claims is plain SSE.
        (SSEEvent(data='{"type": "ping"}', event="ping"), "sse"),
        (SSEEvent(data='"choices"'), "sse"),
    ],
)
def test_detect_format_takes_the_highest_match_then_the_first_registered(
    event: SSEEvent, expected: str
) -> None:
    detected = detect_format(event)
    assert detected is not None and detected.name == expected


# ----------------------------------------------------------------------------------------------
# Error events and bodies


def test_anthropic_error_event_is_what_the_anthropic_sdk_raises_on() -> None:
    event = get_format("anthropic").error_event("upstream_timeout", "no byte for 60 s")
    assert event is not None and event.event == "error"
    assert json.loads(event.data or "") == {
        "type": "error",
        "error": {"type": "api_error", "message": "no byte for 60 s", "code": "upstream_timeout"},
    }


def test_responses_error_event_is_the_responses_error_event() -> None:
    event = get_format("openai-responses").error_event("upstream_timeout", "no byte")
    assert event is not None and event.event == "error"
    assert json.loads(event.data or "") == {
        "type": "error",
        "code": "upstream_timeout",
        "message": "no byte",
        "param": None,
    }


def test_chat_error_event_is_an_unnamed_error_object() -> None:
    event = get_format("openai-chat").error_event("upstream_timeout", "no byte")
    assert event is not None and event.event is None
    assert json.loads(event.data or "") == {
        "error": {
            "message": "no byte",
            "type": "server_error",
            "code": "upstream_timeout",
            "param": None,
        }
    }


def test_plain_sse_gets_no_error_event() -> None:
    """streamhop never adds an event to a stream it does not understand."""
    assert get_format("sse").error_event("upstream_timeout", "no byte") is None
    assert error_format("sse").error_event("upstream_timeout", "no byte") is None


@pytest.mark.parametrize("name", PROVIDER_FORMATS)
def test_each_provider_format_has_an_error_event_that_ends_its_stream(name: str) -> None:
    fmt = get_format(name)
    event = fmt.error_event("upstream_disconnected", "gone")
    assert event is not None
    kind, content, _ = fmt.classify(event)
    assert kind is Kind.FLUSH and not content
    assert fmt.is_terminal(event)


@pytest.mark.parametrize(
    ("name", "shape"),
    [
        ("anthropic", "anthropic"),
        ("openai-responses", "openai"),
        ("openai-chat", "openai"),
        ("sse", "openai"),
        (None, "openai"),
        ("auto", "openai"),
        ("gemini", "openai"),
    ],
)
def test_error_body_per_format(name: str | None, shape: str) -> None:
    body = json.loads(error_body(name, "upstream_unreachable", "cannot connect"))
    if shape == "anthropic":
        assert body["type"] == "error"
        assert body["error"]["type"] == "api_error"
        assert body["error"]["code"] == "upstream_unreachable"
    else:
        assert body == {
            "error": {
                "message": "cannot connect",
                "type": "server_error",
                "code": "upstream_unreachable",
                "param": None,
            }
        }


@pytest.mark.parametrize("name", [None, "auto", "sse", "gemini"])
def test_error_event_wrapper_answers_openai_style_where_the_format_has_none(
    name: str | None,
) -> None:
    """The compatibility wrapper always returns an event; the default format's."""
    expected = get_format(DEFAULT_FORMAT_NAME).error_event("c", "m")
    assert error_event(name, "c", "m") == expected


@pytest.mark.parametrize("name", PROVIDER_FORMATS)
def test_error_event_wrapper_delegates_to_the_format(name: str) -> None:
    assert error_event(name, "c", "m") == get_format(name).error_event("c", "m")


# ----------------------------------------------------------------------------------------------
# Usage


FIXTURE_USAGE: Final = {
    "anthropic_thinking_text.sse": (43, 282),
    "anthropic_tool_use.sse": (377, 65),
    "groq_chat_reasoning_tool_call.sse": (304, 49),
    "openai_chat_json_multibyte_degree.sse": (19, 177),
    "openai_chat_text_include_usage.sse": (14, 30),
    "openai_chat_tool_call.sse": (48, 19),
    "openai_responses_function_call.sse": (255, 16),
    "openai_responses_text.sse": (278, 9),
    "cerebras_chat_gpt_oss_reasoning_no_done.sse": (102, 77),
    "cerebras_chat_qwen_thinking_length_no_done.sse": (32, 100),
    "cerebras_chat_text_no_done.sse": (30, 21),
    "deepseek_chat_reasoning_content.sse": (6, 212),
    "evroc_chat_kimi_no_finish_no_done.sse": (None, None),
    "groq_chat_gpt_oss_error_event_no_done.sse": (None, None),
    "groq_chat_gpt_oss_reasoning.sse": (91, 63),
    "groq_chat_think_in_content.sse": (20, 116),
    "mistral_chat_magistral_thinking.sse": (10, 232),
    "openai_responses_reasoning_summary.sse": (13, 1680),
    "openrouter_chat_error_chunk_no_done.sse": (41, 243),
    "openrouter_chat_reasoning_details_encrypted.sse": (9, 104),
    "openrouter_chat_reasoning_details_text.sse": (43, 36),
    "openrouter_responses_reasoning_text.sse": (78, 37),
    "xai_chat_grok4_text.sse": (173, 12),
    "xai_chat_reasoning_content.sse": (28, 14),
}


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_usage_of_each_recorded_stream(name: str) -> None:
    """The last report wins per element; the coalescer asks the format on boundaries only."""
    coalescer = Coalescer()
    for event in fixture_events(name):
        coalescer.push(event, 0.0)
    assert (coalescer.usage_input_tokens, coalescer.usage_output_tokens) == FIXTURE_USAGE[name]


@pytest.mark.parametrize(
    ("name", "obj", "expected"),
    [
        (
            "openai-chat",
            {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 5}},
            (3, 5),
        ),
        ("openai-chat", {"choices": [], "usage": None}, None),
        ("openai-chat", {"usage": {"input_tokens": 3}}, (None, None)),
        (
            "openai-responses",
            {
                "type": "response.completed",
                "response": {"usage": {"input_tokens": 3, "output_tokens": 5}},
            },
            (3, 5),
        ),
        ("openai-responses", {"type": "response.created", "response": {"usage": None}}, None),
        (
            "anthropic",
            {"type": "message_start", "message": {"usage": {"input_tokens": 7}}},
            (7, None),
        ),
        ("anthropic", {"type": "message_delta", "usage": {"output_tokens": 9}}, (None, 9)),
        ("anthropic", {"type": "message_delta", "usage": {"output_tokens": True}}, (None, None)),
        ("sse", {"usage": {"input_tokens": 3, "output_tokens": 5}}, None),
    ],
)
def test_usage_per_format(name: str, obj: dict[str, Any], expected: object) -> None:
    assert get_format(name).usage(SSEEvent(data=json.dumps(obj))) == expected


@pytest.mark.parametrize("fmt", REGISTERED, ids=lambda f: f.name)
@pytest.mark.parametrize("data", [None, "[DONE]", "not json usage", '["usage"]', '{"text": "x"}'])
def test_usage_is_none_for_events_without_a_report(fmt: Format, data: str | None) -> None:
    assert fmt.usage(SSEEvent(data=data)) is None


# ----------------------------------------------------------------------------------------------
# Paths and span names


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/v1/messages", "anthropic"),
        ("/v1/messages/count_tokens", "anthropic"),
        ("/anthropic/v1/messages", "anthropic"),
        ("/v1/responses", "openai-responses"),
        ("/v1/chat/completions", "openai-chat"),
        ("/v1/embeddings", "openai-chat"),
        ("/events", DEFAULT_FORMAT_NAME),
        ("/", DEFAULT_FORMAT_NAME),
    ],
)
def test_format_for_path(path: str, expected: str) -> None:
    assert format_for_path(path) == expected


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/v1/chat/completions", "chat"),
        ("/v1/responses", "chat"),
        ("/v1/messages", "chat"),
        ("/v1/completions", "text_completion"),
        ("/v1/embeddings", "embeddings"),
        ("/v1/messages/count_tokens", None),
        ("/v1/models", None),
        ("/events", None),
    ],
)
def test_operation_for_path(path: str, expected: str | None) -> None:
    assert operation_for_path(path) == expected


@pytest.mark.parametrize(
    ("route_format", "path", "expected"),
    [
        ("anthropic", "/v1/chat/completions", "anthropic"),
        ("openai-chat", "/v1/chat/completions", "openai"),
        ("openai-responses", "/v1/responses", "openai"),
        ("auto", "/v1/messages", "anthropic"),
        ("auto", "/v1/chat/completions", "openai"),
        ("auto", "/v1/responses", "openai"),
        ("sse", "/v1/messages", "anthropic"),
        ("sse", "/v1/chat/completions", "openai"),
        ("auto", "/gateway/messages/v1/chat/completions", "openai"),
        ("auto", "/v1/models", None),
    ],
)
def test_provider_for(route_format: str, path: str, expected: str | None) -> None:
    assert provider_for(route_format, path) == expected


# ----------------------------------------------------------------------------------------------
# A new format is one object in the list


class _ToyFormat:
    """A made-up provider: ``event: token`` deltas ``{"text"}``, ``event: done`` with usage."""

    name = "toy"
    has_terminal = True
    terminal_hint = "event: done"
    provider_name = "toy"

    def detect(self, event: SSEEvent, obj: dict[str, Any] | None) -> Match:
        return Match.NAME if event.event in ("token", "done") else Match.NONE

    def classify(self, event: SSEEvent) -> tuple[Kind, Content | bool, object]:
        if event.event != "token" or event.data is None:
            return Kind.FLUSH, False, None
        obj = orjson.loads(event.data)
        return Kind.DELTA, Content.TEXT, (obj, "text", obj["text"])

    def open_group(self, event: SSEEvent, parsed: object) -> FieldGroup:
        obj, field, text = cast(FieldParsed, parsed)
        return FieldGroup(event, obj, None, field, text, frozenset(("text",)))

    def is_terminal(self, event: SSEEvent) -> bool:
        return event.event in ("done", "error")

    def completion(self) -> TerminalCompletion:
        return TerminalCompletion(self)

    def usage(self, event: SSEEvent) -> tuple[int | None, int | None] | None:
        obj = usage_object(event)
        usage = obj.get("usage") if obj is not None else None
        if type(usage) is not dict:
            return None
        return token_count(usage.get("in")), token_count(usage.get("out"))

    def response_facts(self, event: SSEEvent) -> ResponseFacts | None:
        return None

    def error_event(self, code: str, message: str) -> SSEEvent:
        return SSEEvent(data=self.error_body(code, message).decode(), event="error")

    def error_body(self, code: str, message: str, status: int | None = None) -> bytes:
        return orjson.dumps({"toy_error": code, "message": message})

    def claims_path(self, path: str) -> bool:
        return path.endswith("/toy/generate")

    def operation_name(self, path: str) -> str | None:
        return "chat" if path.endswith("/toy/generate") else None


def test_a_format_registered_in_the_list_is_used_everywhere(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    toy = _ToyFormat()
    assert isinstance(toy, Format)
    registered = (toy, *registry.REGISTERED)
    monkeypatch.setattr(registry, "REGISTERED", registered)
    monkeypatch.setattr(registry, "FORMATS", {f.name: f for f in registered})

    coalescer = Coalescer(flush_interval=1.0)
    coalescer.push(SSEEvent(data=json.dumps({"text": "a"}), event="token"), 0.0)
    assert coalescer.format_name == "toy"
    assert coalescer.due(0.0)  # the first content goes out at once
    assert [e.data for e in coalescer.take()] == ['{"text": "a"}']
    for text in ("b", "c"):
        coalescer.push(SSEEvent(data=json.dumps({"text": text}), event="token"), 0.1)
    assert not coalescer.due(0.1)
    assert [e.data for e in coalescer.take()] == ['{"text":"bc"}']
    assert coalescer.incomplete
    coalescer.push(SSEEvent(data='{"usage": {"in": 2, "out": 3}}', event="done"), 0.5)
    assert not coalescer.incomplete
    assert (coalescer.usage_input_tokens, coalescer.usage_output_tokens) == (2, 3)

    assert error_event("toy", "c", "m") == SSEEvent(
        data='{"toy_error":"c","message":"m"}', event="error"
    )
    assert json.loads(error_body("toy", "c", "m")) == {"toy_error": "c", "message": "m"}
    assert format_for_path("/v1/toy/generate") == "toy"
    assert operation_for_path("/v1/toy/generate") == "chat"
    assert provider_for("auto", "/v1/toy/generate") == "toy"
    assert Coalescer(format="toy").format_name == "toy"
