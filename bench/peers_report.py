"""The report of bench/peers.py: figures per (target, scenario), Markdown, JSON, PNG plots.

It owns what it reads: :class:`Scenario` (one load shape) and :class:`Cell` (everything measured
for one target in one scenario). bench/peers.py fills the cells and imports both from here; this
module imports nothing from bench/peers.py.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from bench.peers_targets import Target

ScenarioKind = Literal["stream", "cancel", "json", "sustained"]


@dataclass(frozen=True)
class Scenario:
    """One load shape: ``kind`` is ``stream``, ``cancel``, ``json`` or ``sustained`` (a ladder
    of concurrencies, bench/peers_sustained.py; ``concurrency`` unused).

    ``together``: the streams start in bursts, every request written in one loop pass
    (:func:`peers_client.run_together`) instead of kept in flight; ``tls``: over the HTTPS
    upstream, against each target's TLS twin.
    """

    name: str
    kind: ScenarioKind
    concurrency: int
    together: bool = False
    tls: bool = False


@dataclass
class Cell:
    """Everything measured for one (target, scenario), pooled over rounds."""

    wall_s: float = 0.0
    cpu_s: float = 0.0
    sim_cpu_s: float = 0.0
    client_cpu_s: float = 0.0
    upstream_events: int = 0
    upstream_streams: int = 0
    requests: int = 0
    ok: int = 0
    errors: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    ttft_s: list[float] = field(default_factory=list)
    latency_s: list[float] = field(default_factory=list)
    transit_s: list[float] = field(default_factory=list)
    transit_note: str = ""
    delivered_events: list[int] = field(default_factory=list)
    upstream_events_per_stream: list[int] = field(default_factory=list)
    cancel_s: list[float] = field(default_factory=list)
    cancel_not_propagated: int = 0
    burst_spread_s: list[float] = field(default_factory=list)

    def error(self, why: str) -> None:
        self.errors[why.split(":")[0]] += 1


# One colour per target in every plot.
COLORS = {
    "direct": "black",
    "nginx": "tab:blue",
    "litellm": "tab:orange",
    "portkey": "tab:green",
    "streamhop-coalesce": "tab:red",
    "streamhop-passthrough": "tab:purple",
}
CONCURRENCY_SCENARIOS = (("1 stream", 1), ("50 streams", 50), ("200 streams", 200))


def pct_ms(values: list[float], q: float) -> float:
    """The ``q`` quantile (nearest rank) of ``values`` (seconds), in ms; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def _median(values: list[int]) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return float(ordered[len(ordered) // 2])


def summarize(target: Target, scenario: Scenario, cell: Cell) -> dict[str, Any]:
    """Turn one cell's raw samples into the figures the tables show (ms, µs, counts)."""
    out: dict[str, Any] = {
        "target": target.name,
        "scenario": scenario.name,
        "requests": cell.requests,
        "ok": cell.ok,
        "errors": dict(cell.errors),
        "wall_s": cell.wall_s,
        "proxy_cpu_s": cell.cpu_s if target.pid else None,
        "simulator_cpu_share": cell.sim_cpu_s / cell.wall_s if cell.wall_s else math.nan,
        "client_cpu_share": cell.client_cpu_s / cell.wall_s if cell.wall_s else math.nan,
        "upstream_events": cell.upstream_events,
        "upstream_events_per_s": cell.upstream_events / cell.wall_s if cell.wall_s else math.nan,
    }
    if scenario.kind == "stream":
        out |= {
            "cpu_us_per_event": (
                cell.cpu_s / cell.upstream_events * 1e6
                if target.pid and cell.upstream_events
                else None
            ),
            "ttft_p50_ms": pct_ms(cell.ttft_s, 0.50),
            "ttft_p99_ms": pct_ms(cell.ttft_s, 0.99),
            "transit_p50_ms": pct_ms(cell.transit_s, 0.50) if cell.transit_s else None,
            "transit_p99_ms": pct_ms(cell.transit_s, 0.99) if cell.transit_s else None,
            "transit_samples": len(cell.transit_s),
            "transit_note": cell.transit_note,
            "delivered_events_per_stream": (
                sum(cell.delivered_events) / len(cell.delivered_events)
                if cell.delivered_events
                else math.nan
            ),
            "upstream_events_per_stream": _median(cell.upstream_events_per_stream),
        }
        if cell.burst_spread_s:
            out |= {
                "bursts": len(cell.burst_spread_s),
                "burst_spread_p50_ms": pct_ms(cell.burst_spread_s, 0.50),
                "burst_spread_max_ms": max(cell.burst_spread_s) * 1000,
            }
    elif scenario.kind == "cancel":
        out |= {
            "cancel_p50_ms": pct_ms(cell.cancel_s, 0.50),
            "cancel_p99_ms": pct_ms(cell.cancel_s, 0.99),
            "cancel_trials": cell.ok,
            "cancel_not_propagated": cell.cancel_not_propagated,
        }
    else:
        out |= {
            "cpu_us_per_request": cell.cpu_s / cell.ok * 1e6 if target.pid and cell.ok else None,
            "latency_p50_ms": pct_ms(cell.latency_s, 0.50),
            "latency_p99_ms": pct_ms(cell.latency_s, 0.99),
        }
    return out


def _f(value: float | None, digits: int = 1, sign: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    text = f"{value:+,.{digits}f}" if sign else f"{value:,.{digits}f}"
    return text


def _pair(a: float | None, b: float | None, digits: int = 1, sign: bool = False) -> str:
    if a is None or b is None or math.isnan(a) or math.isnan(b):
        return "—"
    return f"{_f(a, digits, sign)} / {_f(b, digits, sign)}"


def _errors(s: dict[str, Any]) -> str:
    if not s["errors"]:
        return "0"
    return ", ".join(f"{n} {why}" for why, n in sorted(s["errors"].items()))


def _added(s: dict[str, Any], base: dict[str, Any] | None, key: str) -> float | None:
    if base is None or s.get(key) is None or base.get(key) is None:
        return None
    return float(s[key] - base[key])


def summary(
    live: list[Target],
    summaries: dict[tuple[str, str], dict[str, Any]],
    peak_rss: dict[str, float],
    sustained: dict[str, Any] | None = None,
) -> list[str]:
    """One table, a column per target: the figures the issue tracks."""

    def get(name: str, scenario: str, key: str) -> float | None:
        s = summaries.get((name, scenario))
        value = s.get(key) if s else None
        return None if value is None or math.isnan(value) else float(value)

    def added(name: str, scenario: str, key: str) -> float | None:
        mine, base = get(name, scenario, key), get("direct", scenario, key)
        return None if mine is None or base is None else mine - base

    rows: list[tuple[str, Any]] = [
        (
            "proxy CPU per upstream event, 1 stream (µs)",
            lambda n: _f(get(n, "1 stream", "cpu_us_per_event")),
        ),
        (
            "proxy CPU per upstream event, 50 streams (µs)",
            lambda n: _f(get(n, "50 streams", "cpu_us_per_event")),
        ),
        (
            "proxy CPU per upstream event, 200 streams (µs)",
            lambda n: _f(get(n, "200 streams", "cpu_us_per_event")),
        ),
        (
            "TTFT added p50 / p99, 50 streams (ms)",
            lambda n: _pair(
                added(n, "50 streams", "ttft_p50_ms"),
                added(n, "50 streams", "ttft_p99_ms"),
                1,
                True,
            ),
        ),
        (
            "TTFT added p50 / p99, 200 streams (ms)",
            lambda n: _pair(
                added(n, "200 streams", "ttft_p50_ms"),
                added(n, "200 streams", "ttft_p99_ms"),
                1,
                True,
            ),
        ),
        (
            "transit added p50 / p99, 50 streams (ms)",
            lambda n: _pair(
                added(n, "50 streams", "transit_p50_ms"),
                added(n, "50 streams", "transit_p99_ms"),
                1,
                True,
            ),
        ),
        (
            "events per stream delivered, 50 streams",
            lambda n: _f(get(n, "50 streams", "delivered_events_per_stream"), 0),
        ),
        ("cancel latency p50 / p99 (ms)", lambda n: _cancel_cell(summaries.get((n, "cancel")))),
        (
            "non-streaming: CPU per request (µs)",
            lambda n: _f(get(n, "non-streaming", "cpu_us_per_request"), 0),
        ),
        (
            "non-streaming: latency added p50 (ms)",
            lambda n: _f(added(n, "non-streaming", "latency_p50_ms"), 1, True),
        ),
        ("peak RSS (MiB)", lambda n: _f(peak_rss.get(n))),
    ]
    rows += _extra_rows(summaries, get, added)
    if sustained:
        rows.append(
            ("streams sustained per core (N / 1 core)", lambda n: _sustained_cell(sustained, n))
        )
    others = [t.name for t in live if t.name != "direct"]
    lines = [
        "",
        "## Summary",
        "",
        "| | " + " | ".join(others) + " |",
        "| --- |" + " ---: |" * len(others),
    ]
    for label, cell in rows:
        cells = [cell(n) for n in others]
        if all(c == "—" for c in cells):
            continue  # a scenario that did not run
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def _extra_rows(
    summaries: dict[tuple[str, str], dict[str, Any]], get: Any, added: Any
) -> list[tuple[str, Any]]:
    """Summary rows of the scenarios run only when named (N together, TLS), if they ran.

    CPU cells carry the ratio to nginx and, over TLS, to the same scenario on plain HTTP.
    """
    ran = list(dict.fromkeys(name for (_, name) in summaries))
    rows: list[tuple[str, Any]] = []
    for scenario in ran:
        if not (scenario.endswith(" together") or scenario.endswith(", TLS")):
            continue
        plain = scenario.removesuffix(", TLS") if scenario.endswith(", TLS") else None

        def cpu(n: str, sc: str = scenario, plain: str | None = plain) -> str:
            mine = get(n, sc, "cpu_us_per_event")
            text = _f(mine)
            ratios = []
            ref = get("nginx", sc, "cpu_us_per_event")
            if mine is not None and ref and n != "nginx":
                ratios.append(f"{mine / ref:.1f}\u00d7 nginx")
            base = get(n, plain, "cpu_us_per_event") if plain else None
            if mine is not None and base:
                ratios.append(f"{mine / base:.2f}\u00d7 plain")
            return text + (f" ({', '.join(ratios)})" if ratios else "")

        def ttft(n: str, sc: str = scenario) -> str:
            return _pair(added(n, sc, "ttft_p50_ms"), added(n, sc, "ttft_p99_ms"), 1, True)

        rows += [
            (f"proxy CPU per upstream event, {scenario} (µs)", cpu),
            (f"TTFT added p50 / p99, {scenario} (ms)", ttft),
        ]
        if scenario.endswith("together"):

            def vs_nginx(n: str, sc: str = scenario) -> str:
                mine, ref = added(n, sc, "ttft_p50_ms"), added("nginx", sc, "ttft_p50_ms")
                return "—" if mine is None or ref is None else _f(mine - ref, 1, True)

            rows.append((f"TTFT added p50 minus nginx's, {scenario} (ms)", vs_nginx))
    return rows


def _sustained_n(s: dict[str, Any], key: str = "streams_sustained") -> str:
    """Streams sustained (or per core): "≥ N" when the top rung passed, "< lowest failing rung"
    when none passed."""
    value = s[key]
    text = f"{value:,.0f}" if float(value).is_integer() else f"{value:,.1f}"
    if s["capped"]:
        return f"\u2265 {text}"
    if not value:
        return f"< {s['first_failure'] / s['cores_divisor']:,.0f}"
    return text


def _sustained_ratio(sustained: dict[str, Any], name: str) -> str | None:
    """Per core, ``name``'s over nginx's (same divisor); "≥"/"≤" when a side hit the top."""
    mine, ref = sustained.get(name), sustained.get("nginx")
    if mine is None or ref is None or name in ("direct", "nginx") or not ref["per_core"]:
        return None
    if not mine["per_core"]:
        return "—"
    ratio = mine["per_core"] / ref["per_core"]
    bound = "\u2265 " if mine["capped"] and not ref["capped"] else ""
    bound = "\u2264 " if ref["capped"] and not mine["capped"] else bound
    both = " (both reached the top rung)" if mine["capped"] and ref["capped"] else ""
    return f"{bound}{ratio:.2f}\u00d7 nginx{both}"


def _sustained_cell(sustained: dict[str, Any], name: str) -> str:
    """Streams sustained per core, with the ratio to nginx's (same divisor)."""
    mine = sustained.get(name)
    if mine is None:
        return "—"
    ratio = _sustained_ratio(sustained, name)
    return _sustained_n(mine, "per_core") + (f" ({ratio})" if ratio else "")


def sustained_section(
    meta: dict[str, Any], live: list[Target], sustained: dict[str, Any]
) -> list[str]:
    """The ``streams sustained`` verdict per target, and every rung it ran."""
    m = meta["sustained"]
    direct = sustained.get("direct")
    lines = [
        "",
        "## streams sustained",
        "",
        f"The highest N of concurrent streams at which fewer than 0.1 % of streams failed, every "
        f"other stream delivered the whole answer ({m['expected_content_chars']:,} characters of "
        f"content; {m['expected_events']} events, counted for targets that forward events one for "
        f"one) and none stalled: no gap over {m['stall_ms']:g} ms (10\u00d7 the upstream's pacing) "
        f"between two reads after the first content, no wait for the first content over the "
        f"TTFT + {m['stall_ms']:g} ms. Ladder from {m['start']} doubling to {m['max']}, "
        f"{m['seconds']:g} s per rung, stopped at a target's first failure, then "
        f"{m['refine']} bisection rung(s). Per core = N / 1: each target runs one worker process "
        f"with one event-loop thread, so it can use at most one of the machine's cores; the "
        f"simulator and the bench client share the machine. `direct` (no proxy) is the ceiling "
        f"of the harness itself.",
        *(["", f"WARNING: {m['fd_warning']}"] if m.get("fd_warning") else []),
        "",
        "| target | streams sustained | per core | vs nginx | lowest failing rung: why | "
        "target CPU at N (cores) | gap p99 / max at N (ms) | TTFT p99 at N (ms) |",
        "| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: |",
    ]
    for t in live:
        s = sustained.get(t.name)
        if s is None:
            continue
        best = next(
            (r for r in s["rungs"] if r["passed"] and r["streams"] == s["streams_sustained"]), None
        )
        fail = next(
            (r for r in s["rungs"] if not r["passed"] and r["streams"] == s["first_failure"]), None
        )
        note = ""
        if t.name != "direct" and direct and s["streams_sustained"] >= direct["streams_sustained"]:
            note = " (= the harness ceiling)"
        lines.append(
            "| {} | {}{} | {} | {} | {} | {} | {} | {} |".format(
                t.name,
                _sustained_n(s),
                note,
                "—" if t.name == "direct" else _sustained_n(s, "per_core"),
                _sustained_ratio(sustained, t.name) or "—",
                f"{fail['streams']:,}: {'; '.join(fail['why'])}" if fail else "none",
                _f(best["proxy_cores"], 2) if best else "—",
                _pair(best["gap_p99_ms"], best["gap_max_ms"]) if best else "—",
                _f(best["ttft_p99_ms"]) if best else "—",
            )
        )
    lines += [
        "",
        "Every rung, in the order run (shares: of one core, over the rung with its ramp-up and "
        "drain):",
        "",
        "| target | N | streams | failed | incomplete | stalled | slow start "
        "| gap p50 / p99 / max (ms) | TTFT p50 / p99 (ms) | target CPU (cores) "
        "| µs per upstream event | simulator / client | upstream events/s | verdict |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
        "| ---: | --- |",
    ]
    for t in live:
        s = sustained.get(t.name)
        if s is None:
            continue
        for r in s["rungs"]:
            failed = str(r["failed"])
            if r["errors"]:
                failed += (
                    " (" + ", ".join(f"{n} {why}" for why, n in sorted(r["errors"].items())) + ")"
                )
            lines.append(
                "| {} | {:,} | {:,} | {} | {} | {} | {} | {} / {} / {} | {} | {} | {} "
                "| {:.0%} / {:.0%} | {} | {} |".format(
                    t.name,
                    r["streams"],
                    r["requests"],
                    failed,
                    r["incomplete"],
                    r["stalled"],
                    r["slow_start"],
                    _f(r["gap_p50_ms"]),
                    _f(r["gap_p99_ms"]),
                    _f(r["gap_max_ms"]),
                    _pair(r["ttft_p50_ms"], r["ttft_p99_ms"]),
                    _f(r["proxy_cores"], 2),
                    _f(r["cpu_us_per_event"]),
                    r["simulator_share"],
                    r["client_share"],
                    _f(r["upstream_events_per_s"], 0),
                    "pass" if r["passed"] else "FAIL: " + "; ".join(r["why"]),
                )
            )
    cut = sum(
        r["upstream_cut"] + r["upstream_short"] for s in sustained.values() for r in s["rungs"]
    )
    lines += [
        "",
        f"Upstream streams the simulator ended early (client closed) or short, over all rungs: "
        f"{cut}.",
    ]
    return lines


def _cancel_cell(s: dict[str, Any] | None) -> str:
    if s is None:
        return "—"
    text = _pair(s["cancel_p50_ms"], s["cancel_p99_ms"], 1)
    if s["cancel_not_propagated"]:
        text += f" ({s['cancel_not_propagated']} of {s['cancel_trials']} never closed upstream)"
    return text


def tables(
    meta: dict[str, Any],
    targets: list[Target],
    summaries: dict[tuple[str, str], dict[str, Any]],
    peak_rss: dict[str, float],
    sustained: dict[str, Any] | None = None,
) -> str:
    """The Markdown report."""
    live = [t for t in targets if not t.missing]
    lines = [
        "# streamhop and its peers",
        "",
        f"- date: {meta['started']} (UTC); whole run {meta['duration_total_s'] / 60:.1f} min",
        f"- machine: {meta['cpu_model']}, {meta['cores']} cores; Python {meta['python']}",
        "- load average (1/5/15 min) before: {:.2f} {:.2f} {:.2f}; after: {:.2f} {:.2f} "
        "{:.2f}".format(*meta["load_before"], *meta["load_after"]),
        f"- upstream: {meta['upstream']}",
        f"- {meta['duration_s']:g} s per scenario per target, "
        f"in {meta['rounds']} interleaved rounds",
        f"- streamhop code: {meta['streamhop_tree']}",
        f"- command: `{meta['command']}`",
        "",
        "Targets:",
        "",
    ]
    for t in targets:
        lines.append(f"- `{t.name}`: " + (f"MISSING — {t.missing}" if t.missing else t.label))
    if meta.get("tls"):
        lines += ["", "TLS upstream (the `, TLS` scenarios):", ""]
        lines += [f"- {note}" for note in meta["tls"]]
    lines += summary(live, summaries, peak_rss, sustained)
    if sustained:
        lines += sustained_section(meta, live, sustained)
    streamed = list(
        dict.fromkeys(name for (_, name), s in summaries.items() if "cpu_us_per_event" in s)
    )
    for scenario in streamed:
        if not any((t.name, scenario) in summaries for t in live):
            continue
        base = summaries.get(("direct", scenario))
        spreads = [
            f"`{t.name}` {s['bursts']} bursts, p50 {s['burst_spread_p50_ms']:.2f} / max "
            f"{s['burst_spread_max_ms']:.2f} ms"
            for t in live
            if (s := summaries.get((t.name, scenario))) and "bursts" in s
        ]
        lines += [
            "",
            f"## {scenario}",
            "",
            *(
                [
                    "Time from the first to the last request written in a burst: "
                    + "; ".join(spreads)
                    + ".",
                    "",
                ]
                if spreads
                else []
            ),
            "| target | proxy CPU per upstream event (µs) | TTFT p50 / p99 (ms) "
            "| TTFT added p50 / p99 (ms) | transit added p50 / p99 (ms) "
            "| events per stream, delivered (upstream) | upstream events/s | errors |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        for t in live:
            s = summaries.get((t.name, scenario))
            if s is None:
                continue
            is_base = t.name == "direct"
            transit = "—"
            if not is_base and t.passthrough_like:
                transit = _pair(
                    _added(s, base, "transit_p50_ms"), _added(s, base, "transit_p99_ms"), 1, True
                )
                if transit == "—" and s["transit_note"]:
                    transit = f"— ({s['transit_note']})"
            elif is_base:
                transit = "(baseline {})".format(_pair(s["transit_p50_ms"], s["transit_p99_ms"], 2))
            lines.append(
                "| {} | {} | {} | {} | {} | {} ({}) | {} | {} |".format(
                    t.name,
                    _f(s["cpu_us_per_event"]),
                    _pair(s["ttft_p50_ms"], s["ttft_p99_ms"]),
                    "(baseline)"
                    if is_base
                    else _pair(
                        _added(s, base, "ttft_p50_ms"), _added(s, base, "ttft_p99_ms"), 1, True
                    ),
                    transit,
                    _f(s["delivered_events_per_stream"], 0),
                    _f(s["upstream_events_per_stream"], 0),
                    _f(s["upstream_events_per_s"], 0),
                    _errors(s),
                )
            )
    if any((t.name, "cancel") in summaries for t in live):
        lines += [
            "",
            "## cancel",
            "",
            "Client closes after two content events; time until the simulator sees its upstream "
            "connection close (direct: the simulator's own floor).",
            "",
            "| target | trials | cancel latency p50 / p99 (ms) "
            "| closes that never reached the upstream | errors |",
            "| --- | ---: | ---: | ---: | --- |",
        ]
        for t in live:
            s = summaries.get((t.name, "cancel"))
            if s is None:
                continue
            lines.append(
                f"| {t.name} | {s['cancel_trials']} "
                f"| {_pair(s['cancel_p50_ms'], s['cancel_p99_ms'], 2)} "
                f"| {s['cancel_not_propagated']} | {_errors(s)} |"
            )
    if any((t.name, "non-streaming") in summaries for t in live):
        base = summaries.get(("direct", "non-streaming"))
        lines += [
            "",
            "## non-streaming",
            "",
            "| target | proxy CPU per request (µs) | latency p50 / p99 (ms) "
            "| added p50 / p99 (ms) | requests | errors |",
            "| --- | ---: | ---: | ---: | ---: | --- |",
        ]
        for t in live:
            s = summaries.get((t.name, "non-streaming"))
            if s is None:
                continue
            added = (
                "(baseline)"
                if t.name == "direct"
                else _pair(
                    _added(s, base, "latency_p50_ms"), _added(s, base, "latency_p99_ms"), 1, True
                )
            )
            lines.append(
                f"| {t.name} | {_f(s['cpu_us_per_request'], 0)} | "
                f"{_pair(s['latency_p50_ms'], s['latency_p99_ms'])} | {added} | {s['ok']} "
                f"| {_errors(s)} |"
            )
    lines += [
        "",
        "## peak RSS (process tree, sum of VmHWM)",
        "",
        "| target | MiB |",
        "| --- | ---: |",
    ]
    for name, mib in peak_rss.items():
        lines.append(f"| {name} | {_f(mib)} |")
    if not summaries:
        return "\n".join(lines) + "\n"
    lines += [
        "",
        "## machine share per slice (of one core; 2 cores = 200 %)",
        "",
        "| target | scenario | simulator | client |",
        "| --- | --- | ---: | ---: |",
    ]
    for (name, scenario), s in summaries.items():
        lines.append(
            f"| {name} | {scenario} | {s['simulator_cpu_share']:.0%} "
            f"| {s['client_cpu_share']:.0%} |"
        )
    return "\n".join(lines) + "\n"


def plots(
    out: Path, targets: list[Target], summaries: dict[tuple[str, str], dict[str, Any]]
) -> list[Path]:
    """CPU per event and TTFT p99 vs concurrency, one line per target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    live = [t for t in targets if not t.missing]
    made = []
    for key, fname, title, ylabel, with_direct in (
        (
            "cpu_us_per_event",
            "peers-cpu-per-event.png",
            "Proxy CPU per upstream event",
            "µs of CPU per event (log)",
            False,
        ),
        ("ttft_p99_ms", "peers-ttft-p99.png", "Time to first token, p99", "ms (log)", True),
    ):
        fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
        drawn = 0
        for t in live:
            if t.name == "direct" and not with_direct:
                continue
            xs, ys = [], []
            for scenario, conc in CONCURRENCY_SCENARIOS:
                s = summaries.get((t.name, scenario))
                value = s.get(key) if s else None
                if value is not None and not math.isnan(value) and value > 0:
                    xs.append(conc)
                    ys.append(value)
            if xs:
                style = "--" if t.name == "direct" else "-"
                ax.plot(xs, ys, style, marker="o", label=t.name, color=COLORS.get(t.name))
                drawn += 1
        if not drawn:  # none of the 1/50/200-stream scenarios ran
            plt.close(fig)
            continue
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks([1, 50, 200], ["1", "50", "200"])
        ax.set_xlabel("concurrent streams")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out / fname
        fig.savefig(path)
        plt.close(fig)
        made.append(path)
    return made


def write_outputs(
    out: Path,
    meta: dict[str, Any],
    targets: list[Target],
    scenarios: list[Scenario],
    cells: dict[tuple[str, str], Cell],
    peak_rss: dict[str, float],
    sustained: dict[str, Any] | None = None,
) -> list[Path]:
    """Write report.md, results.json and the plots into ``out``; return their paths.

    ``sustained``: per target, the ``streams sustained`` climb (bench/peers_sustained.py).
    """
    out.mkdir(parents=True, exist_ok=True)
    summaries = {
        (t.name, sc.name): summarize(t, sc, cells[t.name, sc.name])
        for t in targets
        if not t.missing
        for sc in scenarios
        if (t.name, sc.name) in cells
    }
    report = out / "report.md"
    report.write_text(tables(meta, targets, summaries, peak_rss, sustained))
    results = out / "results.json"
    results.write_text(
        json.dumps(
            {
                "meta": meta,
                "targets": [
                    {"name": t.name, "label": t.label, "missing": t.missing} for t in targets
                ],
                "results": list(summaries.values()),
                "peak_rss_mib": peak_rss,
                "sustained": sustained,
            },
            indent=2,
        )
    )
    return [report, results, *plots(out, targets, summaries)]
