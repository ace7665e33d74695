"""``streamhop demo``: show a person, in a few seconds, what streamhop does to a fast stream.

Starts ``streamhop simulate`` (a provider at Cerebras-like speed) and ``streamhop serve`` in
front of it, both on free loopback ports; streams the same chat requests directly and through
the sidecar with the official ``openai`` SDK; prints SSE events received, time to first token
and bytes for both paths and whether the final texts are equal; then sends one stream through a
simulated buffering hop (the simulator's ``buffered`` fault) and prints how many upstream bursts
the sidecar counted (figures scraped from its ``/metrics`` while it runs); stops both, or with
``--keep-running`` leaves them running and prints their URLs until Ctrl-C; exits 0 when the texts
are equal (1 otherwise).

The ``/metrics`` URL is printed only when it stays reachable (``--keep-running``): the sidecar
listens on a free port that is gone once the demo exits.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    import openai

PROMPTS = (
    "Explain server-sent events to a new engineer.",
    "Write a short poem about fast tokens, with emoji.",
    "Summarise why proxies add latency, in Japanese and English.",
)
BUFFER_HOLD_MS = 600
"""The simulated buffering hop releases what it holds every this many milliseconds."""
_READY = re.compile(
    rb"listening on (http://[0-9.:\[\]a-z]+)(?: \(admin (http://[0-9.:\[\]a-z]+)\))?"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``streamhop demo``."""
    parser.add_argument(
        "--tokens-per-second",
        type=float,
        default=2000.0,
        metavar="N",
        help="simulated provider speed (default %(default)g)",
    )
    parser.add_argument(
        "--events-per-second",
        type=float,
        default=200.0,
        metavar="N",
        help="simulated SSE events per second (default %(default)g)",
    )
    parser.add_argument(
        "--ttft-ms",
        type=float,
        default=50.0,
        metavar="N",
        help="simulated time to first token (default %(default)g)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        metavar="N",
        help="times each prompt is sent per path (default %(default)d)",
    )
    parser.add_argument(
        "--max-tokens",
        type=int,
        default=400,
        metavar="N",
        help="tokens per answer (default %(default)d)",
    )
    parser.add_argument(
        "--keep-running",
        action="store_true",
        help="leave the simulator and the sidecar running afterwards (Ctrl-C stops them), "
        "to look at /metrics or point an SDK at them",
    )


@dataclass(slots=True)
class Result:
    """One streamed answer as the client saw it. Times in seconds, sizes in bytes."""

    text: str
    events: int
    ttft_s: float
    total_s: float
    bytes: int


def stream_once(
    base_url: str, prompt: str, max_tokens: int, headers: dict[str, str] | None = None
) -> Result:
    """Stream one chat completion with the official SDK and measure it on the client side
    (``headers`` are sent with the request)."""
    client = _client(base_url)
    start = time.perf_counter()
    ttft = None
    events = 0
    parts: list[str] = []
    stream = client.chat.completions.create(
        model="sim-fast",
        messages=[{"role": "user", "content": prompt}],
        max_tokens=max_tokens,
        stream=True,
        extra_headers=headers,
    )
    with stream:
        for chunk in stream:
            events += 1
            for choice in chunk.choices:
                if choice.delta.content:
                    if ttft is None:
                        ttft = time.perf_counter() - start
                    parts.append(choice.delta.content)
        size = stream.response.num_bytes_downloaded
    total = time.perf_counter() - start
    return Result("".join(parts), events, ttft if ttft is not None else total, total, size)


_clients: dict[str, openai.OpenAI] = {}


def _client(base_url: str) -> openai.OpenAI:
    """One SDK client per base URL, so connections are kept alive as an app would."""
    import openai

    client = _clients.get(base_url)
    if client is None:
        client = openai.OpenAI(base_url=base_url + "/v1", api_key="demo", max_retries=0)
        _clients[base_url] = client
    return client


@contextmanager
def _process(argv: Sequence[str], name: str) -> Iterator[tuple[str, str | None]]:
    """Run a ``streamhop`` subcommand, yield its URL (and admin URL) once it printed them, stop
    it after."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamhop.sidecar.cli", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        url = _wait_ready(proc, name, timeout_s=30.0)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_ready(
    proc: subprocess.Popen[bytes], name: str, timeout_s: float
) -> tuple[str, str | None]:
    assert proc.stdout is not None
    found: list[tuple[str, str | None]] = []

    def read(stream: IO[bytes]) -> None:
        for line in stream:
            match = _READY.search(line)
            if match:
                admin = match.group(2)
                found.append((match.group(1).decode(), admin.decode() if admin else None))
                return

    reader = threading.Thread(target=read, args=(proc.stdout,), daemon=True)
    reader.start()
    reader.join(timeout_s)
    if not found:
        proc.kill()
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        raise RuntimeError(f"{name} did not start within {timeout_s:g} s:\n{err[-2000:]}")
    return found[0]


def run(args: argparse.Namespace) -> int:
    """Run the demo; returns the exit code."""
    try:
        import openai  # noqa: F401
    except ImportError:
        print(
            "streamhop demo needs the official openai SDK: pip install 'streamhop[demo]'",
            file=sys.stderr,
        )
        return 2
    sim_args = [
        "simulate",
        "--listen",
        "127.0.0.1:0",
        "--tokens-per-second",
        str(args.tokens_per_second),
        "--events-per-second",
        str(args.events_per_second),
        "--ttft-ms",
        str(args.ttft_ms),
    ]
    print(
        f"streamhop demo: a simulated provider at {args.tokens_per_second:g} tokens/s, "
        f"{args.events_per_second:g} SSE events/s, TTFT {args.ttft_ms:g} ms; "
        f"{len(PROMPTS)} prompts x {args.rounds} rounds, direct and through streamhop."
    )
    with _process(sim_args, "streamhop simulate") as (sim_url, _):
        serve_args = [
            "serve",
            "--upstream",
            sim_url,
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--log-level",
            "warning",
        ]
        with _process(serve_args, "streamhop serve") as (proxy_url, admin_url):
            # Warm both paths (TCP connections, imports) so the table compares steady state.
            stream_once(sim_url, "warm up", 8)
            stream_once(proxy_url, "warm up", 8)
            direct: list[Result] = []
            proxied: list[Result] = []
            for _ in range(args.rounds):
                for prompt in PROMPTS:
                    direct.append(stream_once(sim_url, prompt, args.max_tokens))
                    proxied.append(stream_once(proxy_url, prompt, args.max_tokens))
            equal = all(d.text == p.text for d, p in zip(direct, proxied, strict=True))
            sys.stdout.write(_table(direct, proxied, equal))
            if admin_url is not None:
                sys.stdout.write(_own_view(admin_url))
                sys.stdout.write(_burst_view(proxy_url, admin_url, args))
            sys.stdout.flush()
            if args.keep_running:
                _wait_for_interrupt(sim_url, proxy_url, admin_url)
    if not args.keep_running:
        print(
            "The simulator and the sidecar have stopped; `streamhop demo --keep-running` leaves "
            "them running, to look at /metrics or point an SDK at them."
        )
    return 0 if equal else 1


def _sums(admin_url: str) -> dict[tuple[str, str], float]:
    """The sidecar's /metrics samples summed by name and ``direction`` or ``hop`` label."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(admin_url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    sums: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, sample.labels.get("direction") or sample.labels.get("hop") or "")
            sums[key] = sums.get(key, 0.0) + sample.value
    return sums


def _own_view(admin_url: str) -> str:
    """A few figures from the sidecar's own /metrics, to show where they come from (the URL
    is not printed here: without ``--keep-running`` it is gone when the demo exits)."""
    sums = _sums(admin_url)

    def mean_ms(name: str, label: str = "") -> str:
        count = sums.get((name + "_count", label), 0.0)
        return f"{sums.get((name + '_sum', label), 0.0) / count * 1000:.2f} ms" if count else "-"

    overhead = "streamhop_proxy_overhead_seconds"
    up = sums.get(("streamhop_events_total", "upstream"), 0.0)
    down = sums.get(("streamhop_events_total", "downstream"), 0.0)
    return (
        f"The sidecar's own view (scraped from its /metrics): {up:.0f} events in, "
        f"{down:.0f} out; "
        f"mean TTFT {mean_ms('streamhop_time_to_first_token_seconds')} end-to-end, "
        f"{mean_ms('streamhop_upstream_time_to_first_token_seconds')} at the provider; "
        f"time inside streamhop per request {mean_ms(overhead, 'request')}, "
        f"per upstream read {mean_ms(overhead, 'event')}, "
        f"per write {mean_ms(overhead, 'flush')}.\n"
    )


def _burst_view(proxy_url: str, admin_url: str, args: argparse.Namespace) -> str:
    """One stream through a simulated buffering hop, and the bursts the sidecar counted."""
    name = ("streamhop_upstream_bursts_total", "")
    before = _sums(admin_url).get(name, 0.0)
    # Enough of an answer for two holds and a bit: every token rate, every event rate.
    seconds = 2.2 * BUFFER_HOLD_MS / 1000
    rate = args.tokens_per_second if args.tokens_per_second > 0 else args.events_per_second
    tokens = max(1, math.ceil(seconds * rate))
    hop = {"x-sim-buffered-every-ms": str(BUFFER_HOLD_MS)}
    stream_once(proxy_url, PROMPTS[0], tokens, hop)
    # Bursts are counted as the sidecar reads them, before the client has the last byte.
    bursts = _sums(admin_url).get(name, 0.0) - before
    return (
        f"Burst detector: one more stream, from a provider behind a hop that buffers (simulated: "
        f"header x-sim-buffered-every-ms: {BUFFER_HOLD_MS}, events held and released together "
        f"every {BUFFER_HOLD_MS} ms): streamhop counted {bursts:.0f} upstream bursts "
        f"(streamhop_upstream_bursts_total; {before:.0f} for the paced streams above).\n"
    )


def _wait_for_interrupt(sim_url: str, proxy_url: str, admin_url: str | None) -> None:
    print(
        f"Still running: simulator {sim_url}, sidecar {proxy_url}"
        + (f", metrics {admin_url}/metrics" if admin_url else "")
        + ". Ctrl-C stops both."
    )
    with contextlib.suppress(KeyboardInterrupt):
        threading.Event().wait()


def _table(direct: list[Result], proxied: list[Result], equal: bool) -> str:
    def p50(values: list[float]) -> float:
        return statistics.median(values) * 1000

    up_events = sum(r.events for r in direct)
    out_events = sum(r.events for r in proxied)
    ttft_d = p50([r.ttft_s for r in direct])
    ttft_p = p50([r.ttft_s for r in proxied])
    total_d = p50([r.total_s for r in direct])
    total_p = p50([r.total_s for r in proxied])
    chars = sum(len(r.text) for r in direct)
    bytes_d = sum(r.bytes for r in direct)
    bytes_p = sum(r.bytes for r in proxied)
    rows = [
        ("", "direct", "via streamhop", "vs direct"),
        (
            "SSE events received",
            f"{up_events}",
            f"{out_events}",
            f"{out_events / up_events:.0%} as many",
        ),
        (
            "events per answer",
            f"{up_events / len(direct):.0f}",
            f"{out_events / len(proxied):.0f}",
            "",
        ),
        ("TTFT p50 (ms)", f"{ttft_d:.1f}", f"{ttft_p:.1f}", f"{ttft_p - ttft_d:+.1f} ms"),
        (
            "whole answer p50 (ms)",
            f"{total_d:.1f}",
            f"{total_p:.1f}",
            f"{total_p - total_d:+.1f} ms",
        ),
        (
            "bytes received",
            f"{bytes_d}",
            f"{bytes_p}",
            f"{bytes_p / bytes_d:.0%} as many" if bytes_d else "",
        ),
        (
            "final texts equal",
            "",
            "yes" if equal else "NO",
            f"{len(direct)} answers, {chars} chars compared",
        ),
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [
        "  ".join(
            cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(row)
        ).rstrip()
        for row in rows
    ]
    rule = "-" * max(len(line) for line in lines)
    note = (
        "Fewer, larger events: the client and UI do per-event work ~"
        f"{up_events / max(out_events, 1):.1f}x less often, with the same text."
    )
    return "\n".join([rule, lines[0], rule, *lines[1:], rule, note, ""])
