"""EventSource conformance: Chromium's own ``EventSource`` sees the same through streamhop as
without it, for every parsing rule of the WHATWG HTML Standard, §9.2 "Server-sent events".

Real parts, all on loopback: headless Debian Chromium (Playwright, one browser and one page for
the whole module), a scripted aiohttp upstream that writes each case's raw bytes and records the
raw ``Last-Event-ID`` bytes it receives, a page on a third origin, and ``streamhop serve`` with two
routes to that upstream: ``/sse`` (``format = "sse"``) and ``/auto`` (the default, detected).

Each case (``tests/conformance/cases.py``, one per rule, with its section) runs on the three
targets at once. ``test_chromium_follows_the_spec`` checks the direct run against what the spec
says (so the case itself is right); ``test_the_sidecar_shows_the_browser_the_same`` checks each
sidecar route against the direct run: the same events (type, data, ``lastEventId``) in the same
order, the same opens, reconnects and failures, the same ``Last-Event-ID`` bytes upstream, and the
same reconnection delays within :data:`RECONNECT_TOLERANCE_MS`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conformance.cases import CASES, Case
from tests.conformance.harness import Observation, Upstream, page_app, play
from tests.support import BackgroundAiohttp, start_streamhop

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip(
        "Debian's chromium is not installed at /usr/bin/chromium (apt-get install chromium)",
        allow_module_level=True,
    )

from playwright.sync_api import sync_playwright  # noqa: E402

from tests.examples.test_browser import CHROMIUM_ARGS  # noqa: E402

pytestmark = pytest.mark.integration

ROUTES = ("sse", "auto")
"""The sidecar's routes under test: ``/sse`` has ``format = "sse"``, ``/auto`` the default."""
RECONNECT_TOLERANCE_MS = 250.0
"""How far a reconnection delay through the sidecar may be from the direct one. The cases' retry
times (300-500 ms) are far from Chromium's default (3 s) and from the invalid values (<= 16 ms)."""
CASE_BOUND_S = 8.0
"""Longest a case may take on a target, besides its reconnection times."""

Observe = Callable[[Case], dict[str, Observation]]


@pytest.fixture(scope="module")
def observe(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Observe]:
    """Plays a case on the direct target and both sidecar routes at once (once per case)."""
    upstream = Upstream({case.name: case for case in CASES})
    with BackgroundAiohttp(upstream.app) as up, BackgroundAiohttp(page_app()) as page_origin:
        config = tmp_path_factory.mktemp("conformance") / "streamhop.toml"
        config.write_text(
            f"""
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
drain_timeout_s = 1
allowed_origins = ["{page_origin.url}"]

[[routes]]
prefix = "/sse"
upstream = "{up.url}"
format = "sse"

[[routes]]
prefix = "/auto"
upstream = "{up.url}"
"""
        )
        sidecar = start_streamhop("serve", "--config", str(config), "--log-level", "warning")
        try:
            targets = {"direct": up.url, **{route: f"{sidecar.url}/{route}" for route in ROUTES}}
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(
                    executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, timeout=60_000
                )
                try:
                    page = browser.new_page()
                    page.goto(page_origin.url + "/", timeout=30_000)
                    seen: dict[str, dict[str, Observation]] = {}

                    def run(case: Case) -> dict[str, Observation]:
                        if case.name not in seen:
                            waits_s = (case.reconnect_ms or 0) * len(case.connections) / 1000
                            seen[case.name] = play(
                                page, upstream, case, targets, CASE_BOUND_S + waits_s
                            )
                        return seen[case.name]

                    yield run
                finally:
                    browser.close()
        finally:
            sidecar.stop()


def _view(observation: Observation) -> dict[str, object]:
    """Everything compared exactly: all but the reconnection delays."""
    return {
        "finished": observation.finished,
        "entries": list(observation.entries),
        "last_event_ids": list(observation.last_event_ids),
    }


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_chromium_follows_the_spec(case: Case, observe: Observe) -> None:
    direct = observe(case)["direct"]
    assert _view(direct) == {
        "finished": True,
        "entries": list(case.expected_entries()),
        "last_event_ids": list(case.expected_last_event_ids()),
    }, f"{case.section}: {case.rule}"
    if case.reconnect_ms is not None:
        assert len(direct.reconnect_ms) == len(case.connections) - 1
        for delay in direct.reconnect_ms:
            assert case.reconnect_ms - 20 <= delay <= case.reconnect_ms + 1500, direct


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_the_sidecar_shows_the_browser_the_same(case: Case, route: str, observe: Observe) -> None:
    observed = observe(case)
    direct, through = observed["direct"], observed[route]
    assert _view(through) == _view(direct), f"{case.section}: {case.rule}"
    for via_sidecar, without in zip(through.reconnect_ms, direct.reconnect_ms, strict=True):
        assert abs(via_sidecar - without) <= RECONNECT_TOLERANCE_MS, (
            f"reconnection delays through /{route}: {through.reconnect_ms} ms, "
            f"direct: {direct.reconnect_ms} ms ({case.section}: {case.rule})"
        )
