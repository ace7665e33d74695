"""The facts docs/observability.md and the README repeat from the code must match the code.

Until the tables are generated from the code (issue 24, "The cause, and the fix"), these tests
are what keeps them honest: each builds the fact from the code itself — the metric families a
``Metrics`` registers, ``CANCEL_REASONS`` and the places that produce each reason, the keys
``log_stream`` writes, the flags ``--help`` lists — and fails naming what the docs lack or
still claim.
"""

from __future__ import annotations

import ast
import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

from streamhop.middleware.observe.metrics import (
    CANCEL_REASONS,
    UPSTREAM_ERROR_KINDS,
    WEBSOCKET_REFUSED_REASONS,
    Metrics,
)
from streamhop.sidecar.observe.follow_metrics import FollowerMetrics
from streamhop.sidecar.observe.record import StreamRecord
from streamhop.sidecar.recording.metrics import RECORDING_RESULTS, RecordingMetrics
from streamhop.sidecar.resume.memory import EVICTION_REASONS
from streamhop.sidecar.supervise.metrics import WorkerMetrics

ROOT = Path(__file__).resolve().parent.parent
OBSERVABILITY = ROOT / "docs" / "observability.md"
README = ROOT / "README.md"
CODE_DIRS = (ROOT / "sidecar", ROOT / "middleware")
METRICS_MODULE = ROOT / "middleware" / "observe" / "metrics.py"
SIDECAR_METRICS_MODULES = (
    ROOT / "sidecar" / "observe" / "follow_metrics.py",
    ROOT / "sidecar" / "recording" / "metrics.py",
    ROOT / "sidecar" / "supervise" / "metrics.py",
)
"""The sidecar's own families (:class:`FollowerMetrics`, :class:`RecordingMetrics`,
:class:`WorkerMetrics`), read by :func:`_registered` too."""
GAUGE_CLASS_MODULE = ROOT / "middleware" / "observe" / "sampled.py"
"""Defines a ``Gauge`` subclass (:class:`SampledGauge`); its families are built in the modules
above."""
PROMETHEUS_TYPES = frozenset({"Counter", "Gauge", "Histogram", "Summary", "Info", "Enum"})
CANCEL_CALLS = frozenset(
    {"mark_cancel", "stop", "cancelled", "_stop", "_end_current", "_cancel_current"}
)
"""Calls whose string arguments are cancel reasons (the record's, a driver's, a session's,
the middleware responder's)."""


def _doc() -> str:
    return OBSERVABILITY.read_text(encoding="utf-8")


def _section(text: str, start: str, end: str) -> str:
    """The text from the first line starting with ``start`` to the next starting with ``end``."""
    begin = text.index(start)
    stop = text.find(end, begin + len(start))
    return text[begin : stop if stop != -1 else len(text)]


def _table_rows(text: str) -> list[list[str]]:
    """The cells of every Markdown table row in ``text``, without header and rule rows."""
    rows = []
    for line in text.splitlines():
        if not line.startswith("|") or set(line) <= set("|- "):
            continue
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def _ticked(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def _code_files() -> list[Path]:
    return sorted(p for d in CODE_DIRS for p in d.rglob("*.py"))


def _registered() -> dict[str, tuple[str, tuple[str, ...]]]:
    """Every family streamhop registers: exposed name -> (type, label names)."""
    registry = CollectorRegistry()
    Metrics(registry)
    FollowerMetrics(registry)
    RecordingMetrics(registry, lambda: 0.0)
    WorkerMetrics(registry)
    families: dict[str, tuple[str, tuple[str, ...]]] = {}
    # prometheus_client keeps a family's type and label names only as attributes of its
    # collector (the exposition shows label names for families with children alone), and the
    # registry's collectors only in a private mapping; Metrics may be mypyc-compiled, without
    # a __dict__ to read them from.
    for collector in list(registry._collector_to_names):
        assert isinstance(collector, MetricWrapperBase), collector
        kind: str = collector._type
        name: str = collector._name
        exposed = name + "_total" if kind == "counter" else name
        families[exposed] = (kind, tuple(collector._labelnames))
    collected = {f.name + "_total" if f.type == "counter" else f.name for f in registry.collect()}
    assert collected == set(families), collected ^ set(families)
    return families


def test_metrics_table_lists_every_family_with_its_type_and_labels() -> None:
    table = _section(_doc(), "| name | type | labels |", "\n\n")
    documented: dict[str, tuple[str, tuple[str, ...]]] = {}
    for cells in _table_rows(table)[1:]:
        (name,) = _ticked(cells[0])
        documented[name] = (cells[1], tuple(_ticked(cells[2])))
    registered = _registered()
    missing = sorted(set(registered) - set(documented))
    assert not missing, f"docs/observability.md's metrics table lacks {missing}"
    gone = sorted(set(documented) - set(registered))
    assert not gone, f"docs/observability.md documents metrics streamhop does not have: {gone}"
    wrong = {
        n: (documented[n], registered[n]) for n in registered if documented[n] != registered[n]
    }
    assert not wrong, f"(type, labels) documented vs registered: {wrong}"


def test_every_metric_is_described() -> None:
    doc = _doc()
    for name in _registered():
        assert f"**`{name}" in doc, f"docs/observability.md has no paragraph on {name}"


def test_no_family_is_registered_outside_the_metrics_module() -> None:
    """The test above reads the families of ``Metrics``: one built anywhere else would escape
    it (and the docs)."""
    offenders = []
    for path in _code_files():
        if path in (METRICS_MODULE, GAUGE_CLASS_MODULE) or path in SIDECAR_METRICS_MODULES:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                "prometheus_client"
            ):
                names = {a.name for a in node.names} & PROMETHEUS_TYPES
                if names:
                    offenders.append(f"{path.relative_to(ROOT)}: {sorted(names)}")
            elif (
                isinstance(node, ast.Attribute)
                and node.attr in PROMETHEUS_TYPES
                and isinstance(node.value, ast.Name)
                and node.value.id == "prometheus_client"
            ):
                offenders.append(f"{path.relative_to(ROOT)}: prometheus_client.{node.attr}")
    assert not offenders, (
        "metric families built outside middleware/observe/metrics.py; add them to Metrics (and "
        f"docs/observability.md) or teach this test to find them: {offenders}"
    )


def _cancel_table() -> dict[str, str]:
    table = _section(_doc(), "| `reason` | when | produced by |", "\n\n")
    return {_ticked(cells[0])[0]: cells[2] for cells in _table_rows(table)[1:]}


def _produced_reasons() -> set[str]:
    """String constants passed to a cancel call, or assigned to a name ``reason``, anywhere in
    the sidecar or the middleware."""
    found: set[str] = set()

    def strings(node: ast.AST) -> None:
        for sub in ast.walk(node):
            if isinstance(sub, ast.Constant) and isinstance(sub.value, str):
                found.add(sub.value)

    for path in _code_files():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Call):
                func = node.func
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                if name in CANCEL_CALLS and node.args:
                    strings(node.args[0])
            elif isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "reason" for t in node.targets
            ):
                strings(node.value)
    return found


def test_cancel_reason_table_matches_the_code() -> None:
    table = _cancel_table()
    assert sorted(table) == sorted(CANCEL_REASONS), (
        "docs/observability.md's cancel-reason table vs CANCEL_REASONS",
        sorted(table),
        sorted(CANCEL_REASONS),
    )
    for reason, produced_by in table.items():
        assert produced_by and produced_by != "—", f"{reason}: the table says nothing produces it"
    unproduced = sorted(set(CANCEL_REASONS) - _produced_reasons())
    assert not unproduced, f"reasons in CANCEL_REASONS that no code produces: {unproduced}"
    doc = _doc()
    assert "not produced yet" not in doc and "reserved" not in doc


def test_label_values_are_documented() -> None:
    """Every ``kind``/``reason`` value the code starts a series for is named in its paragraph."""
    doc = _doc()

    def paragraph(name: str) -> str:
        return _section(doc, f"**`{name}", "\n\n")

    for kind in UPSTREAM_ERROR_KINDS:
        assert f"`{kind}`" in paragraph("streamhop_upstream_errors_total"), kind
    for reason in EVICTION_REASONS:
        assert f"`{reason}`" in paragraph("streamhop_resume_evictions_total"), reason
    for reason in WEBSOCKET_REFUSED_REASONS:
        assert f'reason="{reason}"' in paragraph("streamhop_websocket_refused_total"), reason
    for result in RECORDING_RESULTS:
        assert f"`{result}`" in paragraph("streamhop_recordings_total"), result
    for kind in _resume_error_kinds():
        assert f"`{kind}`" in paragraph("streamhop_resume_errors_total"), kind
    log_row = next(r for r in _table_rows(doc) if r[0] == "`cancel_reason`")
    assert set(CANCEL_REASONS) <= set(_ticked(log_row[1])), log_row


def _resume_error_kinds() -> list[str]:
    """The kinds sidecar/app.py starts ``streamhop_resume_errors_total`` series for (a literal
    tuple in its ``for kind in (...)`` loop)."""
    tree = ast.parse((ROOT / "sidecar" / "app.py").read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.For)
            and isinstance(node.target, ast.Name)
            and node.target.id == "kind"
            and isinstance(node.iter, ast.Tuple)
        ):
            return [e.value for e in node.iter.elts if isinstance(e, ast.Constant)]
    pytest.fail("sidecar/app.py no longer lists the resume error kinds in a literal tuple")


def _logged_keys(caplog: pytest.LogCaptureFixture) -> list[str]:
    from streamhop.sidecar.server import log_stream

    record = StreamRecord(stream_id="s", route="/", method="POST", path="/v1", received_at=0.0)
    with caplog.at_level(logging.INFO, logger="streamhop.streams"):
        log_stream(record)
    (line,) = [r.getMessage() for r in caplog.records if r.name == "streamhop.streams"]
    return list(json.loads(line))


def test_sample_log_line_and_field_table_match_the_code(caplog: pytest.LogCaptureFixture) -> None:
    keys = _logged_keys(caplog)
    section = _section(_doc(), "## The stream log line", "\n## ")
    sample = re.search(r"```json\n(\{.*\})\n```", section)
    assert sample is not None, "no sample line in docs/observability.md"
    assert list(json.loads(sample.group(1))) == keys, "the sample log line is not the code's"
    fields = {name for cells in _table_rows(section)[1:] for name in _ticked(cells[0])}
    assert sorted(set(keys) - fields) == [], "log keys missing from the field table"
    assert sorted(fields - set(keys)) == [], "field table documents keys the code does not log"


@pytest.mark.parametrize("command", ["serve", "simulate", "demo"])
def test_readme_commands_block_has_every_flag(command: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "streamhop.sidecar.cli", command, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    flags = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", result.stdout)) - {"--help"}
    block = _section(README.read_text(encoding="utf-8"), "## Commands", "\n## ")
    line = _section(block, f"streamhop {command}", "\nstreamhop ")
    missing = sorted(flags - set(re.findall(r"--[a-z][a-z-]*", line)))
    assert not missing, f"README's Commands block lacks streamhop {command} {missing}"
