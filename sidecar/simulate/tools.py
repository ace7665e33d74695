"""Deterministic tool calls: the first tool of a request, its JSON arguments and their fragments.

The arguments object follows the tool's JSON Schema ``properties`` (``enum``, ``string``,
``integer``, ``number``, ``boolean``, ``array``, nested ``object``; anything else gets a string).
Strings are multi-byte (CJK, emoji with ZWJ, "°C"), serialized by orjson as raw UTF-8 like the
providers do, and the serialized text is cut into 1-5 character fragments, the way providers
stream ``function.arguments`` / ``partial_json`` token by token (fragments split escapes such as
``\\"`` and emoji sequences, which a client must only ever concatenate).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from streamhop.sidecar.simulate.text import seeded_digest

_STRINGS: tuple[str, ...] = (
    "Zürich, 東京 👩\u200d💻",
    "São Paulo ❤\ufe0f",
    "21°C in Köln",
    "naïve café",
    "Ελληνικά 👍🏽",
    "日本語のテキスト",
    'cafe\u0301 "quoted"',
)

_MAX_DEPTH = 4


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """The tool the fake model calls.

    Attributes:
        name: function name, echoed in the call.
        parameters: the tool's JSON Schema for its arguments (may be empty).
    """

    name: str
    parameters: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A generated call: ids, the arguments as JSON text and as the fragments to stream.

    Attributes:
        name: function name.
        call_id: provider call id (``call_...`` / ``toolu_...`` prefix chosen by the format).
        arguments: the whole arguments JSON text; ``"".join(fragments) == arguments``.
        fragments: the arguments cut into stream-sized pieces.
    """

    name: str
    call_id: str
    arguments: str
    fragments: tuple[str, ...]

    @property
    def input(self) -> Any:
        """The arguments parsed back into JSON values (Anthropic's ``tool_use.input``)."""
        return orjson.loads(self.arguments)


def make_tool_call(tool: ToolSpec, seed: int, id_prefix: str) -> ToolCall:
    """Build the deterministic call of ``tool`` for one request.

    Args:
        tool: the first tool of the request.
        seed: the request's text seed (:func:`~.text.text_seed`).
        id_prefix: ``"call_"`` (OpenAI) or ``"toolu_"`` (Anthropic).

    Returns:
        The call; same ``(tool, seed)`` gives the same call, ids included.
    """
    rng = random.Random(seed ^ 0x5EED_7001)
    value = _value(tool.parameters or {"type": "object"}, rng, 0)
    if not isinstance(value, dict):
        value = {"value": value}
    arguments = orjson.dumps(value).decode()
    fragments: list[str] = []
    pos = 0
    while pos < len(arguments):
        step = rng.randint(1, 5)
        fragments.append(arguments[pos : pos + step])
        pos += step
    call_id = id_prefix + seeded_digest(seed, tool.name.encode(), 12).hex()
    return ToolCall(tool.name, call_id, arguments, tuple(fragments))


def _value(schema: Mapping[str, Any], rng: random.Random, depth: int) -> Any:
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return rng.choice(enum)
    kind = schema.get("type")
    if isinstance(kind, list):  # ["string", "null"]
        kind = next((k for k in kind if k != "null"), "string")
    if kind == "object" or (kind is None and "properties" in schema):
        props = schema.get("properties")
        if not isinstance(props, Mapping) or depth >= _MAX_DEPTH:
            return {}
        return {
            str(name): _value(sub if isinstance(sub, Mapping) else {}, rng, depth + 1)
            for name, sub in props.items()
        }
    if kind == "array":
        items = schema.get("items")
        item_schema = items if isinstance(items, Mapping) else {"type": "string"}
        if depth >= _MAX_DEPTH:
            return []
        return [_value(item_schema, rng, depth + 1) for _ in range(2)]
    if kind == "integer":
        return rng.randint(1, 100)
    if kind == "number":
        return round(rng.uniform(-10.0, 40.0), 1)
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "null":
        return None
    return rng.choice(_STRINGS)
