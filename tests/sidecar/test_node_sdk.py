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
# Recorded cut before its finish (no finish_reason, no [DONE]); see test_fixture_replay.py.
UNFINISHED = frozenset({"evroc_chat_kimi_no_finish_no_done"})

# The message fields the Node SDK accumulates itself (the rest it overwrites with each delta).
SDK_FIELDS = frozenset(
    {"content", "refusal", "role", "tool_calls", "function_call", "audio", "parsed"}
)
# Delta fields that carry text the model wrote: never normalised.
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


def sdk_results(script: Path, fmt: str, *base_urls: str) -> list[dict[str, Any]]:
    """What the Node SDK makes of the stream at each of ``base_urls`` (read at the same time):
    ``{"final": ...}`` (plus ``delta_strings`` for chat, see the script), or
    ``{"error": {"name", "message"}}`` when the SDK raised."""
    assert NODE is not None
    procs = [
        subprocess.Popen(
            [NODE, script, url, fmt],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=INSTALLED,
        )
        for url in base_urls
    ]
    results = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err
            results.append(json.loads(out))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return results


def normalise_chat(result: dict[str, Any]) -> dict[str, Any]:
    """A chat result with the two differences coalescing legitimately makes, taken out.

    1. The Node SDK keeps only the last delta's value of a message field it does not know
       (``reasoning``, ``reasoning_content``, ``channel``: ``Object.assign``), so in the final
       completion such a string is the last fragment of the stream, and the sidecar merging
       events changes which fragment is last. Those strings are dropped from ``final``; their
       whole text, concatenated from the chunks the SDK emitted, is in ``delta_strings`` and is
       compared there, exactly.
    2. In ``delta_strings`` a label sent on every chunk (gpt-oss' ``channel: "analysis"``) is
       concatenated once per event, "analysisanalysis...", and the sidecar merges runs of equal
       labels into one event, so the count of repeats is the only thing that may differ. A
       string that is one word (word characters only) repeated is collapsed to the word; the
       text fields (content, refusal, reasoning) never are.
    """
    for choice in (result.get("final") or {}).get("choices") or []:
        message = choice.get("message") or {}
        for key in [k for k, v in message.items() if k not in SDK_FIELDS and isinstance(v, str)]:
            del message[key]
    for fields in (result.get("delta_strings") or {}).values():
        for key, value in fields.items():
            if key not in TEXT_FIELDS and (match := REPEATED_WORD.fullmatch(value)):
                fields[key] = match.group(1)
    return result


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
    direct, proxied = map(
        normalise_chat,
        sdk_results(script, "chat", scripted_upstream.url + path, sidecar.url + path),
    )
    if name in UNFINISHED:
        # Cut before its finish: the SDK raises either way; through streamhop it is told why
        # (upstream_incomplete, in OpenAI's error shape) instead of finding no finish_reason.
        assert "error" in direct and proxied["error"]["name"] == "APIError"
        assert "before it was finished" in proxied["error"]["message"]
        return
    # An SDK error (a recording that ends with the provider's error event) must be the same
    # error proxied.
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
    direct, proxied = sdk_results(
        script, "responses", scripted_upstream.url + path, sidecar.url + path
    )
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
