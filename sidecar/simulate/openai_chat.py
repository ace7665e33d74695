"""OpenAI Chat Completions (``POST /v1/chat/completions``), streaming and not.

Wire format: https://platform.openai.com/docs/api-reference/chat-streaming (chunk object) and
https://platform.openai.com/docs/api-reference/chat/object; shapes copied from the recordings in
``fixtures/openai_chat_*.sse`` (key order included): ``data: {json}`` events, no ``event:`` line,
ended by ``data: [DONE]``. The first chunk carries ``role`` (and, for a tool call, the call's id,
type, name and empty ``arguments``); ``usage`` comes in an extra chunk with ``choices: []`` only
when ``stream_options.include_usage`` is set, and then every other chunk has ``"usage": null``.

Divergence: the answer is exactly as long as the request's ``max_tokens`` (or
``max_completion_tokens``) yet ends with ``"stop"``, never ``"length"``: the simulated model always
finishes its thought within budget. The SDK's ``chat.completions.stream()`` helper raises
``LengthFinishReasonError`` on ``"length"``, and callers naturally pass ``max_tokens``.

Content chunks are built from byte templates around one ``orjson.dumps`` of the delta text, so the
hot path allocates one bytes object per event beyond the text.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import orjson

from streamhop.sidecar.simulate.request import Event, SimRequest, first_tool
from streamhop.sidecar.simulate.text import answer_text, event_count, event_texts, iter_tokens
from streamhop.sidecar.simulate.tools import ToolCall, ToolSpec, make_tool_call

PATH = "/v1/chat/completions"
LIMIT_KEYS = ("max_completion_tokens", "max_tokens")
SYSTEM_FINGERPRINT = "fp_streamhop_sim"


def find_tool(body: Mapping[str, Any]) -> ToolSpec | None:
    """Return the first ``{"type": "function", "function": {...}}`` tool of a chat request."""
    return first_tool(body, nested="function", schema_key="parameters")


class ChatCompletion:
    """One Chat Completions answer (implements :class:`~.request.Generation`)."""

    def __init__(self, req: SimRequest) -> None:
        self._req = req
        self._id = "chatcmpl-" + req.answer_id
        options = req.body.get("stream_options")
        self._include_usage = isinstance(options, dict) and options.get("include_usage") is True
        self._call: ToolCall | None = (
            make_tool_call(req.tool, req.seed, "call_") if req.tool is not None else None
        )
        self._head = b"".join(
            (
                b'data: {"id":',
                orjson.dumps(self._id),
                b',"object":"chat.completion.chunk","created":',
                str(req.created).encode(),
                b',"model":',
                orjson.dumps(req.model),
                b',"system_fingerprint":"' + SYSTEM_FINGERPRINT.encode() + b'","choices":',
            )
        )
        self._tail = b',"usage":null}\n\n' if self._include_usage else b"}\n\n"

    def _chunk(self, delta: bytes, finish: bytes = b"null") -> bytes:
        return b"".join(
            (
                self._head,
                b'[{"index":0,"delta":',
                delta,
                b',"logprobs":null,"finish_reason":',
                finish,
                b"}]",
                self._tail,
            )
        )

    def completion_tokens(self) -> int:
        """Return the answer's length in tokens (a tool call counts its argument fragments)."""
        return len(self._call.fragments) if self._call else self._req.output_tokens

    def finish_reason(self) -> str:
        """Return ``"tool_calls"`` or ``"stop"`` (never ``"length"``: see the module docstring)."""
        return "stop" if self._call is None else "tool_calls"

    def usage(self) -> dict[str, Any]:
        """Return the usage object (prompt/completion/total tokens)."""
        completion = self.completion_tokens()
        return {
            "prompt_tokens": self._req.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self._req.prompt_tokens + completion,
            "completion_tokens_details": {"reasoning_tokens": 0},
        }

    def content_event_count(self) -> int:
        """Return the number of content chunks in the stream."""
        return event_count(self.completion_tokens(), self._req.tokens_per_event)

    def events(self) -> Iterator[Event]:
        """Yield role chunk, content (or argument) chunks, finish chunk, usage chunk, ``[DONE]``."""
        req = self._req
        call = self._call
        if call is None:
            yield self._chunk(b'{"role":"assistant","content":"","refusal":null}'), False
            for text in event_texts(iter_tokens(req.seed), req.output_tokens, req.tokens_per_event):
                yield self._chunk(b'{"content":' + orjson.dumps(text) + b"}"), True
        else:
            start = {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "index": 0,
                        "id": call.call_id,
                        "type": "function",
                        "function": {"name": call.name, "arguments": ""},
                    }
                ],
                "refusal": None,
            }
            yield self._chunk(orjson.dumps(start)), False
            fragments = iter(call.fragments)
            for piece in event_texts(fragments, len(call.fragments), req.tokens_per_event):
                yield (
                    self._chunk(
                        b'{"tool_calls":[{"index":0,"function":{"arguments":'
                        + orjson.dumps(piece)
                        + b"}}]}"
                    ),
                    True,
                )
        yield self._chunk(b"{}", orjson.dumps(self.finish_reason())), False
        if self._include_usage:
            usage = orjson.dumps(self.usage())
            yield self._head + b'[],"usage":' + usage + b"}\n\n", False
        yield b"data: [DONE]\n\n", False

    def body(self) -> dict[str, Any]:
        """Return the ``chat.completion`` object."""
        req = self._req
        call = self._call
        message: dict[str, Any] = {"role": "assistant"}
        if call is None:
            message["content"] = answer_text(req.seed, req.output_tokens)
        else:
            message["content"] = None
            message["tool_calls"] = [
                {
                    "id": call.call_id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments},
                }
            ]
        message["refusal"] = None
        message["annotations"] = []
        return {
            "id": self._id,
            "object": "chat.completion",
            "created": req.created,
            "model": req.model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": self.finish_reason(),
                }
            ],
            "usage": self.usage(),
            "system_fingerprint": SYSTEM_FINGERPRINT,
        }
