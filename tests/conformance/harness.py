"""The parts of the EventSource conformance suite: a scripted upstream, the page, and a runner
that plays one case in Chromium against several targets at once.

* :class:`Upstream` (an ``aiohttp.web`` app) serves ``GET /case/<name>/<key>``: the body of the
  case's next connection, byte for byte, and records the raw bytes of each request's
  ``Last-Event-ID``. A request beyond the case's connections gets 204, which ends the
  ``EventSource`` (§9.2.3), so a misbehaving target cannot make the browser loop.
* :data:`PAGE` runs on its own origin; every target is cross-origin to it, so the direct run and
  the runs through the sidecar are made the same way (CORS mode, an ``Origin`` header).
* :func:`play` starts one ``EventSource`` per target in the page, concurrently, and waits (bounded)
  until each has seen the case's last connection close or failed.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from aiohttp import web
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import Page

from tests.conformance.cases import Case, Entry

SPLIT_PAUSE_S = 0.05
"""Pause between the writes of a body given as several pieces, so each arrives as its own read."""

PAGE = """<!doctype html><meta charset="utf-8"><title>EventSource conformance</title>
<script>
"use strict";
window.runs = {};
window.sources = {};
window.stopRun = (key) => { window.sources[key].close(); };
// One EventSource per run. Everything it observes goes to runs[key].log, in order, with the time
// in ms since the run started. After `connections` opens, the next error (the last connection
// closed: the browser would reconnect) ends the run; an error in state CLOSED (the browser failed
// the connection) ends it too.
window.startRun = (key, url, types, connections) => {
  const run = {log: [], done: false};
  window.runs[key] = run;
  const t0 = performance.now();
  const at = () => performance.now() - t0;
  const source = new EventSource(url);
  window.sources[key] = source;
  let opens = 0;
  const onEvent = (e) => {
    if (!(e instanceof MessageEvent)) return;  // the connection's own error, logged below
    run.log.push({kind: "event", type: e.type, data: e.data, lastEventId: e.lastEventId, t: at()});
  };
  for (const type of types) source.addEventListener(type, onEvent);
  source.addEventListener("open", () => { opens += 1; run.log.push({kind: "open", t: at()}); });
  source.addEventListener("error", (e) => {
    if (e instanceof MessageEvent) return;  // an `event: error` of the stream, logged above
    const closed = source.readyState === EventSource.CLOSED;
    run.log.push({kind: closed ? "failed" : "reconnect", t: at()});
    if (closed || opens >= connections) { source.close(); run.done = true; }
  });
};
</script>"""


def page_app() -> web.Application:
    """The page's own origin: ``GET /`` is :data:`PAGE`."""

    async def index(request: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", index)
    return app


class Upstream:
    """Serves each case's connections and records the ``Last-Event-ID`` of every request.

    ``requests[key]`` lists, per request of run ``key``, the raw ``Last-Event-ID`` value (bytes
    as received; ``None``: no such header). Runs are keyed by the URL's last segment.
    """

    def __init__(self, cases: Mapping[str, Case]) -> None:
        self.cases = dict(cases)
        self.requests: dict[str, list[bytes | None]] = {}
        self.app = web.Application()
        self.app.router.add_get("/case/{name}/{key}", self.serve)

    async def serve(self, request: web.Request) -> web.StreamResponse:
        case = self.cases[request.match_info["name"]]
        seen = self.requests.setdefault(request.match_info["key"], [])
        values = [v for n, v in request.raw_headers if n.lower() == b"last-event-id"]
        seen.append(b", ".join(values) if values else None)
        index = len(seen) - 1
        headers = {"Cache-Control": "no-cache"}
        origin = request.headers.get("Origin")
        if origin is not None:
            headers["Access-Control-Allow-Origin"] = origin
            headers["Vary"] = "Origin"
        if index >= len(case.connections):
            return web.Response(status=204, headers=headers)
        if case.status != 200:
            return web.Response(status=case.status, headers=headers)
        headers["Content-Type"] = case.content_type
        response = web.StreamResponse(status=case.status, headers=headers)
        await response.prepare(request)
        for i, piece in enumerate(case.connections[index].writes):
            if i:
                await asyncio.sleep(SPLIT_PAUSE_S)
            await response.write(piece)
        await response.write_eof()
        return response


@dataclass(frozen=True, slots=True)
class Observation:
    """What one target showed the browser in one case.

    Attributes:
        entries: what the page observed, in order (see :data:`tests.conformance.cases.Entry`).
        reconnect_ms: for each reconnect, the time from the ``error`` to the next ``open``.
        last_event_ids: the raw ``Last-Event-ID`` of each request the upstream received.
        finished: the run ended within its bound (``False``: ``entries`` is what came so far).
    """

    entries: tuple[Entry, ...]
    reconnect_ms: tuple[float, ...]
    last_event_ids: tuple[bytes | None, ...]
    finished: bool


def _entries(log: list[dict[str, object]]) -> tuple[tuple[Entry, ...], tuple[float, ...]]:
    entries: list[Entry] = []
    delays: list[float] = []
    reconnect_at: float | None = None
    for item in log:
        kind, at = item["kind"], item["t"]
        assert isinstance(kind, str) and isinstance(at, int | float), item
        if kind == "event":
            entries.append(
                ("event", str(item["type"]), str(item["data"]), str(item["lastEventId"]))
            )
        else:
            entries.append((kind,))
        if kind == "reconnect":
            reconnect_at = at
        elif kind == "open" and reconnect_at is not None:
            delays.append(at - reconnect_at)
            reconnect_at = None
    return tuple(entries), tuple(delays)


def play(
    page: Page, upstream: Upstream, case: Case, targets: Mapping[str, str], bound_s: float
) -> dict[str, Observation]:
    """Run ``case`` in ``page`` against every target at once.

    Args:
        page: a page showing :data:`PAGE`.
        upstream: the upstream every target ends at (for the recorded request headers).
        case: the case.
        targets: target name → base URL; ``<base>/case/<name>/<key>`` must reach ``upstream``.
        bound_s: the longest a target may take to finish the case.

    Returns:
        target name → what the browser observed through it.
    """
    types = ["message", "error", *case.types]
    keys: dict[str, str] = {}
    for target, base in targets.items():
        key = f"{target}-{uuid.uuid4().hex[:12]}"
        keys[target] = key
        page.evaluate(
            "([key, url, types, n]) => startRun(key, url, types, n)",
            [key, f"{base}/case/{case.name}/{key}", types, len(case.connections)],
        )
    deadline = time.monotonic() + bound_s
    observed: dict[str, Observation] = {}
    for target, key in keys.items():
        left_ms = max(100.0, (deadline - time.monotonic()) * 1000)
        try:
            page.wait_for_function(
                "key => window.runs[key].done", arg=key, timeout=left_ms, polling=20
            )
            finished = True
        except PlaywrightError:
            finished = False
            page.evaluate("key => stopRun(key)", key)
        log = page.evaluate("key => window.runs[key].log", key)
        entries, delays = _entries(log)
        observed[target] = Observation(
            entries=entries,
            reconnect_ms=delays,
            last_event_ids=tuple(upstream.requests.get(key, ())),
            finished=finished,
        )
    return observed
