"""OpenAI Responses API (``POST /v1/responses``), streaming and not.

Wire format: https://platform.openai.com/docs/api-reference/responses-streaming and
https://platform.openai.com/docs/api-reference/responses/object. Shapes follow the recordings in
``fixtures/openai_responses_*.sse`` (``event: <type>`` line plus ``data:``, ``type`` first), with
the fields the current API adds: ``sequence_number`` on every event (right after ``type``, counting
from 0) and ``logprobs: []`` on text events.

Event order for text: ``response.created``, ``response.in_progress``,
``response.output_item.added`` (message), ``response.content_part.added``,
``response.output_text.delta`` x N, ``response.output_text.done``, ``response.content_part.done``,
``response.output_item.done``, ``response.completed``. With ``tools`` the single output item is a
``function_call`` streamed by ``response.function_call_arguments.delta`` x N and ``.done``.

Divergence: an answer exactly ``max_output_tokens`` long is ``completed``, never ``incomplete``
(as for OpenAI chat's ``"length"``), so every stream ends with ``response.completed``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import orjson

from streamhop.sidecar.simulate.request import Event, SimRequest, first_tool
from streamhop.sidecar.simulate.text import answer_text, event_count, event_texts, iter_tokens
from streamhop.sidecar.simulate.tools import ToolCall, ToolSpec, make_tool_call

PATH = "/v1/responses"
LIMIT_KEYS = ("max_output_tokens",)


def find_tool(body: Mapping[str, Any]) -> ToolSpec | None:
    """Return the first named (function) tool of a Responses request."""
    return first_tool(body, nested=None, schema_key="parameters")


def _event(kind: str, seq: int, fields: dict[str, Any]) -> bytes:
    payload = orjson.dumps({"type": kind, "sequence_number": seq, **fields})
    return b"event: " + kind.encode() + b"\ndata: " + payload + b"\n\n"


class Response:
    """One Responses API answer (implements :class:`~.request.Generation`)."""

    def __init__(self, req: SimRequest) -> None:
        self._req = req
        self._id = "resp_" + req.answer_id
        self._call: ToolCall | None = (
            make_tool_call(req.tool, req.seed, "call_") if req.tool is not None else None
        )
        self._item_id = ("fc_" if self._call else "msg_") + req.answer_id

    def output_tokens(self) -> int:
        """Return the answer's length in tokens (a tool call counts its argument fragments)."""
        return len(self._call.fragments) if self._call else self._req.output_tokens

    def content_event_count(self) -> int:
        """Return the number of delta events in the stream."""
        return event_count(self.output_tokens(), self._req.tokens_per_event)

    def _response(self, status: str, output: list[Any], done: bool) -> dict[str, Any]:
        req = self._req
        body = req.body
        usage: dict[str, Any] | None = None
        if done:
            out = self.output_tokens()
            usage = {
                "input_tokens": req.prompt_tokens,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": out,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": req.prompt_tokens + out,
            }
        tools = body.get("tools")
        return {
            "id": self._id,
            "object": "response",
            "created_at": req.created,
            "status": status,
            "background": False,
            "error": None,
            "incomplete_details": None,
            "instructions": body.get("instructions"),
            "max_output_tokens": body.get("max_output_tokens"),
            "model": req.model,
            "output": output,
            "parallel_tool_calls": True,
            "previous_response_id": body.get("previous_response_id"),
            "reasoning": {"effort": None, "summary": None},
            "store": body.get("store", True),
            "temperature": 1.0,
            "text": {"format": {"type": "text"}},
            "tool_choice": body.get("tool_choice", "auto"),
            "tools": tools if isinstance(tools, list) else [],
            "top_p": 1.0,
            "truncation": "disabled",
            "usage": usage,
            "user": None,
            "metadata": body.get("metadata") or {},
        }

    def _message(self, status: str, text: str | None) -> dict[str, Any]:
        content = [] if text is None else [_text_part(text)]
        return {
            "id": self._item_id,
            "type": "message",
            "status": status,
            "content": content,
            "role": "assistant",
        }

    def _function_call(self, status: str, arguments: str) -> dict[str, Any]:
        assert self._call is not None
        return {
            "id": self._item_id,
            "type": "function_call",
            "status": status,
            "arguments": arguments,
            "call_id": self._call.call_id,
            "name": self._call.name,
        }

    def events(self) -> Iterator[Event]:
        """Yield the Responses stream events, in the order listed in the module docstring."""
        req = self._req
        item_id = self._item_id
        seq = 0
        yield (
            _event("response.created", seq, {"response": self._response("in_progress", [], False)}),
            False,
        )
        seq += 1
        yield (
            _event(
                "response.in_progress", seq, {"response": self._response("in_progress", [], False)}
            ),
            False,
        )
        seq += 1
        call = self._call
        if call is None:
            item: dict[str, Any] = self._message("in_progress", None)
        else:
            item = self._function_call("in_progress", "")
        yield _event("response.output_item.added", seq, {"output_index": 0, "item": item}), False
        seq += 1
        if call is None:
            where = {"item_id": item_id, "output_index": 0, "content_index": 0}
            yield (
                _event("response.content_part.added", seq, {**where, "part": _text_part("")}),
                False,
            )
            seq += 1
            # Deltas from a byte template: only the sequence number and the text change.
            head = b"".join(
                (
                    b"event: response.output_text.delta\n",
                    b'data: {"type":"response.output_text.delta","sequence_number":',
                )
            )
            mid = (
                b',"item_id":'
                + orjson.dumps(item_id)
                + b',"output_index":0,"content_index":0,"delta":'
            )
            tail = b',"logprobs":[]}\n\n'
            pieces: list[str] = []
            for text in event_texts(iter_tokens(req.seed), req.output_tokens, req.tokens_per_event):
                pieces.append(text)
                yield b"".join((head, str(seq).encode(), mid, orjson.dumps(text), tail)), True
                seq += 1
            full = "".join(pieces)
            yield (
                _event("response.output_text.done", seq, {**where, "text": full, "logprobs": []}),
                False,
            )
            seq += 1
            yield (
                _event("response.content_part.done", seq, {**where, "part": _text_part(full)}),
                False,
            )
            seq += 1
            item = self._message("completed", full)
        else:
            where = {"item_id": item_id, "output_index": 0}
            fragments = iter(call.fragments)
            for piece in event_texts(fragments, len(call.fragments), req.tokens_per_event):
                yield (
                    _event(
                        "response.function_call_arguments.delta", seq, {**where, "delta": piece}
                    ),
                    True,
                )
                seq += 1
            done = {**where, "arguments": call.arguments}
            yield _event("response.function_call_arguments.done", seq, done), False
            seq += 1
            item = self._function_call("completed", call.arguments)
        yield _event("response.output_item.done", seq, {"output_index": 0, "item": item}), False
        seq += 1
        completed = self._response("completed", [item], True)
        yield _event("response.completed", seq, {"response": completed}), False

    def body(self) -> dict[str, Any]:
        """Return the ``response`` object of a non-streaming request."""
        req = self._req
        if self._call is None:
            item = self._message("completed", answer_text(req.seed, req.output_tokens))
        else:
            item = self._function_call("completed", self._call.arguments)
        return self._response("completed", [item], True)


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "annotations": [], "logprobs": [], "text": text}
