"""Every recorded provider stream, replayed by a real upstream through the real sidecar, gives
the official SDK's accumulator the same final message as the stream sent directly.

Paced at 5 ms per event (200 events/s, as a fast provider) and as one burst, with every event
written in two pieces cut inside a UTF-8 sequence, so the sidecar's decoder sees real splits.
"""

from __future__ import annotations

from typing import Any

import anthropic
import httpx2
import openai
import pytest

from tests.sidecar.upstreams import fixture_events
from tests.support import FIXTURES, BackgroundAiohttp, StreamhopProcess

CHAT = [
    "openai_chat_text_include_usage",
    "openai_chat_tool_call",
    "openai_chat_json_multibyte_degree",
    "groq_chat_reasoning_tool_call",
]
RESPONSES = ["openai_responses_text", "openai_responses_function_call"]
ANTHROPIC = ["anthropic_tool_use", "anthropic_thinking_text"]
PACES = [0, 5]


def test_fixture_lists_cover_every_recording() -> None:
    on_disk = {p.stem for p in FIXTURES.glob("*.sse")}
    assert on_disk == set(CHAT + RESPONSES + ANTHROPIC)


def _openai(base: str, name: str, pace: int) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base}/fx/{name}/pace/{pace}/v1", api_key="x", max_retries=0)


def _chat_final(client: openai.OpenAI) -> dict[str, Any]:
    """The final completion; closes ``client`` (its connection pool) when done."""
    with (
        client,
        client.chat.completions.stream(
            model="m", messages=[{"role": "user", "content": "hi"}]
        ) as stream,
    ):
        for _ in stream:
            pass
        return stream.get_final_completion().model_dump()


def _raw_events(url: str) -> list[str]:
    """The SSE data lines a client receives from ``url`` (POST), in order."""
    with httpx2.Client(timeout=30) as http, http.stream("POST", url, json={}) as response:
        body = response.read().decode("utf-8")
    return [line for line in body.split("\n") if line.startswith("data:")]


@pytest.mark.parametrize("pace", PACES)
@pytest.mark.parametrize("name", CHAT)
def test_openai_chat_fixture_through_sidecar(
    name: str, pace: int, scripted_upstream: BackgroundAiohttp, sidecar: StreamhopProcess
) -> None:
    direct = _chat_final(_openai(scripted_upstream.url, name, pace))
    proxied = _chat_final(_openai(sidecar.url, name, pace))
    assert proxied == direct
    text = str(direct["choices"][0]["message"])
    assert "\ufffd" not in str(proxied) and "\ufffd" not in text


@pytest.mark.parametrize("pace", PACES)
@pytest.mark.parametrize("name", RESPONSES)
def test_openai_responses_fixture_through_sidecar(
    name: str, pace: int, scripted_upstream: BackgroundAiohttp, sidecar: StreamhopProcess
) -> None:
    def final(base: str) -> dict[str, Any]:
        client = _openai(base, name, pace)
        with client, client.responses.stream(model="m", input="hi") as stream:
            for _ in stream:
                pass
            return stream.get_final_response().model_dump()

    direct = final(scripted_upstream.url)
    assert final(sidecar.url) == direct
    assert "\ufffd" not in str(direct)


@pytest.mark.parametrize("pace", PACES)
@pytest.mark.parametrize("name", ANTHROPIC)
def test_anthropic_fixture_through_sidecar(
    name: str, pace: int, scripted_upstream: BackgroundAiohttp, sidecar: StreamhopProcess
) -> None:
    def final(base: str) -> dict[str, Any]:
        client = anthropic.Anthropic(
            base_url=f"{base}/fx/{name}/pace/{pace}", api_key="x", max_retries=0
        )
        with (
            client,
            client.messages.stream(
                model="m", max_tokens=100, messages=[{"role": "user", "content": "hi"}]
            ) as stream,
        ):
            for _ in stream:
                pass
            return stream.get_final_message().model_dump()

    direct = final(scripted_upstream.url)
    proxied = final(sidecar.url)
    assert proxied == direct
    assert "\ufffd" not in str(proxied)


@pytest.mark.parametrize("name", ["openai_chat_json_multibyte_degree", "anthropic_thinking_text"])
def test_paced_long_streams_are_coalesced(
    name: str, scripted_upstream: BackgroundAiohttp, sidecar: StreamhopProcess
) -> None:
    """At 200 events/s with the default 20 ms window, far fewer events reach the client."""
    upstream_events = len(fixture_events(name))
    path = f"/fx/{name}/pace/5/v1/chat/completions"
    direct = _raw_events(scripted_upstream.url + path)
    proxied = _raw_events(sidecar.url + path)
    assert len(direct) == upstream_events
    # About 4 events per 20 ms window: well under half, with room for a noisy machine.
    assert len(proxied) <= upstream_events / 2, (len(proxied), upstream_events)


def test_burst_is_not_split_into_more_events(
    scripted_upstream: BackgroundAiohttp, sidecar: StreamhopProcess
) -> None:
    name = "openai_chat_json_multibyte_degree"
    path = f"/fx/{name}/pace/0/v1/chat/completions"
    proxied = _raw_events(sidecar.url + path)
    assert len(proxied) < len(fixture_events(name)) / 4
