"""Where did the time go: plot streamhop's own histograms after a real run.

Starts ``streamhop simulate`` and ``streamhop serve`` in front of it on loopback, sends
``--streams`` streaming chat requests (default 100) at ``--concurrency`` (default 8) with a
provider TTFT that varies per request (seeded, log-uniform in 40-400 ms), scrapes the sidecar's
``/metrics`` once at the end and draws, from the histogram bucket counts alone (what Prometheus
would store):

* left: time to first token, provider (``streamhop_upstream_time_to_first_token_seconds``) vs
  end-to-end (``streamhop_time_to_first_token_seconds``), share of streams per bucket;
* right: streamhop's overhead per hop (``streamhop_proxy_overhead_seconds{hop}``), share of
  observations per bucket: three orders of magnitude below the TTFT.

The picture is ``docs/img/time-breakdown.png`` in ``docs/observability.md``.

Usage: python -m bench.plot_metrics [--streams 100] [--concurrency 8] [--out PATH]
Needs the ``bench`` extra (matplotlib).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from matplotlib.axes import Axes
from matplotlib.figure import Figure  # the object API: no pyplot state, no GUI backend
from prometheus_client.parser import text_string_to_metric_families

from bench.processes import start_sidecar, start_streamhop

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "Where does the time go?"
E2E = "streamhop_time_to_first_token_seconds"
PROVIDER = "streamhop_upstream_time_to_first_token_seconds"
OVERHEAD = "streamhop_proxy_overhead_seconds"


def provider_ttfts_ms(count: int, seed: int = 7) -> list[int]:
    """Per-request provider TTFTs in ms: log-uniform in [40, 400], seeded (same run each time)."""
    rng = random.Random(seed)
    return [round(40 * 10 ** rng.random()) for _ in range(count)]


async def send_streams(url: str, ttfts_ms: Sequence[int], concurrency: int) -> int:
    """Send one streaming chat request per TTFT, ``concurrency`` at a time; read each to the end.

    Returns:
        How many completed with status 200.
    """
    body = {
        "model": "sim",
        "stream": True,
        "max_tokens": 200,
        "messages": [{"role": "user", "content": PROMPT}],
    }
    gate = asyncio.Semaphore(concurrency)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def one(ttft_ms: int) -> bool:
            async with gate:
                headers = {"x-sim-ttft-ms": str(ttft_ms)}
                async with session.post(
                    url + "/v1/chat/completions", json=body, headers=headers
                ) as response:
                    async for _ in response.content.iter_any():
                        pass
                    return response.status == 200

        results = await asyncio.gather(*(one(t) for t in ttfts_ms))
    return sum(results)


@dataclass(frozen=True)
class Histogram:
    """One histogram series as Prometheus stores it: cumulative bucket counts and the sum."""

    bounds: tuple[float, ...]
    """Upper bounds in seconds, ascending, ``inf`` last."""
    cumulative: tuple[float, ...]
    total: float
    """Sum of the observations, in seconds."""

    @property
    def count(self) -> float:
        return self.cumulative[-1]

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else float("nan")

    def shares(self) -> list[float]:
        """Share of observations in each bucket (non-cumulative), summing to 1."""
        previous = 0.0
        out = []
        for value in self.cumulative:
            out.append((value - previous) / self.count if self.count else 0.0)
            previous = value
        return out


def scrape_histograms(admin: str, name: str, by: str | None = None) -> dict[str, Histogram]:
    """Histogram ``name`` from ``/metrics``, summed over every label but ``by``.

    Returns:
        ``by``'s value (``""`` when ``by`` is ``None``) -> the histogram.
    """
    text = urllib.request.urlopen(admin + "/metrics", timeout=10).read().decode()
    buckets: dict[str, dict[float, float]] = {}
    sums: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name != name:
            continue
        for sample in family.samples:
            key = sample.labels.get(by, "") if by else ""
            if sample.name == name + "_bucket":
                per = buckets.setdefault(key, {})
                bound = float(sample.labels["le"])
                per[bound] = per.get(bound, 0.0) + sample.value
            elif sample.name == name + "_sum":
                sums[key] = sums.get(key, 0.0) + sample.value
    return {
        key: Histogram(tuple(sorted(per)), tuple(per[b] for b in sorted(per)), sums.get(key, 0.0))
        for key, per in buckets.items()
    }


def _label(bound: float, scale: float) -> str:
    return "+Inf" if bound == float("inf") else f"{bound * scale:g}"


def plot_grouped(
    ax: Axes,
    series: Mapping[str, Histogram],
    colors: Sequence[str],
    scale: float,
    unit: str,
    note: str | None = None,
) -> None:
    """Grouped bars of each series' bucket shares, over the buckets any series uses (±1).

    ``scale`` turns seconds into ``unit``; ``note`` becomes the legend's title.
    """
    bounds = next(iter(series.values())).bounds
    shares = [h.shares() for h in series.values()]
    used = [i for i in range(len(bounds)) if any(s[i] > 0 for s in shares)] or [0]
    lo, hi = max(used[0] - 1, 0), min(used[-1] + 1, len(bounds) - 1)
    positions = range(lo, hi + 1)
    width = 0.8 / len(series)
    for k, ((name, hist), color) in enumerate(zip(series.items(), colors, strict=False)):
        ax.bar(
            [p - lo + (k - (len(series) - 1) / 2) * width for p in positions],
            [shares[k][p] * 100 for p in positions],
            width,
            color=color,
            label=f"{name}  (n={hist.count:.0f}, mean {hist.mean * scale:.3g} {unit})",
        )
    ax.set_xticks(range(hi - lo + 1))
    ax.set_xticklabels([_label(bounds[p], scale) for p in positions], rotation=45)
    ax.set_xlabel(f"bucket upper bound (le), {unit}")
    ax.set_ylabel("share of observations, %")
    ax.grid(axis="y", alpha=0.3)
    # Headroom above the tallest bar for the legend.
    ax.set_ylim(0, max(max(s) for s in shares) * 100 * 1.35)
    ax.legend(fontsize=8, title=note, title_fontsize=8, loc="upper right", frameon=False)


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.plot_metrics", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--out", type=Path, default=ROOT / "docs/img/time-breakdown.png")
    args = parser.parse_args()

    sim = start_streamhop(["simulate", "--listen", "127.0.0.1:0"], name="simulator")
    assert sim.url is not None
    sim_url = sim.url
    try:
        side = start_sidecar(sim_url)
        side_url, admin = side.url, side.admin_url
        assert side_url is not None and admin is not None
        try:
            ttfts = provider_ttfts_ms(args.streams)
            ok = asyncio.run(send_streams(side_url, ttfts, args.concurrency))
            time.sleep(0.2)  # the last stream's metrics are recorded just after its last byte
            ttft = {
                "provider": scrape_histograms(admin, PROVIDER)[""],
                "end-to-end": scrape_histograms(admin, E2E)[""],
            }
            hops = scrape_histograms(admin, OVERHEAD, by="hop")
        finally:
            side.stop()
    finally:
        sim.stop()

    print(f"{ok}/{args.streams} streams ok, concurrency {args.concurrency}")
    for name, hist in ttft.items():
        print(f"TTFT {name:<11} n={hist.count:.0f} mean {hist.mean * 1e3:8.3f} ms")
    for hop in ("request", "event", "flush"):
        hist = hops[hop]
        print(f"overhead {hop:<8} n={hist.count:.0f} mean {hist.mean * 1e6:8.1f} us")

    fig = Figure(figsize=(12, 4.4), layout="constrained")
    left, right = fig.subplots(1, 2)
    added_ms = (ttft["end-to-end"].mean - ttft["provider"].mean) * 1e3
    note = f"end-to-end minus provider, mean: {added_ms:+.2f} ms"
    plot_grouped(left, ttft, ("#9aa5b1", "#1f77b4"), 1e3, "ms", note)
    left.set_title("Time to first token: provider vs end-to-end")
    plot_grouped(
        right,
        {f"{hop}": hops[hop] for hop in ("request", "event", "flush")},
        ("#ff7f0e", "#2ca02c", "#d62728"),
        1e6,
        "µs",
    )
    right.set_title("Time inside streamhop, per hop")
    fig.suptitle(
        f"streamhop /metrics after {ok} streams through the sidecar (simulated provider, loopback)",
        fontsize=11,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=100)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
