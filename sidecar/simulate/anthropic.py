"""Anthropic Messages (``POST /v1/messages``), streaming and not.

Wire format: https://docs.anthropic.com/en/docs/build-with-claude/streaming and
https://docs.anthropic.com/en/api/messages; shapes copied from ``fixtures/anthropic_*.sse``. Every
event has an ``event:`` line naming its ``type``. Order: ``message_start``; per content block
``content_block_start``, deltas, ``content_block_stop``; a ``ping`` right after the first block
starts (where the API sends it); ``message_delta`` (``stop_reason``, ``usage.output_tokens``);
``message_stop``.

Blocks: with ``thinking: {"type": "enabled"}`` a leading ``thinking`` block (``thinking_delta``
x N, then one ``signature_delta``); a ``text`` block (``text_delta``); with ``tools`` a short text
block then a ``tool_use`` block whose input streams as ``input_json_delta`` (first one empty, as the
API does), stop reason ``tool_use``. ``max_tokens`` in the body is the text length, yet the stop
reason is ``end_turn`` (never ``max_tokens``, as for OpenAI's ``"length"``); thinking adds a quarter
of that on top.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator, Mapping
from typing import Any

import orjson

from streamhop.sidecar.simulate.request import Event, SimRequest, first_tool
from streamhop.sidecar.simulate.text import answer_text, event_count, event_texts, iter_tokens
from streamhop.sidecar.simulate.tools import ToolCall, ToolSpec, make_tool_call

PATH = "/v1/messages"
LIMIT_KEYS = ("max_tokens",)

# Text before a tool call, like Claude's "I'll check the weather..." preamble.
_TOOL_PREAMBLE_TOKENS = 12
_THINKING_SEED = 0x7415_C0DE
_PING = b'event: ping\ndata: {"type": "ping"}\n\n'


def find_tool(body: Mapping[str, Any]) -> ToolSpec | None:
    """Return the first named tool of a Messages request (schema under ``input_schema``)."""
    return first_tool(body, nested=None, schema_key="input_schema")


def _event(kind: bytes, payload: bytes) -> bytes:
    return b"event: " + kind + b"\ndata: " + payload + b"\n\n"


class Message:
    """One Messages API answer (implements :class:`~.request.Generation`)."""

    def __init__(self, req: SimRequest) -> None:
        self._req = req
        self._id = "msg_" + req.answer_id
        thinking = req.body.get("thinking")
        enabled = isinstance(thinking, dict) and thinking.get("type") == "enabled"
        self._thinking_tokens = max(1, req.output_tokens // 4) if enabled else 0
        self._call: ToolCall | None = (
            make_tool_call(req.tool, req.seed, "toolu_") if req.tool is not None else None
        )
        self._text_tokens = (
            min(req.output_tokens, _TOOL_PREAMBLE_TOKENS) if self._call else req.output_tokens
        )

    def _thinking_seed(self) -> int:
        return self._req.seed ^ _THINKING_SEED

    def output_tokens(self) -> int:
        """Return thinking + text tokens + tool-input fragments."""
        fragments = len(self._call.fragments) if self._call else 0
        return self._thinking_tokens + self._text_tokens + fragments

    def stop_reason(self) -> str:
        """Return ``"tool_use"`` or ``"end_turn"`` (the answer always fits ``max_tokens``)."""
        return "end_turn" if self._call is None else "tool_use"

    def content_event_count(self) -> int:
        """Return the number of delta events that carry generated content."""
        per = self._req.tokens_per_event
        count = event_count(self._text_tokens, per)
        if self._thinking_tokens:
            count += event_count(self._thinking_tokens, per)
        if self._call:
            count += event_count(len(self._call.fragments), per)
        return count

    def _usage(self, output_tokens: int) -> dict[str, Any]:
        return {
            "input_tokens": self._req.prompt_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": output_tokens,
            "service_tier": "standard",
        }

    def _message(
        self, content: list[Any], stop_reason: str | None, output_tokens: int
    ) -> dict[str, Any]:
        return {
            "id": self._id,
            "type": "message",
            "role": "assistant",
            "model": self._req.model,
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": self._usage(output_tokens),
        }

    def _tool_block(self, call: ToolCall, tool_input: Any) -> dict[str, Any]:
        return {
            "type": "tool_use",
            "id": call.call_id,
            "name": call.name,
            "caller": {"type": "direct"},
            "input": tool_input,
        }

    def events(self) -> Iterator[Event]:
        """Yield the Messages stream events, in the order listed in the module docstring."""
        req = self._req
        per = req.tokens_per_event
        start = orjson.dumps({"type": "message_start", "message": self._message([], None, 1)})
        yield _event(b"message_start", start), False
        # (content block, delta type, delta field, texts of the content deltas)
        blocks: list[tuple[dict[str, Any], bytes, bytes, Iterator[str]]] = []
        if self._thinking_tokens:
            thoughts = event_texts(iter_tokens(self._thinking_seed()), self._thinking_tokens, per)
            empty = {"type": "thinking", "thinking": "", "signature": ""}
            blocks.append((empty, b"thinking_delta", b"thinking", thoughts))
        texts = event_texts(iter_tokens(req.seed), self._text_tokens, per)
        blocks.append(({"type": "text", "text": ""}, b"text_delta", b"text", texts))
        call = self._call
        if call is not None:
            inputs = event_texts(iter(call.fragments), len(call.fragments), per)
            tool_block = self._tool_block(call, {})
            blocks.append((tool_block, b"input_json_delta", b"partial_json", inputs))
        for index, (block, delta_type, field, pieces) in enumerate(blocks):
            opened = {"type": "content_block_start", "index": index, "content_block": block}
            yield _event(b"content_block_start", orjson.dumps(opened)), False
            if index == 0:
                yield _PING, False
            head = b"".join(
                (
                    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":',
                    str(index).encode(),
                    b',"delta":{"type":"',
                    delta_type,
                    b'","',
                    field,
                    b'":',
                )
            )
            if block["type"] == "tool_use":
                yield head + b'""}}\n\n', False
            thought: list[str] = []
            for piece in pieces:
                if block["type"] == "thinking":
                    thought.append(piece)
                yield head + orjson.dumps(piece) + b"}}\n\n", True
            if block["type"] == "thinking":
                signature = {"type": "signature_delta", "signature": _signature("".join(thought))}
                payload = {"type": "content_block_delta", "index": index, "delta": signature}
                yield _event(b"content_block_delta", orjson.dumps(payload)), False
            closed = b'{"type":"content_block_stop","index":' + str(index).encode() + b"}"
            yield _event(b"content_block_stop", closed), False
        delta = {
            "type": "message_delta",
            "delta": {"stop_reason": self.stop_reason(), "stop_sequence": None},
            "usage": {"output_tokens": self.output_tokens()},
        }
        yield _event(b"message_delta", orjson.dumps(delta)), False
        yield _event(b"message_stop", b'{"type":"message_stop"}'), False

    def body(self) -> dict[str, Any]:
        """Return the ``message`` object of a non-streaming request."""
        req = self._req
        content: list[Any] = []
        if self._thinking_tokens:
            thinking = answer_text(self._thinking_seed(), self._thinking_tokens)
            content.append(
                {"type": "thinking", "thinking": thinking, "signature": _signature(thinking)}
            )
        content.append({"type": "text", "text": answer_text(req.seed, self._text_tokens)})
        if self._call is not None:
            content.append(self._tool_block(self._call, self._call.input))
        return self._message(content, self.stop_reason(), self.output_tokens())


def _signature(thinking: str) -> str:
    """Return a deterministic stand-in for the API's opaque thinking signature (base64)."""
    digest = hashlib.blake2b(thinking.encode(), digest_size=64).digest()
    return base64.b64encode(digest * 3).decode()
