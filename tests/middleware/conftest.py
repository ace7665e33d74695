"""Loading the recorded provider SSE transcripts shared by the stream-engine tests.

The fixtures live in ``tests/fixtures``: real recordings of provider streams from public test
suites, byte for byte. ``SOURCES.md`` there says where each comes from and under which licence.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Final

import pytest

from streamhop.middleware import SSEDecoder, SSEEvent

FIXTURES_DIR: Final = Path(__file__).resolve().parents[1] / "fixtures"

FIXTURE_FORMATS: Final[dict[str, str]] = {
    "anthropic_thinking_text.sse": "anthropic",
    "anthropic_tool_use.sse": "anthropic",
    "cerebras_chat_gpt_oss_reasoning_no_done.sse": "openai-chat",
    "cerebras_chat_qwen_thinking_length_no_done.sse": "openai-chat",
    "cerebras_chat_text_no_done.sse": "openai-chat",
    "deepseek_chat_reasoning_content.sse": "openai-chat",
    "evroc_chat_kimi_no_finish_no_done.sse": "openai-chat",
    "groq_chat_gpt_oss_error_event_no_done.sse": "openai-chat",
    "groq_chat_gpt_oss_reasoning.sse": "openai-chat",
    "groq_chat_reasoning_tool_call.sse": "openai-chat",
    "groq_chat_think_in_content.sse": "openai-chat",
    "mistral_chat_magistral_thinking.sse": "openai-chat",
    "openai_chat_json_multibyte_degree.sse": "openai-chat",
    "openai_chat_text_include_usage.sse": "openai-chat",
    "openai_chat_tool_call.sse": "openai-chat",
    "openai_responses_function_call.sse": "openai-responses",
    "openai_responses_reasoning_summary.sse": "openai-responses",
    "openai_responses_text.sse": "openai-responses",
    "openrouter_chat_error_chunk_no_done.sse": "openai-chat",
    "openrouter_chat_reasoning_details_encrypted.sse": "openai-chat",
    "openrouter_chat_reasoning_details_text.sse": "openai-chat",
    "openrouter_responses_reasoning_text.sse": "openai-responses",
    "xai_chat_grok4_text.sse": "openai-chat",
    "xai_chat_reasoning_content.sse": "openai-chat",
}
"""Every fixture and the wire format it was recorded in."""

FIXTURE_NAMES: Final = tuple(sorted(FIXTURE_FORMATS))

HELD_DELTA_FIXTURES: Final = {
    "evroc_chat_kimi_no_finish_no_done.sse": "per-token `token_ids` on every choice",
    "mistral_chat_magistral_thinking.sse": "thinking as a list of content parts",
    "openrouter_chat_error_chunk_no_done.sse": "`role` on every delta (a boundary)",
    "openrouter_chat_reasoning_details_encrypted.sse": "`role` on every delta (a boundary)",
    "openrouter_chat_reasoning_details_text.sse": "`role` on every delta (a boundary)",
}
"""Fixtures whose deltas are held or are boundaries: per-token data a merge could lose, or a
role on every chunk; batched, never rewritten, so they merge less than the others
(docs/rechunking.md, "Providers")."""

UNFINISHED_FIXTURES: Final = frozenset(("evroc_chat_kimi_no_finish_no_done.sse",))
"""Recordings cut before the stream said it was finished (no finish_reason, no ``[DONE]``)."""

LONG_TEXT_FIXTURES: Final = (
    "openai_chat_json_multibyte_degree.sse",
    "anthropic_thinking_text.sse",
)
"""Fixtures with long runs of one-token text deltas (where merging must pay off)."""


@cache
def fixture_bytes(name: str) -> bytes:
    """The raw response body of fixture ``name`` (a file name in :data:`FIXTURES_DIR`)."""
    return (FIXTURES_DIR / name).read_bytes()


def decode_all(data: bytes, max_event_bytes: int = 1024 * 1024) -> list[SSEEvent]:
    """Decode a whole body in one read, then EOF; fails if the body ends inside an event."""
    decoder = SSEDecoder(max_event_bytes)
    events = decoder.feed(data)
    events += decoder.feed(b"")
    assert not decoder.truncated
    return events


@cache
def _fixture_events(name: str) -> tuple[SSEEvent, ...]:
    return tuple(decode_all(fixture_bytes(name)))


def fixture_events(name: str) -> list[SSEEvent]:
    """The events of fixture ``name``, decoded in one read (a fresh list each call)."""
    return list(_fixture_events(name))


@pytest.fixture(params=FIXTURE_NAMES)
def fixture_name(request: pytest.FixtureRequest) -> str:
    """Each fixture file name in turn."""
    name: str = request.param
    return name
