"""streamhop side by side with its peers, against one paced upstream.

Starts ONE ``streamhop simulate`` (default 200 SSE events/s x 10 tokens/event, TTFT 20 ms, one
write per event) and, in front of it on loopback, each target: ``direct`` (no proxy), nginx
(``proxy_buffering off``), the LiteLLM proxy, the Portkey gateway, and streamhop in coalesce and
in passthrough mode (bench/peers_targets.py says how each is configured; bench/setup_peers.sh
installs them). A target that is not installed or does not answer is reported as missing, with
the reason.

Scenarios: ``1 stream``, ``50 streams``, ``200 streams`` (that many streams kept open, each
2,000 tokens = 200 content events), ``cancel`` (one stream at a time; the client closes after two
content events), ``non-streaming`` (``stream: false``, 200 tokens, 20 in flight); and, only when
named in ``--scenarios``: ``50 together`` (``--together`` N streams whose requests are all written
in one event-loop pass, after every connection was opened and left idle; repeated in bursts, each
burst read to its end), ``50 streams, TLS`` and ``50 together, TLS`` (the same over an HTTPS
upstream: nginx terminating TLS in front of the simulator with a certificate from a local
``trustme`` CA, and a second process of every target pointed at it and trusting that CA; see
bench/peers_targets.py), and ``streams sustained`` (below). The run is
interleaved: in each of ``--rounds`` rounds every scenario runs on every target for
``--duration-s / --rounds`` seconds, the target order rotating, so drift on a shared machine hits
all targets alike.

``streams sustained`` (issue 22, item 5; bench/peers_sustained.py has the details): the highest
concurrency at which every event arrives, no stream stalls longer than 10x the upstream's pacing
and fewer than 0.1 % of streams fail, reported per core. Each target climbs a ladder of N
(``--sustained-start`` 50, doubling, up to ``--sustained-max``, default 800), holding N streams
open for ``--sustained-seconds`` (default 5) per rung; a rung passes when fewer than 0.1 % of
its streams failed (not a clean 200), every other stream delivered the simulator's whole content
text (and, one for one, its 203 events when the target does not merge events), and none had a
gap longer than 10 x 1 / ``--events-per-second`` (50 ms by default) between two consecutive
socket reads after its first content, nor waited longer than the TTFT plus that for its first
content. The ladder stops at a target's first failing rung; ``--sustained-refine`` (default 1)
bisection rungs then narrow it. Rungs are interleaved across targets. Streams sustained per
core = N / 1: every target runs one worker process with one event-loop thread, so it can use at
most one of the machine's cores (the simulator and the client share the rest). ``direct``
climbs too: its N is the ceiling of the harness itself. ``--quick`` makes it 3 s per rung, up
to 400. It does not run in ``--rounds``; its own section of the report has every rung.

Per target it reports:

* proxy CPU per upstream event: user + system CPU of the target's process tree (from /proc,
  reaped children included) over the slice, divided by the SSE events the simulator wrote in that
  slice (from its stream log at /_simulator/streams); non-streaming: per request;
* TTFT (request written -> first non-empty content delta read) p50/p99, and added vs direct in
  the same scenario;
* transit added (targets that forward each event as it came): per content event, client read
  time minus the simulator's send time, p50/p99, minus direct's. The simulator logs the actual
  send time of each stream's first content event only; event k >= 1 is taken at its scheduled
  time (the stream's arrival + TTFT + k / events-per-second, never before event 0's send), so a
  late simulator adds to every target alike and drops out of the difference;
* events delivered per stream, next to what the simulator sent per stream;
* cancel latency: client close -> simulator sees its connection close (same clock), p50/p99, and
  how many closes never reached the simulator (it finished the stream instead);
* peak RSS of the process tree (sum of VmHWM);
* errors: non-200, broken or unfinished responses.

Outputs in ``--out`` (default build/peers-report/): ``report.md`` (tables, machine, date, load
average, the exact command), ``results.json``, ``peers-cpu-per-event.png`` and
``peers-ttft-p99.png``.

Usage: python -m bench.peers [--duration-s 10] [--rounds 2] [--quick] [--targets a,b,...]
       [--scenarios "50 streams,50 together,50 streams, TLS,streams sustained"] [--together 50]
       [--sustained-start 50] [--sustained-max 800] [--sustained-seconds 5]
       [--sustained-refine 1] [--out build/peers-report]

``--scenarios`` is split on commas that are not followed by a space, so "50 streams, TLS" is
one name.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import re
import shlex
import signal
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench import peers_targets as pt
from bench.peers_client import Endpoint, Exchange, cancel_once, run_load, run_together
from bench.peers_report import Cell, Scenario, write_outputs
from bench.peers_sustained import Sustained, fd_warning
from bench.procfs import TreeCpu, cpu_model, tree_peak_rss_mb

TARGETS = (
    "direct",
    "nginx",
    "litellm",
    "portkey",
    "streamhop-coalesce",
    "streamhop-coalesce-reads",
    "streamhop-passthrough",
    "streamhop-2-workers",
)
STREAM_TOKENS = 2000
NONSTREAM_TOKENS = 200
NONSTREAM_CONCURRENCY = 20
CANCEL_AFTER = 2  # content events read before the client closes


SCENARIOS = (
    Scenario("1 stream", "stream", 1),
    Scenario("50 streams", "stream", 50),
    Scenario("200 streams", "stream", 200),
    Scenario("cancel", "cancel", 1),
    Scenario("non-streaming", "json", NONSTREAM_CONCURRENCY),
)


SUSTAINED = "streams sustained"


def extra_scenarios(together: int) -> tuple[Scenario, ...]:
    """The scenarios run only when named: requests arriving together, a TLS upstream, and the
    most streams each target keeps whole."""
    return (
        Scenario(f"{together} together", "stream", together, together=True),
        Scenario("50 streams, TLS", "stream", 50, tls=True),
        Scenario(f"{together} together, TLS", "stream", together, together=True, tls=True),
        Scenario(SUSTAINED, "sustained", 0),
    )


def body(tokens: int, stream: bool) -> bytes:
    payload: dict[str, Any] = {
        "model": "sim",
        "messages": [{"role": "user", "content": "Benchmark the plumbing, not the model."}],
        "max_tokens": tokens,
        "stream": stream,
    }
    return json.dumps(payload).encode()


def _cpu_self() -> float:
    t = os.times()
    return t.user + t.system


class Bench:
    """Runs the slices and pools what they measure."""

    def __init__(
        self, args: argparse.Namespace, sim_pid: int, sim_url: str, front_pid: int | None = None
    ) -> None:
        self.args = args
        self.sim_pid = sim_pid
        self.front_pid = front_pid  # the TLS front's CPU counts with the simulator's
        self.sim_url = sim_url
        self.interval_s = 1.0 / args.events_per_second
        self.ttft_s = args.ttft_ms / 1000
        self.cells: dict[tuple[str, str], Cell] = defaultdict(Cell)

    def slice(self, target: pt.Target, scenario: Scenario, seconds: float) -> None:
        """Run ``scenario`` against ``target`` for ``seconds`` and pool the figures."""
        assert target.endpoint is not None
        cell = self.cells[target.name, scenario.name]
        log = pt.SimLog(self.sim_url)
        self.quiesce(log)
        log.clear()
        proxy_cpu, sim_cpu = TreeCpu(target.pid or None), TreeCpu(self.sim_pid)
        front_cpu = TreeCpu(self.front_pid if scenario.tls else None)
        me0, t0 = _cpu_self(), time.monotonic()
        with log, proxy_cpu, sim_cpu, front_cpu:
            if scenario.kind == "cancel":
                exchanges = asyncio.run(self._cancel(target.endpoint, seconds, log, cell))
            elif scenario.together:
                payload = body(STREAM_TOKENS, True)
                exchanges, spreads = asyncio.run(
                    run_together(
                        target.endpoint,
                        lambda: payload,
                        streams=scenario.concurrency,
                        duration_s=seconds,
                        burst_timeout_s=max(10.0, seconds),
                        record_arrivals=target.passthrough_like,
                    )
                )
                cell.burst_spread_s += spreads
            else:
                stream = scenario.kind == "stream"
                tokens = STREAM_TOKENS if stream else NONSTREAM_TOKENS
                payload = body(tokens, stream)
                exchanges = asyncio.run(
                    run_load(
                        target.endpoint,
                        lambda: payload,
                        concurrency=scenario.concurrency,
                        duration_s=seconds,
                        grace_s=max(5.0, seconds),
                        record_arrivals=stream and target.passthrough_like,
                    )
                )
        t1 = time.monotonic()
        cell.wall_s += t1 - t0
        cell.cpu_s += proxy_cpu.seconds
        cell.sim_cpu_s += sim_cpu.seconds + front_cpu.seconds
        cell.client_cpu_s += _cpu_self() - me0
        records = [r for r in log.records.values() if r["path"].endswith("/chat/completions")]
        cell.upstream_events += sum(r["events"] for r in records)
        cell.upstream_streams += len(records)
        if scenario.kind != "cancel":
            self._pool(target, scenario, exchanges, records, cell)

    def quiesce(self, log: pt.SimLog) -> None:
        """Wait (bounded) until no stream of an earlier slice still runs upstream."""
        deadline = time.monotonic() + 15
        while log.running() and time.monotonic() < deadline:
            time.sleep(0.2)

    def _pool(
        self,
        target: pt.Target,
        scenario: Scenario,
        exchanges: list[Exchange],
        records: list[dict[str, Any]],
        cell: Cell,
    ) -> None:
        by_id = {r["id"]: r for r in records}
        cell.requests += len(exchanges)
        for ex in exchanges:
            if not ex.ok:
                cell.error(ex.error or f"HTTP {ex.status}")
                continue
            cell.ok += 1
            assert ex.done is not None
            cell.latency_s.append(ex.done - ex.sent)
            if scenario.kind != "stream":
                continue
            if ex.first_content is not None:
                cell.ttft_s.append(ex.first_content - ex.sent)
            cell.delivered_events.append(ex.events)
            record = by_id.get(ex.rid)
            if record is not None and record["outcome"] == "complete":
                cell.upstream_events_per_stream.append(record["events"])
            if ex.arrivals:
                self._transit(ex, record, cell)

    def _transit(self, ex: Exchange, record: dict[str, Any] | None, cell: Cell) -> None:
        if record is None or record["first_content"] is None:
            cell.transit_note = "the simulator did not see the request id (not forwarded)"
            return
        first_sent = record["first_content"]
        due0 = record["started"] + self.ttft_s
        k = 0
        for arrived, n in ex.arrivals:
            for _ in range(n):
                sent = first_sent if k == 0 else max(first_sent, due0 + k * self.interval_s)
                cell.transit_s.append(arrived - sent)
                k += 1

    async def _cancel(
        self, endpoint: Endpoint, seconds: float, log: pt.SimLog, cell: Cell
    ) -> list[Exchange]:
        """Sequential trials: open, read two content events, close; find the upstream close."""
        payload = body(STREAM_TOKENS, True)
        deadline = time.monotonic() + seconds
        done: list[Exchange] = []
        while time.monotonic() < deadline:
            ex = await cancel_once(endpoint, payload, CANCEL_AFTER)
            cell.requests += 1
            done.append(ex)
            if ex.closed_at is None:
                cell.error(ex.error or f"HTTP {ex.status}")
                continue
            cell.ok += 1
            # The simulator ends a stream it is not told about within ~1 s (200 events).
            record = await asyncio.to_thread(self._closed_record, log, ex, 3.0)
            if record is None or record["outcome"] != "client_closed":
                cell.cancel_not_propagated += 1
            else:
                cell.cancel_s.append(record["ended"] - ex.closed_at)
            await asyncio.sleep(0.01)
        return done

    def _closed_record(self, log: pt.SimLog, ex: Exchange, bound_s: float) -> dict[str, Any] | None:
        end = time.monotonic() + bound_s
        while True:
            records = log.fetch()
            mine = [r for r in records if r["id"] == ex.rid] or [
                r for r in records if r["started"] >= ex.sent - 0.001
            ]
            if mine and mine[-1]["outcome"] is not None:
                return mine[-1]
            if time.monotonic() > end:
                return mine[-1] if mine else None
            time.sleep(0.005)


def start_targets(
    names: list[str], sim_url: str, args: argparse.Namespace, tls: pt.Tls | None = None
) -> list[pt.Target]:
    """Start each named target in front of ``sim_url`` (with ``tls``: the TLS front)."""
    makers = {
        "direct": lambda: pt.direct(sim_url, tls),
        "nginx": lambda: pt.nginx(sim_url, tls),
        "litellm": lambda: pt.litellm(sim_url, tls),
        "portkey": lambda: pt.portkey(sim_url, headers_shim=not args.portkey_no_shim, tls=tls),
        "streamhop-coalesce": lambda: pt.streamhop(sim_url, "coalesce", tls),
        "streamhop-coalesce-reads": lambda: pt.streamhop(
            sim_url, "coalesce", tls, coalesce_reads=True
        ),
        "streamhop-passthrough": lambda: pt.streamhop(sim_url, "passthrough", tls),
        "streamhop-2-workers": lambda: pt.streamhop(sim_url, "coalesce", tls, workers=2),
    }
    targets = []
    for name in names:
        print(f"starting {name}{' (TLS upstream)' if tls else ''} ...", flush=True)
        target = makers[name]()
        if target.missing:
            print(f"  MISSING: {target.missing}", flush=True)
        else:
            print(f"  {target.label} on 127.0.0.1:{target.endpoint.port}", flush=True)  # type: ignore[union-attr]
        targets.append(target)
    return targets


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.peers", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--duration-s",
        type=float,
        default=10.0,
        help="seconds per scenario per target, over all rounds",
    )
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds")
    parser.add_argument(
        "--quick", action="store_true", help="a short run: 2 s per scenario, 1 round"
    )
    parser.add_argument(
        "--targets",
        default=",".join(TARGETS),
        help="comma-separated subset of " + ",".join(TARGETS),
    )
    parser.add_argument(
        "--scenarios",
        default=",".join(s.name for s in SCENARIOS),
        help="comma-separated (a comma followed by a space stays in the name); default: "
        + ",".join(s.name for s in SCENARIOS)
        + "; also: "
        + ",".join(s.name for s in extra_scenarios(50)),
    )
    parser.add_argument(
        "--together",
        type=int,
        default=50,
        help="streams per burst in the 'N together' scenarios (default 50)",
    )
    parser.add_argument(
        "--sustained-start", type=int, default=50, help="streams sustained: first rung"
    )
    parser.add_argument(
        "--sustained-max",
        type=int,
        default=None,
        help="streams sustained: last rung, the ladder doubles to it (default 800; --quick: 400)",
    )
    parser.add_argument(
        "--sustained-seconds",
        type=float,
        default=None,
        help="streams sustained: seconds each rung holds its streams (default 5; --quick: 3)",
    )
    parser.add_argument(
        "--sustained-refine",
        type=int,
        default=1,
        help="streams sustained: bisection rungs after a target's first failure (default 1)",
    )
    parser.add_argument("--events-per-second", type=float, default=200.0)
    parser.add_argument("--tokens-per-event", type=float, default=10.0)
    parser.add_argument("--ttft-ms", type=float, default=20.0)
    parser.add_argument("--out", type=Path, default=pt.ROOT / "build" / "peers-report")
    parser.add_argument(
        "--portkey-no-shim",
        action="store_true",
        help="run Portkey without its mutable-headers preload (does a new version need it?)",
    )
    args = parser.parse_args()
    if args.quick:
        args.duration_s, args.rounds = 2.0, 1
    if args.sustained_seconds is None:
        args.sustained_seconds = 3.0 if args.quick else 5.0
    if args.sustained_max is None:
        args.sustained_max = 400 if args.quick else 800
    if not 0 < args.sustained_start <= args.sustained_max:
        parser.error("need 0 < --sustained-start <= --sustained-max")
    names = [n.strip() for n in args.targets.split(",") if n.strip()]
    unknown = set(names) - set(TARGETS)
    if unknown:
        parser.error(f"unknown targets: {', '.join(sorted(unknown))}")
    if "direct" not in names:
        names.insert(0, "direct")  # the baseline every "added" figure needs
    wanted = {n.strip() for n in re.split(r",(?! )", args.scenarios) if n.strip()}
    known = (*SCENARIOS, *extra_scenarios(args.together))
    unknown = wanted - {s.name for s in known}
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    scenarios = [s for s in known if s.name in wanted]
    sliced = [s for s in scenarios if s.kind != "sustained"]
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass

    command = " ".join(["python -m bench.peers", shlex.join(sys.argv[1:])]).strip()
    started = dt.datetime.now(dt.UTC)
    load_before = os.getloadavg()
    wall0 = time.monotonic()
    sim = pt.start_simulator(args.events_per_second, args.tokens_per_event, args.ttft_ms)
    assert sim.url is not None
    sim_url = sim.url
    targets: list[pt.Target] = []
    twins: dict[str, pt.Target] = {}  # name -> the same peer in front of the TLS upstream
    tls: pt.Tls | None = None
    front: pt.Target | None = None
    tls_notes: list[str] = []
    sustained: dict[str, Any] | None = None
    old_term = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        targets = start_targets(names, sim_url, args)
        live = [t for t in targets if not t.missing]
        if any(s.tls for s in scenarios):
            tls, front, tls_notes = start_tls(live, sim_url, args, twins)
        bench = Bench(args, sim.pid, sim_url, front.pid if front else None)
        seconds = args.duration_s / args.rounds
        for rnd in range(args.rounds if sliced else 0):
            for si, scenario in enumerate(sliced):
                shift = (rnd + si) % len(live)
                order = live[shift:] + live[:shift]
                for plain in order:
                    target = twins.get(plain.name) if scenario.tls else plain
                    if target is None:
                        continue  # no TLS twin (missing): its cell stays empty
                    print(
                        f"round {rnd + 1}/{args.rounds}  {scenario.name:<18} {target.name:<22}",
                        end="",
                        flush=True,
                    )
                    bench.slice(target, scenario, seconds)
                    cell = bench.cells[target.name, scenario.name]
                    print(f" ok {cell.ok}/{cell.requests}", flush=True)
        if len(sliced) < len(scenarios):
            sustained = run_sustained(bench, live, args)
        peak_rss = {t.name: tree_peak_rss_mb(t.pid) for t in live if t.pid}
        peak_rss["simulator"] = tree_peak_rss_mb(sim.pid)
    finally:
        for target in [*targets, *twins.values(), *([front] if front else [])]:
            target.stop()
        if tls is not None:
            tls.close()
        sim.stop()
        signal.signal(signal.SIGTERM, old_term)
    meta = {
        "command": command,
        "started": started.isoformat(timespec="seconds"),
        "duration_total_s": time.monotonic() - wall0,
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "python": pt.python_version(),
        "upstream": (
            f"streamhop simulate: {args.events_per_second:g} events/s x {args.tokens_per_event:g} "
            f"tokens/event, TTFT {args.ttft_ms:g} ms, one write per event"
        ),
        "duration_s": args.duration_s,
        "rounds": args.rounds,
        "streamhop_tree": source_tree(),
        "tls": tls_notes,
        "together": args.together,
    }
    if sustained is not None:
        meta["sustained"] = sustained.pop("meta")
    paths = write_outputs(args.out, meta, targets, scenarios, bench.cells, peak_rss, sustained)
    print(f"\nwrote {', '.join(str(p) for p in paths)}")
    print((args.out / "report.md").read_text())
    return 0


def run_sustained(bench: Bench, live: list[pt.Target], args: argparse.Namespace) -> dict[str, Any]:
    """The ``streams sustained`` ladders (bench/peers_sustained.py); per target, and ``meta``."""
    warning = fd_warning(args.sustained_max)
    if warning:
        print(f"WARNING: {warning}", flush=True)
    runner = Sustained(
        sim_url=bench.sim_url,
        sim_pid=bench.sim_pid,
        interval_s=bench.interval_s,
        ttft_s=bench.ttft_s,
        payload=body(STREAM_TOKENS, True),
        # Polled 4x a second: at 800 streams of ~1 s the simulator's 1,000 records last ~1.2 s.
        make_log=lambda: pt.SimLog(bench.sim_url, every_s=0.25),
        quiesce=bench.quiesce,
    )
    climbs = runner.climb(
        live,
        start=args.sustained_start,
        maximum=args.sustained_max,
        seconds=args.sustained_seconds,
        refine=args.sustained_refine,
    )
    expected = runner.expected
    return {
        "meta": {
            "start": args.sustained_start,
            "max": args.sustained_max,
            "seconds": args.sustained_seconds,
            "refine": args.sustained_refine,
            "stall_ms": runner.limit_s * 1000,
            "expected_events": expected.events,
            "expected_content_chars": expected.content_chars,
            "fd_warning": warning,
        },
        **{name: climb.summary(args.sustained_max) for name, climb in climbs.items()},
    }


def start_tls(
    live: list[pt.Target], sim_url: str, args: argparse.Namespace, twins: dict[str, pt.Target]
) -> tuple[pt.Tls, pt.Target | None, list[str]]:
    """Make the local CA, start the TLS front and a TLS twin of every live target.

    Fills ``twins`` (name -> started twin) and returns the CA, the front (``None`` if it did
    not start) and one report line per twin.
    """
    tls = pt.Tls()
    print("starting the TLS front (nginx) ...", flush=True)
    front = pt.tls_front(sim_url, tls)
    notes = [f"local CA and certificate from trustme {tls.version}"]
    if front.missing or front.endpoint is None:
        print(f"  MISSING: {front.missing}", flush=True)
        notes.append(f"TLS front MISSING — {front.missing}; no TLS scenario ran")
        return tls, None, notes
    front_url = f"https://127.0.0.1:{front.endpoint.port}"
    trust = {
        "direct": "the bench client verifies against the CA",
        "nginx": "proxy_ssl_trusted_certificate + proxy_ssl_verify on",
        "litellm": "SSL_CERT_FILE, REQUESTS_CA_BUNDLE",
        "portkey": "NODE_EXTRA_CA_CERTS",
        "streamhop-coalesce": "SSL_CERT_FILE",
        "streamhop-coalesce-reads": "SSL_CERT_FILE",
        "streamhop-passthrough": "SSL_CERT_FILE",
    }
    notes.append(f"upstream: {front.label}, {front_url}")
    for twin in start_targets([t.name for t in live], front_url, args, tls):
        if twin.missing:
            notes.append(f"`{twin.name}` over TLS: MISSING — {twin.missing}")
        else:
            twins[twin.name] = twin
            notes.append(f"`{twin.name}` over TLS: {twin.label}; trust: {trust[twin.name]}")
    return tls, front, notes


def source_tree() -> str:
    """The commit streamhop ran from, and whether its code had uncommitted changes."""
    import subprocess

    def git(*argv: str) -> str:
        run = subprocess.run(["git", *argv], cwd=pt.ROOT, capture_output=True, text=True)
        return run.stdout.strip()

    import streamhop.sidecar

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    where = Path(streamhop.sidecar.__file__).resolve().parent.parent
    if where != pt.ROOT:  # e.g. PYTHONPATH at an export of a commit, away from the work tree
        return f"imported from {where} (PYTHONPATH), not the work tree at {head}"
    dirty = git("status", "--porcelain", "--", "middleware", "sidecar").splitlines()
    return f"{head}" + (f" + uncommitted changes in {len(dirty)} files" if dirty else "")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
