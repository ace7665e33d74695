"""The ``streams sustained`` scenario of bench/peers.py: how many streams a target keeps whole.

Issue 22, item 5: "the highest concurrency at which every event arrives, no stream stalls longer
than 10x the upstream's pacing and fewer than 0.1 % of streams fail", reported per core.

Method. Each target climbs a ladder of concurrencies (``--sustained-start``, doubling, up to
``--sustained-max``; the last rung is the maximum itself). One rung holds N streams open for
``--sustained-seconds`` (:func:`peers_client.run_load`: one keep-alive connection per stream, a
stream that ends is replaced at once, starts staggered over the first second; streams started
before the end run to their end, at most 5 s more). A rung passes when, over every stream
started in it:

* **failed < 0.1 %**: a stream fails when its response is not a 200 that ended cleanly
  (connection lost, parse error, still running 5 s after the rung);
* **every event arrived**: every stream that did not fail delivered the whole content text the
  simulator sent (decoded at the client and compared with a reference answer fetched from the
  simulator before the run: the simulator's text depends only on the request, which is the same
  for every stream) and, for a target that forwards events one for one (``passthrough_like``),
  as many SSE events as the reference (203). A coalescing target merges events on purpose, so
  only its text is compared;
* **no stall**: in no stream that did not fail is there a gap longer than 10x the upstream's
  pacing (``STALL_FACTOR`` x 1 / ``--events-per-second``: 50 ms at 200 events/s) between two
  consecutive socket reads, from the read that completed the first content event to the end of
  the response; nor a wait for the first content event longer than the upstream's TTFT plus
  that same bound (a stream that does not start is stalled too). The gap is between reads, not
  events, so a proxy that merges events within a flush window of a few ms is not penalised.

A target's ladder stops at its first failing rung; then ``--sustained-refine`` bisection rungs
between the highest pass and the lowest failure narrow it down. Its **streams sustained** is the
highest N that passed below the lowest N that failed. Rungs are interleaved: each rung runs on
every target still climbing, in rotating order, before the next one, so drift on a shared
machine hits all targets alike.

**Per core**: N divided by ``TARGET_CORES`` = 1. Every target here runs one worker process
(nginx ``worker_processes 1``, one streamhop process, one uvicorn worker, one Node process) with
one event-loop thread, so it can use at most one of the machine's cores; the other core, and
whatever the target leaves of its own, goes to the simulator and the bench client, which share
the machine. The report also gives the CPU the target really used at its highest passing rung.

``direct`` (no proxy) climbs too: its figure is the ceiling of the harness itself (one Python
simulator and one Python client on the same cores). A target that reaches it was not the limit.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import resource
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from bench import peers_targets as pt
from bench.peers_client import run_load
from bench.procfs import TreeCpu

if TYPE_CHECKING:
    from bench.peers_client import Exchange

STALL_FACTOR = 10  # a stall: a gap longer than this many times the upstream's pacing
FAIL_SHARE = 0.001  # a rung passes with failed streams below this share
TARGET_CORES = 1  # every target runs one worker process with one event-loop thread


@dataclass(frozen=True)
class Expected:
    """What the simulator sends for the bench request: SSE events and the content text."""

    events: int
    content_chars: int
    content_hash: int


@dataclass
class Rung:
    """One concurrency on one target, and whether it passed."""

    streams: int
    seconds: float
    wall_s: float = 0.0
    requests: int = 0
    ok: int = 0
    failed: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    incomplete: int = 0
    stalled: int = 0
    slow_start: int = 0
    gap_p50_ms: float = math.nan
    gap_p99_ms: float = math.nan
    gap_max_ms: float = math.nan
    ttft_p50_ms: float = math.nan
    ttft_p99_ms: float = math.nan
    proxy_cores: float | None = None
    cpu_us_per_event: float | None = None
    simulator_share: float = math.nan
    client_share: float = math.nan
    upstream_streams: int = 0
    upstream_events_per_s: float = math.nan
    upstream_cut: int = 0
    upstream_short: int = 0
    passed: bool = False
    why: list[str] = field(default_factory=list)


@dataclass
class Climb:
    """Every rung one target ran, in the order run."""

    target: str
    rungs: list[Rung] = field(default_factory=list)

    def bracket(self) -> tuple[int, int | None]:
        """The highest N that passed below the lowest that failed (0: none), and that failure."""
        failed = [r.streams for r in self.rungs if not r.passed]
        hi = min(failed) if failed else None
        passed = [r.streams for r in self.rungs if r.passed and (hi is None or r.streams < hi)]
        return max(passed, default=0), hi

    def sustained(self) -> int:
        """Streams sustained: the highest N that passed below the lowest N that failed."""
        return self.bracket()[0]

    def best_rung(self) -> Rung | None:
        n = self.sustained()
        return next((r for r in self.rungs if r.streams == n and r.passed), None)

    def summary(self, maximum: int) -> dict[str, Any]:
        n, hi = self.bracket()
        best = self.best_rung()
        return {
            "target": self.target,
            "streams_sustained": n,
            "first_failure": hi,
            "capped": hi is None and n >= maximum,
            "per_core": n / TARGET_CORES,
            "cores_divisor": TARGET_CORES,
            "proxy_cores_at_best": best.proxy_cores if best else None,
            "rungs": [asdict(r) for r in self.rungs],
        }


def ladder(start: int, maximum: int) -> list[int]:
    """``start``, doubling while below ``maximum``, then ``maximum`` itself."""
    levels: list[int] = []
    n = start
    while n < maximum:
        levels.append(n)
        n *= 2
    levels.append(maximum)
    return levels


def between(lo: int, hi: int) -> int | None:
    """A rung halfway between ``lo`` (passed) and ``hi`` (failed), or ``None`` if too close."""
    if hi - lo <= 10:
        return None
    mid = (lo + hi) / 2
    mid = round(mid / 10) * 10 if hi - lo >= 40 else round(mid)
    return mid if lo < mid < hi else None


def reference(sim_url: str, payload: bytes) -> Expected:
    """Fetch the bench answer from the simulator twice; its events and content text.

    Raises:
        SystemExit: the two answers differ (the comparison per stream would be meaningless).
    """

    def once() -> tuple[int, str]:
        request = urllib.request.Request(
            sim_url + "/v1/chat/completions",
            data=payload,
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            raw: bytes = response.read()
        text = []
        for event in raw.split(b"\n\n"):
            for line in event.split(b"\n"):
                data = line.removeprefix(b"data:").strip()
                if not line.startswith(b"data:") or data == b"[DONE]":
                    continue
                for choice in json.loads(data).get("choices", []):
                    content = (choice.get("delta") or {}).get("content")
                    if content:
                        text.append(content)
        return raw.count(b"\n\n"), "".join(text)

    first, second = once(), once()
    if first != second:
        raise SystemExit("streams sustained: the simulator answered the same request differently")
    events, text = first
    return Expected(events, len(text), hash(text))


def _pct_ms(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def _cpu_self() -> float:
    t = os.times()
    return t.user + t.system


class Sustained:
    """Runs the ladders of every target against one simulator."""

    def __init__(
        self,
        *,
        sim_url: str,
        sim_pid: int,
        interval_s: float,
        ttft_s: float,
        payload: bytes,
        make_log: Callable[[], pt.SimLog],
        quiesce: Callable[[pt.SimLog], None],
    ) -> None:
        self.sim_pid = sim_pid
        self.interval_s = interval_s
        self.ttft_s = ttft_s
        self.limit_s = STALL_FACTOR * interval_s
        self.payload = payload
        self.make_log = make_log
        self.quiesce = quiesce
        self.expected = reference(sim_url, payload)

    def climb(
        self,
        live: list[pt.Target],
        *,
        start: int,
        maximum: int,
        seconds: float,
        refine: int,
    ) -> dict[str, Climb]:
        """Run every target up its ladder (interleaved), then ``refine`` bisection rounds."""
        climbs = {t.name: Climb(t.name) for t in live}
        climbing = list(live)
        for i, n in enumerate(ladder(start, maximum)):
            shift = i % len(climbing) if climbing else 0
            for target in climbing[shift:] + climbing[:shift]:
                rung = self.rung(target, n, seconds)
                climbs[target.name].rungs.append(rung)
            climbing = [t for t in climbing if climbs[t.name].rungs[-1].passed]
            if not climbing:
                break
        for r in range(refine):
            shift = r % len(live)
            for target in live[shift:] + live[:shift]:
                lo, hi = climbs[target.name].bracket()
                mid = between(lo, hi) if hi is not None else None
                if mid is not None:
                    climbs[target.name].rungs.append(self.rung(target, mid, seconds, refine=True))
        return climbs

    def rung(self, target: pt.Target, n: int, seconds: float, *, refine: bool = False) -> Rung:
        """Hold ``n`` streams on ``target`` for ``seconds``; judge them."""
        assert target.endpoint is not None
        label = "refine " if refine else ""
        print(f"streams sustained  {target.name:<22} {label}{n:>5} streams", end="", flush=True)
        log = self.make_log()
        self.quiesce(log)
        log.clear()
        proxy_cpu, sim_cpu = TreeCpu(target.pid or None), TreeCpu(self.sim_pid)
        me0, t0 = _cpu_self(), time.monotonic()
        payload = self.payload
        with log, proxy_cpu, sim_cpu:
            exchanges = asyncio.run(
                run_load(
                    target.endpoint,
                    lambda: payload,
                    concurrency=n,
                    duration_s=seconds,
                    grace_s=5.0,
                    record_arrivals=False,
                    watch=True,
                )
            )
        wall = time.monotonic() - t0
        rung = Rung(n, seconds, wall_s=wall)
        rung.client_share = (_cpu_self() - me0) / wall
        rung.simulator_share = sim_cpu.seconds / wall
        records = [r for r in log.records.values() if r["path"].endswith("/chat/completions")]
        events = sum(r["events"] for r in records)
        if target.pid:
            rung.proxy_cores = proxy_cpu.seconds / wall
            rung.cpu_us_per_event = proxy_cpu.seconds / events * 1e6 if events else None
        rung.upstream_streams = len(records)
        rung.upstream_events_per_s = events / wall
        rung.upstream_cut = sum(1 for r in records if r["outcome"] not in (None, "complete"))
        rung.upstream_short = sum(
            1 for r in records if r["outcome"] == "complete" and r["events"] != self.expected.events
        )
        self.judge(target, exchanges, rung)
        verdict = "pass" if rung.passed else "FAIL: " + "; ".join(rung.why)
        print(f"  {rung.requests} streams, gap max {rung.gap_max_ms:.0f} ms, {verdict}", flush=True)
        return rung

    def judge(self, target: pt.Target, exchanges: list[Exchange], rung: Rung) -> None:
        """Fill the counts and percentiles of ``rung`` from its exchanges, and its verdict."""
        expected = self.expected
        errors: dict[str, int] = defaultdict(int)
        gaps: list[float] = []
        ttfts: list[float] = []
        rung.requests = len(exchanges)
        for ex in exchanges:
            if not ex.ok:
                rung.failed += 1
                errors[(ex.error or f"HTTP {ex.status}").split(":")[0]] += 1
                continue
            rung.ok += 1
            whole = (
                ex.content_chars == expected.content_chars
                and ex.content_hash == expected.content_hash
                and (not target.passthrough_like or ex.events == expected.events)
            )
            if not whole:
                rung.incomplete += 1
            gaps.append(ex.max_gap)
            if ex.max_gap > self.limit_s:
                rung.stalled += 1
            if ex.first_content is not None:
                ttft = ex.first_content - ex.sent
                ttfts.append(ttft)
                if ttft - self.ttft_s > self.limit_s:
                    rung.slow_start += 1
        rung.errors = dict(errors)
        rung.gap_p50_ms, rung.gap_p99_ms = _pct_ms(gaps, 0.5), _pct_ms(gaps, 0.99)
        rung.gap_max_ms = max(gaps) * 1000 if gaps else math.nan
        rung.ttft_p50_ms, rung.ttft_p99_ms = _pct_ms(ttfts, 0.5), _pct_ms(ttfts, 0.99)
        limit_ms = self.limit_s * 1000
        why = []
        if not rung.requests:
            why.append("no stream started")
        if rung.failed and rung.failed >= FAIL_SHARE * rung.requests:
            why.append(f"{rung.failed} of {rung.requests} failed")
        if rung.incomplete:
            why.append(f"{rung.incomplete} incomplete")
        if rung.stalled:
            why.append(f"{rung.stalled} stalled > {limit_ms:.0f} ms")
        if rung.slow_start:
            why.append(f"{rung.slow_start} waited > TTFT + {limit_ms:.0f} ms for content")
        rung.why = why
        rung.passed = not why


def fd_warning(maximum: int) -> str | None:
    """A note when the open-file limit cannot hold ``maximum`` streams through a proxy."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 2 * maximum + 100  # a proxy holds a client and an upstream socket per stream
    if soft != resource.RLIM_INFINITY and soft < need:
        return (
            f"open-file limit {soft} < {need}: a proxy may run out of sockets before "
            f"{maximum} streams (raise it with ulimit -n)"
        )
    return None
