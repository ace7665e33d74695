"""Coalescing OpenAI-compatible streams whose ``id`` or ``created`` changes on every chunk.

Groq's compound models change the id on every event; older llama.cpp servers change id and
created. The ``openai`` SDK's accumulator (``ChatCompletionStreamState``) takes both from the
first chunk only, so deltas that differ only there merge, the merged chunk keeps the first one's
values, and the SDK's final message is the same as from the raw stream. Every other envelope
difference still keeps deltas apart.
"""

from __future__ import annotations

from typing import Any, Final

import orjson
import pytest

from streamhop.middleware import Coalescer, SSEEvent

from ..accumulate import accumulate, rechunk
from ..conftest import (
    FIXTURE_FORMATS,
    HELD_DELTA_FIXTURES,
    UNFINISHED_FIXTURES,
    fixture_events,
)

CHAT_FIXTURES: Final = tuple(
    sorted(name for name, fmt in FIXTURE_FORMATS.items() if fmt == "openai-chat")
)
# Fixtures whose deltas merge once the ids no longer differ (not those whose deltas are held or
# boundaries by design, whatever the ids do).
MERGEABLE: Final = frozenset(CHAT_FIXTURES) - HELD_DELTA_FIXTURES.keys()


def _vary_ids(events: list[SSEEvent]) -> list[SSEEvent]:
    """The stream as such a provider sends it: chunk ``i`` has id ``<id>-<i>`` and created
    ``created + i``; everything else as recorded."""
    out: list[SSEEvent] = []
    for i, event in enumerate(events):
        data = event.data
        if data is None or not data.startswith("{"):
            out.append(event)
            continue
        obj: dict[str, Any] = orjson.loads(data)
        if "id" in obj:
            obj["id"] = f"{obj['id']}-{i}"
        if "created" in obj:
            obj["created"] += i
        text = orjson.dumps(obj).decode()
        out.append(event._replace(data=text, wire_size=len(text) + 8))
    return out


def _chunk(content: str, **envelope: Any) -> SSEEvent:
    obj = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 100,
        "model": "m",
        "system_fingerprint": "fp_1",
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None}],
    }
    obj.update(envelope)
    return SSEEvent(data=orjson.dumps(obj).decode(), wire_size=100)


def _merged(*events: SSEEvent) -> list[dict[str, Any]]:
    """Push ``events`` after a first content event (which goes out at once) and take them."""
    coalescer = Coalescer("openai-chat", flush_interval=1.0)
    coalescer.push(_chunk("first"), 0.0)
    coalescer.take()
    for event in events:
        coalescer.push(event, 0.1)
    return [orjson.loads(e.data or "") for e in coalescer.take()]


@pytest.mark.parametrize("name", CHAT_FIXTURES)
@pytest.mark.parametrize("pace_s", [0.0, 0.005], ids=["burst", "paced-5ms"])
def test_the_sdk_builds_the_same_message_and_deltas_merge(name: str, pace_s: float) -> None:
    raw = _vary_ids(fixture_events(name))
    times = [i * pace_s for i in range(len(raw))]
    out = rechunk(Coalescer("openai-chat", flush_interval=0.020), raw, times)

    assert accumulate("openai-chat", out) == accumulate("openai-chat", raw)
    if name in MERGEABLE:
        assert len(out) < len(raw)
    # The SDK's message carries the first chunk's id and created (as from the raw stream).
    first = orjson.loads(next(e.data for e in raw if e.data and e.data.startswith("{")) or "")
    sdk = accumulate("openai-chat", out)["sdk"]
    assert (sdk["id"], sdk["created"]) == (first["id"], first["created"])
    # A merged chunk keeps the id and created of the first chunk it stands for: no value is
    # made up, and they still increase along the stream.
    envelopes = [(e["id"], e["created"]) for e in map(_obj, raw) if e is not None]
    kept = [(e["id"], e["created"]) for e in map(_obj, out) if e is not None]
    assert set(kept) <= set(envelopes)
    assert kept == sorted(kept, key=envelopes.index)


def _obj(event: SSEEvent) -> dict[str, Any] | None:
    data = event.data
    if data is None or not data.startswith("{"):
        return None
    obj: dict[str, Any] = orjson.loads(data)
    return obj if "id" in obj else None


@pytest.mark.parametrize("name", CHAT_FIXTURES)
def test_boundaries_keep_their_own_ids(name: str) -> None:
    """The openai Node SDK's ChatCompletionStream takes id and created from the *last* chunk
    (``Object.assign(snapshot, rest)``): the last chunk is a boundary (finish reason, usage),
    never merged, so it reaches the client as it came."""
    if name in UNFINISHED_FIXTURES:
        pytest.skip("cut before its finish: its last chunk is a delta, no boundary")
    raw = _vary_ids(fixture_events(name))
    out = rechunk(Coalescer("openai-chat", flush_interval=0.020), raw, [0.0] * len(raw))
    last_raw = [e.data for e in raw if _obj(e) is not None][-1]
    last_out = [e.data for e in out if _obj(e) is not None][-1]
    assert last_out == last_raw


def test_deltas_differing_only_in_id_and_created_merge_keeping_the_first() -> None:
    merged = _merged(
        _chunk("a", id="chatcmpl-2", created=101),
        _chunk("b", id="chatcmpl-3"),
        _chunk("c", created=103),
    )
    assert len(merged) == 1
    (chunk,) = merged
    assert (chunk["id"], chunk["created"]) == ("chatcmpl-2", 101)
    assert chunk["choices"][0]["delta"]["content"] == "abc"


@pytest.mark.parametrize(
    "envelope",
    [
        {"model": "other-model"},
        {"system_fingerprint": "fp_2"},  # the SDK keeps the last chunk's: never merged across
        {"x_groq": {"id": "req_1"}},  # unknown fields must be equal
        {"service_tier": "flex"},
    ],
    ids=lambda e: next(iter(e)),
)
def test_every_other_envelope_difference_still_keeps_deltas_apart(
    envelope: dict[str, Any],
) -> None:
    merged = _merged(_chunk("a", id="chatcmpl-2"), _chunk("b", id="chatcmpl-3", **envelope))
    assert [m["choices"][0]["delta"]["content"] for m in merged] == ["a", "b"]
    assert [m["id"] for m in merged] == ["chatcmpl-2", "chatcmpl-3"]


def test_a_failed_merge_leaves_the_chunk_untouched() -> None:
    """The envelope check swaps the first chunk's values in to compare; a chunk that does not
    merge starts the next group with its own id and created."""
    merged = _merged(
        _chunk("a", id="chatcmpl-2", created=101),
        _chunk("b", id="chatcmpl-3", created=102, model="other"),
        _chunk("c", id="chatcmpl-4", created=103, model="other"),
    )
    assert [(m["id"], m["created"], m["model"]) for m in merged] == [
        ("chatcmpl-2", 101, "m"),
        ("chatcmpl-3", 102, "other"),
    ]
    assert merged[1]["choices"][0]["delta"]["content"] == "bc"
