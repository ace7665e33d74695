"""A browser's own EventSource survives a rolling restart: the replica serving it gets SIGTERM
mid-stream, tells it to reconnect, and the browser resumes from the shared Redis log (on the
other replica, or on the draining one if it reuses a kept-alive connection), to the full text,
with one generation upstream.

Real parts: headless Debian Chromium (Playwright), two ``streamhop serve`` replicas sharing a
real ``redis-server``, the aiohttp upstream of ``test_eventsource_resume`` (a page and a
40-word stream on GET), and a balancer that sends new connections only to ready replicas.
"""

from __future__ import annotations

import signal
import uuid
from pathlib import Path

import pytest

from tests.cluster import ReadyBalancer
from tests.support import BackgroundAiohttp, serve

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip(
        "Debian's chromium is not installed at /usr/bin/chromium (apt-get install chromium)",
        allow_module_level=True,
    )

from playwright.sync_api import sync_playwright  # noqa: E402

from tests.examples.test_browser import CHROMIUM_ARGS  # noqa: E402
from tests.examples.test_eventsource_resume import WORDS, Upstream  # noqa: E402

pytestmark = pytest.mark.integration


def test_eventsource_follows_its_stream_to_another_replica(
    tmp_path: Path, shared_redis: str
) -> None:
    upstream = Upstream()
    with BackgroundAiohttp(upstream.app) as server:
        key = f"binding-{uuid.uuid4().hex}"
        replicas = [
            serve(
                tmp_path,
                f"""
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
drain_timeout_s = 30
[resume]
enabled = true
store = "redis"
redis_url = "{shared_redis}"
binding_key = "{key}"
handoff_jitter_ms = 100
[[routes]]
prefix = "/"
upstream = "{server.url}"
""",
            )
            for _ in range(2)
        ]
        a, _b = replicas
        try:
            with ReadyBalancer(replicas) as balancer, sync_playwright() as playwright:
                browser = playwright.chromium.launch(
                    executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, timeout=60_000
                )
                try:
                    page = browser.new_page()
                    page.goto(balancer.url + "/page", timeout=30_000)
                    page.wait_for_function(
                        "document.getElementById('out').textContent.length > 30",
                        timeout=30_000,
                    )
                    before = page.inner_text("#out")
                    a.proc.send_signal(signal.SIGTERM)  # roll the replica serving the stream
                    page.wait_for_function("document.title === 'done'", timeout=60_000)
                    text = page.inner_text("#out")
                finally:
                    browser.close()
                sent = [bytes(b) for b in balancer.sent]
            assert a.proc.wait(60) == 0
        finally:
            for replica in replicas:
                replica.stop()
    assert 0 < len(before) < len("".join(WORDS))
    assert text == "".join(WORDS)
    # The browser reconnected by itself, naming the last event it had: on a new connection the
    # balancer sends it to B; on a kept-alive one it reaches A, which still serves resumes
    # while it drains. Either way the rest came from the shared log:
    assert any(b"\r\nlast-event-id: " in data.lower() for data in sent), sent
    assert upstream.streams == 1  # one generation
