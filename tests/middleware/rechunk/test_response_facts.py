"""The response's id, model and finish reasons, read by each format from boundary events and the
stream's first event only (never from the deltas between them), and kept by the coalescer: the
``gen_ai.response.*`` span attributes."""

from __future__ import annotations

from typing import Any, Final

import pytest

from streamhop.middleware import Coalescer, SSEEvent
from streamhop.middleware.rechunk.formats import FORMATS, Kind, ResponseFacts

from ..conftest import FIXTURE_FORMATS, FIXTURE_NAMES, HELD_DELTA_FIXTURES, fixture_events

EXPECTED: Final[dict[str, tuple[str, str, list[str]]]] = {
    "anthropic_thinking_text.sse": (
        "msg_01ALwQ87pTS7hH1PjSdC9wJD",
        "claude-sonnet-4-20250514",
        ["end_turn"],
    ),
    "anthropic_tool_use.sse": (
        "msg_019Q1hrJbZG26Fb9BQhrkHEr",
        "claude-sonnet-4-20250514",
        ["tool_use"],
    ),
    "groq_chat_reasoning_tool_call.sse": (
        "chatcmpl-e35442a8-12c0-4fb4-8be4-0e51727ce7b7",
        "openai/gpt-oss-120b",
        ["tool_calls"],
    ),
    "openai_chat_json_multibyte_degree.sse": (
        "chatcmpl-ABfwCjPMi0ubw56UyMIIeNfJzyogq",
        "gpt-4o-2024-08-06",
        ["stop"],
    ),
    "openai_chat_text_include_usage.sse": (
        "chatcmpl-ABfw031mOJeYCSHe4yI2ZjOA6kMJL",
        "gpt-4o-2024-08-06",
        ["stop"],
    ),
    "openai_chat_tool_call.sse": (
        "chatcmpl-ABfwCgi41eStOcARjZq97ohCEGBPO",
        "gpt-4o-2024-08-06",
        ["tool_calls"],
    ),
    "openai_responses_function_call.sse": (
        "resp_67e554a155508191900ee113293c4c830794405d35281ae2",
        "gpt-4o-2024-08-06",
        ["stop"],
    ),
    "openai_responses_text.sse": (
        "resp_67e554a21aa88191b65876ac5e5bbe0406c52f0e511c76ed",
        "gpt-4o-2024-08-06",
        ["stop"],
    ),
    # The values below were read from the recordings with plain json (first id and model,
    # every non-null finish_reason / response.completed, the last usage report).
    "cerebras_chat_gpt_oss_reasoning_no_done.sse": (
        "chatcmpl-e81d20d1-8afd-4d95-b989-c9fee7ebd0c3",
        "gpt-oss-120b",
        ["stop"],
    ),
    "cerebras_chat_qwen_thinking_length_no_done.sse": (
        "chatcmpl-6742f789-4d2f-41f6-a56e-d6ad7266f43f",
        "qwen-3-235b-a22b-thinking-2507",
        ["length"],
    ),
    "cerebras_chat_text_no_done.sse": (
        "chatcmpl-ced69062-b3a8-4666-955d-5f4abf68774a",
        "qwen-3-235b-a22b-instruct-2507",
        ["stop"],
    ),
    "deepseek_chat_reasoning_content.sse": (
        "33be18fc-3842-486c-8c29-dd8e578f7f20",
        "deepseek-reasoner",
        ["stop"],
    ),
    "evroc_chat_kimi_no_finish_no_done.sse": (
        "chatcmpl-9243fc61d9fa3b4e",
        "moonshotai/Kimi-K2.6",
        [],
    ),
    "groq_chat_gpt_oss_error_event_no_done.sse": (
        "chatcmpl-fd87720a-9b48-4161-bcd7-6127bd0d3696",
        "openai/gpt-oss-120b",
        [],
    ),
    "groq_chat_gpt_oss_reasoning.sse": (
        "chatcmpl-75baf1bb-17c6-470c-a321-54c0e252200f",
        "openai/gpt-oss-120b",
        ["stop"],
    ),
    "groq_chat_think_in_content.sse": (
        "chatcmpl-7c165e6b-201d-4a7f-8920-78032bf5179e",
        "deepseek-r1-distill-llama-70b",
        ["stop"],
    ),
    "mistral_chat_magistral_thinking.sse": (
        "9f9d90210f194076abeee223863eaaf0",
        "magistral-medium-latest",
        ["stop"],
    ),
    "openai_responses_reasoning_summary.sse": (
        "resp_68c42d0fb418819dbfa579f69406b49508fbf9b1584184ff",
        "o3-mini-2025-01-31",
        ["stop"],
    ),
    "openrouter_chat_error_chunk_no_done.sse": (
        "gen-1762104948-zKpcZ11QzTPiw9B9xeH0",
        "google/gemini-2.5-flash-lite",
        ["tool_calls"] * 15 + ["stop"],
    ),
    "openrouter_chat_reasoning_details_encrypted.sse": (
        "gen-1762141316-q3fB64DDMstJO0ZakdSK",
        "openai/o3",
        ["stop"],
    ),
    "openrouter_chat_reasoning_details_text.sse": (
        "gen-1765226419-AGrwjunAftQIAgweibL8",
        "anthropic/claude-sonnet-4.5",
        ["stop"],
    ),
    "openrouter_responses_reasoning_text.sse": (
        "gen-1764265411-Fu1iEX7h5MRWiL79lb94",
        "openai/gpt-oss-20b",
        ["stop"],
    ),
    "xai_chat_grok4_text.sse": (
        "2d5d988c-9e27-d2bb-2bd6-44f595537348_us-east-1",
        "grok-4-fast-reasoning",
        ["stop"],
    ),
    "xai_chat_reasoning_content.sse": (
        "ae5b0318-dc2a-1db2-37f9-cdba60e1efd1_us-east-1",
        "grok-3-mini",
        ["stop"],
    ),
}


def test_every_fixture_has_its_expected_facts() -> None:
    assert set(EXPECTED) == set(FIXTURE_NAMES)


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_the_coalescer_keeps_what_the_stream_reported(name: str) -> None:
    coalescer = Coalescer(FIXTURE_FORMATS[name])
    events = fixture_events(name)
    for i, event in enumerate(events):
        coalescer.push(event, 10.0 + i)
    response_id, model, reasons = EXPECTED[name]
    assert coalescer.response_id == response_id
    assert coalescer.response_model == model
    assert coalescer.finish_reasons == reasons
    # The first chunk of the response: the first event with data, content or not.
    first = next(i for i, e in enumerate(events) if e.data is not None)
    assert coalescer.first_event_at == 10.0 + first


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_facts_are_read_from_boundaries_and_the_first_event_only(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fmt = FORMATS[FIXTURE_FORMATS[name]]
    asked: list[SSEEvent] = []
    original = type(fmt).response_facts

    def spy(self: Any, event: SSEEvent) -> ResponseFacts | None:
        asked.append(event)
        return original(self, event)

    monkeypatch.setattr(type(fmt), "response_facts", spy)
    coalescer = Coalescer(fmt.name)
    events = fixture_events(name)
    for event in events:
        coalescer.push(event, 0.0)
    boundaries = [e for e in events if fmt.classify(e)[0] is Kind.FLUSH]
    first = next(e for e in events if e.data is not None)
    assert asked == ([] if first in boundaries else [first]) + boundaries
    deltas = [e for e in events if fmt.classify(e)[0] is Kind.DELTA]
    assert all(e not in asked for e in deltas[1:])
    if name not in HELD_DELTA_FIXTURES:
        assert len(asked) < len(events)


def test_a_chat_stream_without_a_role_chunk_is_named_by_its_first_delta() -> None:
    coalescer = Coalescer("auto")
    coalescer.push(
        SSEEvent(
            data='{"id":"c-1","object":"chat.completion.chunk","model":"m1",'
            '"choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":null}]}'
        ),
        1.0,
    )
    assert (coalescer.response_id, coalescer.response_model, coalescer.first_event_at) == (
        "c-1",
        "m1",
        1.0,
    )


def test_each_finished_choice_adds_its_reason_in_order() -> None:
    coalescer = Coalescer("openai-chat")
    for data in (
        '{"id":"c","model":"m","choices":[{"index":1,"delta":{},"finish_reason":"length"}]}',
        '{"id":"c","model":"m","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}',
        "[DONE]",
    ):
        coalescer.push(SSEEvent(data=data), 0.0)
    assert coalescer.finish_reasons == ["length", "stop"]


@pytest.mark.parametrize(
    ("event", "reasons"),
    [
        ("response.completed", ["stop"]),
        ("response.failed", ["error"]),
        ("response.incomplete", ["max_output_tokens"]),
    ],
)
def test_responses_finish_reasons_come_from_the_final_status(
    event: str, reasons: list[str]
) -> None:
    coalescer = Coalescer("openai-responses")
    response = '{"id":"resp_1","model":"m","incomplete_details":{"reason":"max_output_tokens"}}'
    coalescer.push(SSEEvent(data=f'{{"type":"{event}","response":{response}}}', event=event), 0.0)
    assert (coalescer.response_id, coalescer.finish_reasons) == ("resp_1", reasons)


def test_plain_sse_reports_nothing() -> None:
    coalescer = Coalescer("sse")
    coalescer.push(SSEEvent(data='{"id":"x","model":"m","finish_reason":"stop"}'), 0.0)
    assert (coalescer.response_id, coalescer.response_model, coalescer.finish_reasons) == (
        None,
        None,
        [],
    )
    assert coalescer.first_event_at == 0.0
