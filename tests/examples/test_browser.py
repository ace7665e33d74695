"""The chat example in a real browser: headless Chromium (Debian's ``/usr/bin/chromium``)
driven by Playwright, the example app on uvicorn, ``streamhop simulate`` as the provider, all on
loopback. Also the README command itself (``python -m examples.chat``).

Playwright's own browser downloads are never used (``playwright install`` cannot run here):
the system Chromium is launched through ``executable_path``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from streamhop.middleware import SSEDecoder
from tests.support import BackgroundUvicorn, StreamhopProcess, sim_record, start_streamhop

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip(
        "Debian's chromium is not installed at /usr/bin/chromium (apt-get install chromium)",
        allow_module_level=True,
    )

from playwright.sync_api import Browser, Page, sync_playwright  # noqa: E402

from examples.chat.app import create_app  # noqa: E402

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
QUESTION = "Tell me about Tōkyō, café culture and 👩‍💻 work"


@pytest.fixture(scope="module")
def simulator() -> Iterator[StreamhopProcess]:
    proc = start_streamhop("simulate", "--listen", "127.0.0.1:0", "--ttft-ms", "30")
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def chat_app(simulator: StreamhopProcess) -> Iterator[BackgroundUvicorn]:
    app = create_app(base_url=simulator.url + "/v1", api_key="sk-test")
    with BackgroundUvicorn(app, lifespan="on") as server:
        yield server


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, timeout=60_000
        )
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser, chat_app: BackgroundUvicorn) -> Iterator[tuple[Page, str]]:
    """A fresh page whose requests carry a unique ``x-request-id`` (the app passes it on)."""
    rid = f"browser-{uuid.uuid4().hex[:10]}"
    context = browser.new_context(extra_http_headers={"x-request-id": rid})
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.goto(chat_app.url + "/")
    yield page, rid
    context.close()


def streamed_text(url: str, body: dict[str, Any]) -> tuple[str, int]:
    """The answer's text and SSE event count, fetched from the API by a plain client."""
    request = urllib.request.Request(
        url + "/api/chat",
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json"},
    )
    decoder = SSEDecoder()
    with urllib.request.urlopen(request, timeout=30) as response:
        events = decoder.feed(response.read())
    text = []
    for event in events:
        if event.data and event.data != "[DONE]":
            for choice in json.loads(event.data)["choices"]:
                text.append(choice["delta"].get("content") or "")
    return "".join(text), len(events)


def ask(page: Page, question: str, max_tokens: int) -> None:
    page.fill("#question", question)
    page.fill("#max-tokens", str(max_tokens))
    page.click("#send")


def answer_text(page: Page) -> str:
    return page.locator(".answer").last.evaluate("el => el.textContent")  # type: ignore[no-any-return]


def test_page_renders_exactly_the_streamed_text(
    page: tuple[Page, str], chat_app: BackgroundUvicorn
) -> None:
    tab, _ = page
    ask(tab, QUESTION, 1200)
    tab.wait_for_selector('#status[data-state="done"]')
    rendered = answer_text(tab)
    expected, _ = streamed_text(
        chat_app.url, {"messages": [{"role": "user", "content": QUESTION}], "max_tokens": 1200}
    )
    assert rendered == expected
    assert len(expected) > 1000
    assert any(ord(c) > 0xFFFF for c in rendered)  # emoji: 4-byte UTF-8 split across reads
    assert "\ufffd" not in rendered
    stats = tab.locator(".stats").last.text_content() or ""
    assert re.search(r"TTFT \d+ ms", stats) and "tokens/s" in stats, stats
    assert re.search(r"[1-9]\d* SSE events in [1-9]\d* reads", stats), stats


def test_stop_aborts_the_stream_and_the_provider_sees_the_close(
    page: tuple[Page, str], simulator: StreamhopProcess, chat_app: BackgroundUvicorn
) -> None:
    tab, rid = page
    failed: list[tuple[str, str | None]] = []
    tab.on("requestfailed", lambda request: failed.append((request.url, request.failure)))
    question = "A very long answer, please"
    ask(tab, question, 40_000)  # ~20 s at 2,000 tokens/s
    tab.wait_for_function(
        "() => (document.querySelector('.answer')?.textContent.length ?? 0) > 300"
    )
    tab.click("#stop")
    stopped_at = time.monotonic()
    tab.wait_for_selector('#status[data-state="stopped"]')
    # The browser aborted the fetch itself: Stop is not just the page ignoring what comes.
    assert [url for url, error in failed if error == "net::ERR_ABORTED"] == [
        chat_app.url + "/api/chat"
    ], failed
    record = sim_record(simulator.url, rid)
    assert record["outcome"] == "client_closed"
    assert record["ended"] - stopped_at < 2.0, record
    assert record["events"] < 1000  # far from the ~4,000 content events of the whole answer
    # Nothing can arrive any more (the provider has closed): the page shows what arrived up to
    # the stop, a beginning of the answer, and no more.
    rendered = answer_text(tab)
    assert len(rendered) > 300
    # A token is at least one character: this many tokens cover the rendered text.
    head, _ = streamed_text(
        chat_app.url,
        {"messages": [{"role": "user", "content": question}], "max_tokens": len(rendered)},
    )
    assert head.startswith(rendered)


def test_readme_command_starts_the_simulator_and_the_app() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "examples.chat", "--port", "0"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            ready.set()
        ready.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    children: list[psutil.Process] = []
    try:
        ready.wait(60)
        match = re.search(r"streamhop chat example on (http://\S+)", "".join(lines))
        assert match, lines
        children = psutil.Process(proc.pid).children(recursive=True)
        assert children  # the simulator
        with urllib.request.urlopen(match.group(1), timeout=10) as resp:
            assert b"streamhop chat example" in resp.read()
        text, _ = streamed_text(
            match.group(1).rstrip("/"), {"messages": [{"role": "user", "content": "hi"}]}
        )
        assert text
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        reader.join(5)
        assert proc.stderr is not None and proc.stdout is not None
        stderr = proc.stderr.read()
        proc.stderr.close()
        proc.stdout.close()
    assert code == 0, stderr
    _, alive = psutil.wait_procs(children, timeout=10)
    assert not alive  # Ctrl-C / SIGTERM stops the simulator too
