"""Every recorded OpenAI-format stream, replayed by a real upstream through the real sidecar, gives
the official openai **Node** SDK the same final object as the stream sent directly.

The Node twin of test_fixture_replay.py: tests/node/accumulate_chat.mjs reads the stream with
``client.chat.completions.stream(...).finalChatCompletion()`` or
``client.responses.stream(...).finalResponse()`` and prints the result (or the SDK's error) as
JSON. ``openai`` is pinned in tests/node/package.json and installed by .ci/run with ``npm ci``
into build/node-sdk; ES modules resolve packages next to the running file (not via NODE_PATH),
so the script is copied there and run from there. Paced at 5 ms per event and as one burst.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.support import FIXTURES, BackgroundAiohttp, StreamhopProcess

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tests" / "node" / "accumulate_chat.mjs"
INSTALLED = ROOT / "build" / "node-sdk"
OPENAI = INSTALLED / "node_modules" / "openai"
NODE = shutil.which("node")

pytestmark = pytest.mark.skipif(
    NODE is None or not (OPENAI / "package.json").exists(),
    reason=f"node, or {OPENAI.relative_to(ROOT)}: .ci/run installs it with "
    f"npm ci --prefix build/node-sdk",
)

CHAT = sorted(p.stem for p in FIXTURES.glob("*_chat_*.sse"))
RESPONSES = sorted(
    p.stem
    for pattern in ("openai_responses_*.sse", "openrouter_responses_*.sse")
    for p in FIXTURES.glob(pattern)
)
PACES = [0, 5]

# Fields of a chat message that carry text the model wrote: never normalised.
TEXT_FIELDS = frozenset({"content", "refusal", "reasoning", "reasoning_content"})
# A string made only of one word repeated ("analysisanalysis"); group 1 is the word.
REPEATED_WORD = re.compile(r"(\w+?)\1+")


@pytest.fixture(scope="module")
def script() -> Path:
    """The script, copied next to build/node-sdk/node_modules (atomically: a parallel worker may
    be running the previous copy)."""
    target = INSTALLED / SCRIPT.name
    partial = INSTALLED / f".{SCRIPT.name}.{os.getpid()}"
    partial.write_bytes(SCRIPT.read_bytes())
    partial.replace(target)
    return target


def sdk_final(script: Path, base_url: str, fmt: str) -> dict[str, Any]:
    """What the Node SDK's accumulator makes of the stream at ``base_url``: the final object, or
    ``{"error": {"name", "message"}}`` when the SDK raised."""
    assert NODE is not None
    result = subprocess.run(
        [NODE, script, base_url, fmt],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=INSTALLED,
    )
    assert result.returncode == 0, result.stderr
    final: dict[str, Any] = json.loads(result.stdout)
    return final


def collapse_labels(completion: dict[str, Any]) -> dict[str, Any]:
    """``completion`` with every label-like extra string of ``choices[].message`` collapsed to the
    one word it repeats.

    An SDK that concatenates every string field of a delta turns a label sent on each chunk
    (gpt-oss' ``channel: "analysis"``) into "analysisanalysis...", once per event, and the sidecar
    merges runs of equal labels into one event, so the count of repeats is the only thing that
    may differ. Only strings made of word characters alone that are one word repeated are
    touched, and never the text fields (content, refusal, reasoning): text must match exactly.
    """
    for choice in completion.get("choices") or []:
        message = choice.get("message") or {}
        for key, value in message.items():
            if key in TEXT_FIELDS or not isinstance(value, str):
                continue
            if match := REPEATED_WORD.fullmatch(value):
                message[key] = match.group(1)
    return completion


@pytest.mark.parametrize("pace", PACES)
@pytest.mark.parametrize("name", CHAT)
def test_node_chat_fixture_through_sidecar(
    name: str,
    pace: int,
    script: Path,
    scripted_upstream: BackgroundAiohttp,
    sidecar: StreamhopProcess,
) -> None:
    path = f"/fx/{name}/pace/{pace}/v1"
    direct = collapse_labels(sdk_final(script, scripted_upstream.url + path, "chat"))
    proxied = collapse_labels(sdk_final(script, sidecar.url + path, "chat"))
    # An SDK error (a recording with no finish_reason, say) must be the same error proxied.
    assert proxied == direct
    assert "\ufffd" not in json.dumps(proxied, ensure_ascii=False)


@pytest.mark.parametrize("pace", PACES)
@pytest.mark.parametrize("name", RESPONSES)
def test_node_responses_fixture_through_sidecar(
    name: str,
    pace: int,
    script: Path,
    scripted_upstream: BackgroundAiohttp,
    sidecar: StreamhopProcess,
) -> None:
    path = f"/fx/{name}/pace/{pace}/v1"
    direct = sdk_final(script, scripted_upstream.url + path, "responses")
    proxied = sdk_final(script, sidecar.url + path, "responses")
    assert proxied == direct
    assert "\ufffd" not in json.dumps(proxied, ensure_ascii=False)


def test_every_openai_format_recording_is_replayed() -> None:
    """The globs above find the recordings: every one is chat, responses or Anthropic."""
    assert CHAT and RESPONSES
    anthropic = {p.stem for p in FIXTURES.glob("anthropic_*.sse")}
    assert {p.stem for p in FIXTURES.glob("*.sse")} == set(CHAT) | set(RESPONSES) | anthropic


def test_the_installed_sdk_is_the_pinned_one() -> None:
    pinned = json.loads((SCRIPT.with_name("package.json")).read_text())["devDependencies"]
    installed = json.loads((OPENAI / "package.json").read_text())["version"]
    assert installed == pinned["openai"]
