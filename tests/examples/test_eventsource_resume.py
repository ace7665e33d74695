"""A browser's own EventSource, cut off mid-stream, reconnects by itself with Last-Event-ID and
the sidecar's resume log completes the page's text, without a second generation upstream.

Real parts: headless Debian Chromium (Playwright), a real `streamhop serve` with
``[resume] enabled`` and ``on_disconnect = "detach"``, a real aiohttp upstream streaming SSE to a
GET (EventSource only sends GET), and a small TCP relay in front of the sidecar that the test uses
to cut the browser's connection mid-stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web

from tests.sidecar.upstreams import chat_chunk
from tests.support import BackgroundAiohttp, StreamhopProcess, start_streamhop

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip(
        "Debian's chromium is not installed at /usr/bin/chromium (apt-get install chromium)",
        allow_module_level=True,
    )

from playwright.sync_api import sync_playwright  # noqa: E402

from tests.examples.test_browser import CHROMIUM_ARGS  # noqa: E402

pytestmark = pytest.mark.integration

WORDS = [f"w{i}·日本 " for i in range(40)]
PAGE = """<!doctype html><meta charset="utf-8"><title>waiting</title><pre id="out"></pre>
<script>
let text = "";
const es = new EventSource("/sse/words");
es.onmessage = (e) => {
  if (e.data === "[DONE]") { es.close(); document.title = "done"; return; }
  for (const c of JSON.parse(e.data).choices) text += c.delta.content || "";
  document.getElementById("out").textContent = text;
};
</script>"""


class Upstream:
    """GET /page (the page) and GET /sse/words (40 chunks, 50 ms apart), counting streams."""

    def __init__(self) -> None:
        self.streams = 0
        app = web.Application()
        app.router.add_get("/page", self.page)
        app.router.add_get("/sse/words", self.words)
        self.app = app

    async def page(self, request: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html")

    async def words(self, request: web.Request) -> web.StreamResponse:
        self.streams += 1
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b"retry: 100\n\n")  # reconnect quickly
        for word in WORDS:
            await resp.write(chat_chunk(word))
            await asyncio.sleep(0.05)
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp


class Relay:
    """A TCP relay on 127.0.0.1 in front of ``target``; :meth:`cut` drops every connection.

    ``requests`` keeps what each client connection sent, in order of connection.
    """

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.sockets: list[socket.socket] = []
        self.requests: list[bytearray] = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    @property
    def accepted(self) -> int:
        with self.lock:
            return len(self.requests)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            sent = bytearray()
            pipes = [
                threading.Thread(target=self._pipe, args=(client, upstream, sent), daemon=True),
                threading.Thread(target=self._pipe, args=(upstream, client, None), daemon=True),
            ]
            with self.lock:
                self.sockets += [client, upstream]
                self.requests.append(sent)
                self.threads += pipes
            for pipe in pipes:
                pipe.start()

    def _pipe(self, src: socket.socket, dst: socket.socket, record: bytearray | None) -> None:
        try:
            while data := src.recv(65536):
                if record is not None:
                    with self.lock:
                        record += data
                dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def cut(self) -> None:
        with self.lock:
            sockets, self.sockets = self.sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        """Stop accepting, drop every connection, and wait until every thread has closed its
        sockets."""
        with contextlib.suppress(OSError):
            self.server.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept() (Linux)
        self.server.close()
        self.cut()
        with self.lock:
            threads = list(self.threads)
        for thread in threads:
            thread.join(10)
            assert not thread.is_alive(), "a relay thread did not end"


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[Upstream, StreamhopProcess, Relay]]:
    upstream = Upstream()
    with BackgroundAiohttp(upstream.app) as server:
        config = tmp_path / f"resume-{uuid.uuid4().hex[:6]}.toml"
        config.write_text(
            f"""
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
[resume]
enabled = true
store = "memory"
window_s = 60
[[routes]]
prefix = "/"
upstream = "{server.url}"
on_disconnect = "detach"
"""
        )
        side = start_streamhop("serve", "--config", str(config), "--log-level", "warning")
        host, port = side.url.removeprefix("http://").split(":")
        relay = Relay((host, int(port)))
        try:
            yield upstream, side, relay
        finally:
            relay.close()
            side.stop()


def test_eventsource_reconnects_and_resumes_to_the_full_text(
    setup: tuple[Upstream, StreamhopProcess, Relay],
) -> None:
    upstream, _side, relay = setup
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, timeout=60_000
        )
        try:
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{relay.port}/page", timeout=30_000)
            # Let a few events arrive, then cut the connection under the browser's feet.
            page.wait_for_function(
                "document.getElementById('out').textContent.length > 30", timeout=30_000
            )
            before = page.inner_text("#out")
            connections = relay.accepted
            relay.cut()
            page.wait_for_function("document.title === 'done'", timeout=60_000)
            text = page.inner_text("#out")
        finally:
            browser.close()
    assert 0 < len(before) < len("".join(WORDS))
    # The browser really reconnected, by itself, naming the last event it had.
    with relay.lock:
        reconnects = [bytes(sent) for sent in relay.requests[connections:]]
    assert any(
        sent.startswith(b"GET /sse/words ") and b"\r\nlast-event-id: " in sent.lower()
        for sent in reconnects
    ), reconnects
    assert text == "".join(WORDS)
    assert "\ufffd" not in text
    # One generation upstream: the reconnect was served from the resume log.
    assert upstream.streams == 1
