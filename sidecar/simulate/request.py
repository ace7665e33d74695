"""What the three wire formats share: one parsed request and the generation protocol.

Each format module (:mod:`.openai_chat`, :mod:`.openai_responses`, :mod:`.anthropic`) turns a
:class:`SimRequest` into a :class:`Generation`: the SSE events to stream, each flagged as content
(paced) or not (sent at once), and the equivalent non-streaming JSON body. Validation here is
deliberately lenient (a missing ``model`` is tolerated): the simulator stands in for a provider in
proxy tests, it does not police clients. Only what it cannot interpret is a 400.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from streamhop.sidecar.simulate.config import SimulatorConfig
from streamhop.sidecar.simulate.errors import BadRequestError
from streamhop.sidecar.simulate.text import prompt_bytes, prompt_tokens, seeded_digest, text_seed
from streamhop.sidecar.simulate.tools import ToolSpec

DEFAULT_MODEL = "streamhop-sim-1"

#: One SSE event ready for the wire, and whether it carries generated content (paced) or not.
Event = tuple[bytes, bool]


@dataclass(frozen=True, slots=True)
class SimRequest:
    """One generation request, format-independent.

    Attributes:
        body: the parsed JSON body (for format-specific fields such as ``stream_options``).
        model: the requested model, echoed back.
        stream: whether the client asked for SSE.
        output_tokens: answer length in tokens (text; a tool call's length is its fragments).
        seed: the text seed (:func:`~.text.text_seed`).
        prompt_tokens: estimated prompt tokens, for usage.
        tool: the tool to call, if the request offers any.
        tokens_per_event: mean tokens per content event.
        answer_id: hex id inside the response ids (``chatcmpl-``, ``resp_``, ``msg_`` ...); derived
            from the seed and the whole body, so an identical request gets identical ids (a proxy
            test can compare whole final messages, direct vs proxied).
        created: Unix time in seconds.
    """

    body: Mapping[str, Any]
    model: str
    stream: bool
    output_tokens: int
    seed: int
    prompt_tokens: int
    tool: ToolSpec | None
    tokens_per_event: float
    answer_id: str
    created: int


class Generation(Protocol):
    """One answer in one wire format."""

    def events(self) -> Iterator[Event]:
        """Yield the SSE events of the streamed answer, in order."""
        ...

    def body(self) -> dict[str, Any]:
        """Return the non-streaming response object."""
        ...

    def content_event_count(self) -> int:
        """Return how many content events the stream has (a non-streaming answer waits as long)."""
        ...


def parse_request(
    body: Any,
    config: SimulatorConfig,
    *,
    limit_keys: Sequence[str],
    find_tool: Callable[[Mapping[str, Any]], ToolSpec | None],
    length_forced: bool,
) -> SimRequest:
    """Interpret one request body.

    Args:
        body: the decoded JSON body.
        config: the simulator config with this request's header overrides applied.
        limit_keys: body fields naming the output limit, first found wins
            (``max_completion_tokens``/``max_tokens``, ``max_output_tokens``, ``max_tokens``).
        find_tool: picks the first callable tool out of the format's ``tools`` list.
        length_forced: the ``x-sim-max-tokens`` header was sent; it beats the body's limit.

    Returns:
        The parsed request.

    Raises:
        BadRequestError: the body is not a JSON object, or a limit is not a positive integer.
    """
    if not isinstance(body, dict):
        raise BadRequestError(f"expected a JSON object body, got {type(body).__name__}")
    limit: int | None = None
    for key in limit_keys:
        value = body.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise BadRequestError(f"expected {key} to be an integer >= 1, got {value!r}", key)
        limit = value
        break
    output_tokens = config.max_tokens if length_forced or limit is None else limit
    model = body.get("model")
    prompt = prompt_bytes(body)
    canonical = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
    return SimRequest(
        body=body,
        model=model if isinstance(model, str) and model else DEFAULT_MODEL,
        stream=body.get("stream") is True,
        output_tokens=output_tokens,
        seed=text_seed(config.seed, prompt),
        prompt_tokens=prompt_tokens(prompt),
        tool=find_tool(body),
        tokens_per_event=config.tokens_per_event,
        answer_id=seeded_digest(config.seed, canonical, 12).hex(),
        created=int(time.time()),
    )


def first_tool(body: Mapping[str, Any], *, nested: str | None, schema_key: str) -> ToolSpec | None:
    """Return the first tool of ``body["tools"]`` that has a name, else ``None``.

    Args:
        body: request body.
        nested: key holding the function definition inside each tool (``"function"`` for Chat
            Completions) or ``None`` when it is the tool itself (Responses, Anthropic).
        schema_key: key of the arguments schema (``"parameters"`` or ``"input_schema"``).
    """
    tools = body.get("tools")
    if not isinstance(tools, list):
        return None
    for tool in tools:
        spec = tool.get(nested) if nested and isinstance(tool, dict) else tool
        if isinstance(spec, dict) and isinstance(spec.get("name"), str):
            schema = spec.get(schema_key)
            return ToolSpec(spec["name"], schema if isinstance(schema, dict) else {})
    return None
