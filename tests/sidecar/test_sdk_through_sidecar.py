"""The official SDKs against the real simulator, directly and through the real sidecar: final
messages are equal, coalescing is visible, SSE response headers are right."""

from __future__ import annotations

from typing import Any

import anthropic
import httpx2
import openai

from tests.support import StreamhopProcess

TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]
MESSAGES: list[Any] = [{"role": "user", "content": "Tell me about fast inference."}]


def _openai(base: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base + "/v1", api_key="x", max_retries=0, timeout=30)


def _chat(base: str, **kwargs: Any) -> tuple[dict[str, Any], int]:
    events = 0
    with (
        _openai(base) as client,  # closed: an unclosed pool leaks sockets into a later test
        client.chat.completions.stream(
            model="sim", messages=MESSAGES, max_tokens=300, **kwargs
        ) as stream,
    ):
        for event in stream:
            if event.type == "chunk":
                events += 1
        final = stream.get_final_completion().model_dump()
    final.pop("created", None)
    return final, events


def test_chat_text_equal_and_coalesced(
    simulator: StreamhopProcess, sidecar: StreamhopProcess
) -> None:
    options = {"stream_options": {"include_usage": True}}
    direct, direct_events = _chat(simulator.url, **options)
    proxied, proxied_events = _chat(sidecar.url + "/sim", **options)
    assert proxied == direct
    assert direct["usage"]["completion_tokens"] == 300
    assert direct["choices"][0]["message"]["content"]
    # 300 tokens at 10 tokens/event = 30 content events upstream, 5 ms apart.
    assert proxied_events <= direct_events / 2, (proxied_events, direct_events)


def test_chat_tool_call_equal(simulator: StreamhopProcess, sidecar: StreamhopProcess) -> None:
    direct, _ = _chat(simulator.url, tools=TOOLS)
    proxied, _ = _chat(sidecar.url + "/sim", tools=TOOLS)
    assert proxied == direct
    calls = direct["choices"][0]["message"]["tool_calls"]
    assert calls and calls[0]["function"]["name"] == "get_weather"
    assert direct["choices"][0]["finish_reason"] == "tool_calls"


def test_responses_equal(simulator: StreamhopProcess, sidecar: StreamhopProcess) -> None:
    def final(base: str, **kwargs: Any) -> dict[str, Any]:
        with (
            _openai(base) as client,
            client.responses.stream(
                model="sim", input="Explain SSE.", max_output_tokens=200, **kwargs
            ) as stream,
        ):
            for _ in stream:
                pass
            out = stream.get_final_response().model_dump()
        out.pop("created_at", None)
        return out

    assert final(sidecar.url + "/sim") == final(simulator.url)
    responses_tools: list[Any] = [
        {
            "type": "function",
            "name": "get_weather",
            "parameters": TOOLS[0]["function"]["parameters"],
        }
    ]
    assert final(sidecar.url + "/sim", tools=responses_tools) == final(
        simulator.url, tools=responses_tools
    )


def test_anthropic_messages_equal(simulator: StreamhopProcess, sidecar: StreamhopProcess) -> None:
    def final(base: str, **kwargs: Any) -> dict[str, Any]:
        with (
            anthropic.Anthropic(base_url=base, api_key="x", max_retries=0, timeout=30) as client,
            client.messages.stream(
                model="sim", max_tokens=300, messages=MESSAGES, **kwargs
            ) as stream,
        ):
            for _ in stream:
                pass
            return stream.get_final_message().model_dump()

    assert final(sidecar.url + "/sim") == final(simulator.url)
    thinking: dict[str, Any] = {
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "tools": [
            {
                "name": "get_weather",
                "description": "Weather",
                "input_schema": TOOLS[0]["function"]["parameters"],
            }
        ],
    }
    assert final(sidecar.url + "/sim", **thinking) == final(simulator.url, **thinking)


def test_sse_response_headers(sidecar: StreamhopProcess) -> None:
    with (
        httpx2.Client(timeout=30) as http,
        http.stream(
            "POST",
            sidecar.url + "/sim/v1/chat/completions",
            json={"model": "sim", "messages": MESSAGES, "stream": True, "max_tokens": 20},
        ) as response,
    ):
        body = response.read()
    headers = response.headers
    assert response.status_code == 200
    assert headers["content-type"].startswith("text/event-stream")
    assert headers["cache-control"] == "no-cache"
    assert headers["x-accel-buffering"] == "no"
    assert len(headers["x-streamhop-stream-id"]) == 16
    assert "content-length" not in headers
    assert "content-encoding" not in headers
    timing = headers["server-timing"]
    assert "upstream-connect;dur=" in timing and "upstream-headers;dur=" in timing
    assert body.rstrip().endswith(b"data: [DONE]")


def test_non_streaming_json_equal(simulator: StreamhopProcess, sidecar: StreamhopProcess) -> None:
    def final(base: str) -> dict[str, Any]:
        with _openai(base) as client:
            out = client.chat.completions.create(
                model="sim", messages=MESSAGES, max_tokens=50
            ).model_dump()
        out.pop("created", None)
        return out

    assert final(sidecar.url + "/sim") == final(simulator.url)
