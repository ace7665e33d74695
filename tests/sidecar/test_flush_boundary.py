"""Boundary-aware flushing end to end: a real sidecar in front of the real simulator, the
``[rechunk] flush_boundary`` key and the ``X-Streamhop-Flush-Boundary`` header.

What the client receives is checked: every text delta but the exempt ones ends at a boundary of
its field's whole text (segmented once, with the engine's library: see
``tests/middleware/rechunk/boundary_support.py``), and the text is the simulator's own, as a
direct request gets it.
"""

from __future__ import annotations

from typing import Any

import httpx2
import pytest

from streamhop.middleware.errors import ConfigError
from streamhop.sidecar.config.load import config_from_dict
from streamhop.sidecar.config.model import RechunkConfig
from tests.middleware.accumulate import client_events
from tests.middleware.rechunk.boundary_support import aligned_cuts, lane_deltas, misaligned
from tests.support import CHAT, StartSidecar, StreamhopProcess, chat_body

MESSAGES = "/v1/messages"
# Only boundaries cut text here: a 60 s wait bound never fires, however loaded the machine.
RECHUNK = '[rechunk]\nflush_boundary = "word"\nmax_boundary_wait_ms = 60000'


def _post(base: str, path: str, body: dict[str, Any], **headers: str) -> httpx2.Response:
    response = httpx2.post(base + path, json=body, headers=headers, timeout=60)
    return response


def _texts(format_name: str, raw: bytes) -> dict[Any, str]:
    return {
        lane: "".join(parts)
        for lane, parts in lane_deltas(format_name, client_events([raw])).items()
    }


@pytest.fixture
def side(simulator: StreamhopProcess, start_sidecar: StartSidecar) -> StreamhopProcess:
    return start_sidecar(simulator.url, sections=RECHUNK)


@pytest.mark.parametrize("boundary", ["sentence", "line", None])
def test_chat_text_is_cut_at_boundaries(
    simulator: StreamhopProcess, side: StreamhopProcess, boundary: str | None
) -> None:
    body = chat_body(f"boundaries {boundary}", 800)
    headers = {} if boundary is None else {"X-Streamhop-Flush-Boundary": boundary}
    response = _post(side.url, CHAT, body, **headers)
    assert response.status_code == 200, response.text
    events = client_events([response.content])
    expected = boundary or "word"  # no header: the config's
    assert misaligned("openai-chat", events, expected) == []
    if expected != "line":
        assert aligned_cuts("openai-chat", events) > 3
    direct = _post(simulator.url, CHAT, body)
    assert _texts("openai-chat", response.content) == _texts("openai-chat", direct.content)


def test_anthropic_thinking_and_text_are_cut_at_sentences(
    simulator: StreamhopProcess, side: StreamhopProcess
) -> None:
    body = {
        "model": "sim",
        "max_tokens": 800,
        "stream": True,
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "messages": [{"role": "user", "content": "sentences, please"}],
    }
    response = _post(side.url, MESSAGES, body, **{"X-Streamhop-Flush-Boundary": "sentence"})
    assert response.status_code == 200, response.text
    events = client_events([response.content])
    assert misaligned("anthropic", events, "sentence") == []
    assert aligned_cuts("anthropic", events) > 3
    texts = _texts("anthropic", response.content)
    assert {field for _, field in texts} == {"thinking", "text"}
    assert texts == _texts("anthropic", _post(simulator.url, MESSAGES, body).content)


def test_a_bad_header_value_gets_400(side: StreamhopProcess) -> None:
    response = _post(
        side.url, CHAT, chat_body("bad"), **{"X-Streamhop-Flush-Boundary": "paragraph"}
    )
    assert response.status_code == 400
    assert "X-Streamhop-Flush-Boundary" in response.json()["error"]["message"]


def test_the_config_keys_are_validated() -> None:
    route = {"prefix": "/", "upstream": "http://127.0.0.1:9"}
    config = config_from_dict({"routes": [route]})
    assert config.rechunk == RechunkConfig()
    assert config.rechunk.flush_boundary == "none"
    assert config.rechunk.max_boundary_wait_ms == 250.0
    config = config_from_dict(
        {
            "routes": [route],
            "rechunk": {"flush_boundary": "sentence", "max_boundary_wait_ms": 400},
        }
    )
    assert (config.rechunk.flush_boundary, config.rechunk.max_boundary_wait_ms) == (
        "sentence",
        400.0,
    )
    for table, key in (
        ({"flush_boundary": "paragraph"}, "rechunk.flush_boundary"),
        ({"flush_boundary": 1}, "rechunk.flush_boundary"),
        ({"max_boundary_wait_ms": -1}, "rechunk.max_boundary_wait_ms"),
        ({"max_boundary_wait_ms": "1s"}, "rechunk.max_boundary_wait_ms"),
    ):
        with pytest.raises(ConfigError) as info:
            config_from_dict({"routes": [route], "rechunk": table})
        assert info.value.key == key
