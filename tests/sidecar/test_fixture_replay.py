"""Every recorded provider stream, replayed by a real upstream through the real sidecar, gives
the official SDK's accumulator the same final message as the stream sent directly.

Paced at 5 ms per event (200 events/s, as a fast provider) and as one burst, with every event
written in two pieces cut inside a UTF-8 sequence, so the sidecar's decoder sees real splits.
"""

from __future__ import annotations

import re
from typing import Any

import anthropic
import httpx2
import openai
import pytest

from tests.sidecar.upstreams import fixture_events
from tests.support import FIXTURES, BackgroundAiohttp, StreamhopProcess

CHAT = sorted(p.stem for p in FIXTURES.glob("*_chat_*.sse"))
RESPONSES = sorted(p.stem for p in FIXTURES.glob("*_responses_*.sse"))
ANTHROPIC = sorted(p.stem for p in FIXTURES.glob("anthropic_*.sse"))
PACES = [0, 5]
# Recorded cut before the stream said it was finished (no finish_reason, no [DONE]): through
# streamhop it ends with `upstream_incomplete` (tested below), directly the SDK sees no end.
UNFINISHED = {"evroc_chat_kimi_no_finish_no_done"}
# Recorded streams that end without `data: [DONE]` although they are finished (every choice
# reported its finish_reason, or the provider's own error event): nothing may be appended.
FINISHED_WITHOUT_DONE = sorted(
    name
    for name in CHAT
    if name not in UNFINISHED and b"data: [DONE]" not in (FIXTURES / f"{name}.sse").read_bytes()
)


def test_fixture_lists_cover_every_recording() -> None:
    on_disk = {p.stem for p in FIXTURES.glob("*.sse")}
    assert on_disk == set(CHAT + RESPONSES + ANTHROPIC)


def _openai(base: str, name: str, pace: int) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base}/fx/{name}/pace/{pace}/v1", api_key="x", max_retries=0)


def _chat_final(client: openai.OpenAI) -> dict[str, Any]:
    """The final completion, or the error the SDK raised (its class and message); closes
    ``client`` (its connection pool) when done."""
    try:
        with (
            client,
            client.chat.completions.stream(
                model="m", messages=[{"role": "user", "content": "hi"}]
            ) as stream,
        ):
            for _ in stream:
                pass
            final = stream.get_final_completion().model_dump(warnings=False)
    except openai.OpenAIError as exc:
        return {"raised": type(exc).__name__, "message": str(exc)}
    return _collapse_labels(final)


def _collapse_labels(final: dict[str, Any]) -> dict[str, Any]:
    """The SDK concatenates every string field of a delta, so a label on every delta (gpt-oss
    ``channel: "analysis"``) accumulates once per event; streamhop writes it once per merged
    event (docs/rechunking.md). Runs of one repeated label are collapsed to one, so the rest of
    the message is compared exactly."""
    for choice in final.get("choices") or []:
        message = choice.get("message") or {}
        for key in ("channel",):
            value = message.get(key)
            if isinstance(value, str):
                message[key] = re.sub(r"(analysis|final|commentary)(?:\1)+", r"\1", value)
    return final


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
    if name in UNFINISHED:
        # Cut before its finish: streamhop says so in OpenAI's error shape, and the SDK raises.
        assert proxied["raised"] == "APIError" and "incomplete" in proxied["message"]
        return
    assert proxied == direct
    text = str(direct)
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


@pytest.mark.parametrize(
    "name",
    [
        "openai_chat_json_multibyte_degree",
        "anthropic_thinking_text",
        # gpt-oss reasoning with its `channel` label, on Groq and on Cerebras
        "groq_chat_gpt_oss_reasoning",
        "cerebras_chat_gpt_oss_reasoning_no_done",
        "deepseek_chat_reasoning_content",
        "xai_chat_reasoning_content",
    ],
)
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


@pytest.mark.parametrize("name", FINISHED_WITHOUT_DONE)
def test_a_finished_stream_without_done_passes_untouched(
    name: str, scripted_upstream: BackgroundAiohttp, sidecar: StreamhopProcess
) -> None:
    """Cerebras closes right after the chunk with finish_reason and usage (no ``[DONE]``):
    complete, so nothing is appended. In passthrough the body is the recording, byte for byte
    (comment blocks aside, which are forwarded only while the stream idles)."""
    assert FINISHED_WITHOUT_DONE, "the recordings include finished streams without [DONE]"
    raw = (FIXTURES / f"{name}.sse").read_bytes()
    path = f"/fx/{name}/pace/0/v1/chat/completions"
    with httpx2.Client(timeout=30) as http:
        plain = http.post(sidecar.url + path, json={}, headers={"X-Streamhop-Mode": "passthrough"})
        merged = http.post(sidecar.url + path, json={})
    events = b"".join(b + b"\n\n" for b in raw.split(b"\n\n")[:-1] if not b.startswith(b":"))
    assert plain.content == events
    assert b"upstream_incomplete" not in merged.content
    last_raw = [line for line in raw.split(b"\n") if line.startswith(b"data:")][-1]
    assert merged.content.rstrip(b"\n").split(b"\n")[-1] == last_raw


def test_a_stream_cut_before_its_finish_still_ends_with_upstream_incomplete(
    scripted_upstream: BackgroundAiohttp, sidecar: StreamhopProcess
) -> None:
    (name,) = UNFINISHED
    path = f"/fx/{name}/pace/0/v1/chat/completions"
    with httpx2.Client(timeout=30) as http:
        body = http.post(sidecar.url + path, json={}).content
    last = body.rstrip(b"\n").split(b"\n")[-1]
    assert last.startswith(b'data: {"error"') and b'"code":"upstream_incomplete"' in last
