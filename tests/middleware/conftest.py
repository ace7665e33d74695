"""Loading the recorded provider SSE transcripts shared by the stream-engine tests.

The fixtures live outside the repository, at ``../shared/fixtures`` relative to the repository
root (``/work/shared/fixtures`` here, the same relative place in CI). ``SOURCES.md`` there says
where each recording comes from.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Final

import pytest

from streamhop.middleware import SSEDecoder, SSEEvent

FIXTURES_DIR: Final = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures"

FIXTURE_FORMATS: Final[dict[str, str]] = {
    "anthropic_thinking_text.sse": "anthropic",
    "anthropic_tool_use.sse": "anthropic",
    "groq_chat_reasoning_tool_call.sse": "openai-chat",
    "openai_chat_json_multibyte_degree.sse": "openai-chat",
    "openai_chat_text_include_usage.sse": "openai-chat",
    "openai_chat_tool_call.sse": "openai-chat",
    "openai_responses_function_call.sse": "openai-responses",
    "openai_responses_text.sse": "openai-responses",
}
"""Every fixture and the wire format it was recorded in."""

FIXTURE_NAMES: Final = tuple(sorted(FIXTURE_FORMATS))

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
