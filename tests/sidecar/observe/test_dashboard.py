"""The Grafana dashboard of the Helm chart: well-formed, and every query parses and selects metrics
the real sidecar exposes.

Each target's PromQL is parsed by ``promql-parser`` (Python bindings of GreptimeDB's Rust port of
the Prometheus parser) after the Grafana variables are replaced with real values, and the metric
names are read from the AST's selectors, not from the text. They are then looked up in a real
``/metrics`` scrape of the session sidecar, taken after traffic that records every family (a
stream, a client disconnect, a connect failure): a renamed metric or a typo leaves a panel empty
in Grafana without any error, and only this catches it.
"""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import promql_parser
import pytest

from tests.support import (
    Scrape,
    StreamhopProcess,
    chat_body,
    connect_error_once,
    disconnect_once,
    stream_once,
    wait_idle,
)

DASHBOARD = Path(__file__).resolve().parents[3] / "charts/streamhop/dashboards/streamhop.json"
DATASOURCE = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
RATE_INTERVAL = datetime.timedelta(seconds=73)
"""What ``$__rate_interval`` becomes: an odd value, so a hard-coded range stands out."""
TEMPLATE_QUERIES = {
    "route": "label_values(streamhop_streams_active, route)",
    "model": "label_values(streamhop_events_total, model)",
}
_VARIABLE = re.compile(r"\$(\w+)|\$\{(\w+)(?::\w+)?\}")
_LABEL_VALUES = re.compile(r"label_values\((\w+),\s*(\w+)\)")
_HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def load_dashboard() -> dict[str, Any]:
    """The dashboard as shipped in the chart."""
    with DASHBOARD.open() as f:
        dashboard: dict[str, Any] = json.load(f)
    return dashboard


def query_panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel that queries (rows excluded), nested rows included."""
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


# --- the scrape the queries must match -----------------------------------------------------------


@dataclass(frozen=True)
class Exposed:
    """What a real scrape offers to queries."""

    labels: Mapping[str, frozenset[str]]
    """Sample name (``_bucket``/``_sum``/``_count``/``_total`` included) -> its label names."""
    values: Mapping[str, frozenset[str]]
    """Label name -> values seen, for ``route`` and ``model``."""


@pytest.fixture(scope="module")
def exposed(simulator: StreamhopProcess, sidecar: StreamhopProcess) -> Exposed:
    """Traffic that records every metric family, then one scrape."""
    assert sidecar.admin_url is not None
    with httpx2.Client(timeout=30) as http:
        assert stream_once(http, sidecar.url + "/sim", {}, chat_body(max_tokens=100)).status == 200
        disconnect_once(http, sidecar.url + "/sim")
    connect_error_once(sidecar.url)
    wait_idle(sidecar.admin_url, "/down")
    current: Scrape = wait_idle(sidecar.admin_url)
    labels: dict[str, set[str]] = {}
    values: dict[str, set[str]] = {"route": set(), "model": set()}
    for sample in current.samples():
        if not sample.name.startswith("streamhop_"):
            continue
        labels.setdefault(sample.name, set()).update(sample.labels)
        for name, seen in values.items():
            if name in sample.labels:
                seen.add(sample.labels[name])
    return Exposed(
        {name: frozenset(names) for name, names in labels.items()},
        {name: frozenset(seen) for name, seen in values.items()},
    )


def _grafana_escape(value: str) -> str:
    """A label value as Grafana's Prometheus data source puts it in a multi-value regex:
    regex metacharacters escaped with a backslash that is itself escaped for the PromQL string
    literal (``prometheusRegularEscape``); ``re.escape`` also escapes ``-``, which is not a valid
    PromQL string escape (a route ``/with-key`` made the query unparsable)."""
    return re.sub(r"[$^*+?.()|\\{}\[\]]", lambda m: "\\\\" + m.group(0), value)


def substitute(expr: str, exposed: Exposed) -> str:
    """Replace Grafana variables as Grafana would: multi-value regexes of real label values."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name == "__rate_interval":
            return f"{int(RATE_INTERVAL.total_seconds())}s"
        if name in exposed.values:
            return "(" + "|".join(sorted(map(_grafana_escape, exposed.values[name]))) + ")"
        raise AssertionError(f"unknown variable ${name} in {expr!r}")

    return _VARIABLE.sub(value, expr)


# --- structure -----------------------------------------------------------------------------------


def test_dashboard_is_grafana_json_with_identity_and_panels() -> None:
    dashboard = load_dashboard()
    assert dashboard["uid"] and len(dashboard["uid"]) <= 40
    assert dashboard["title"]
    assert dashboard["schemaVersion"] >= 39
    panels = dashboard["panels"]
    assert panels
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]
    for panel in query_panels(dashboard):
        assert panel["type"] in ("timeseries", "stat"), panel["title"]
        assert panel["title"] and panel["description"], panel
        assert panel["datasource"] == DATASOURCE, panel["title"]
        targets = panel["targets"]
        assert targets, panel["title"]
        assert len({t["refId"] for t in targets}) == len(targets), panel["title"]
        for target in targets:
            assert target["expr"].strip(), panel["title"]
            assert target["datasource"] == DATASOURCE, panel["title"]


def test_template_variables_are_the_datasource_route_and_model() -> None:
    variables = {v["name"]: v for v in load_dashboard()["templating"]["list"]}
    datasource = variables["DS_PROMETHEUS"]
    assert datasource["type"] == "datasource" and datasource["query"] == "prometheus"
    for name, query in TEMPLATE_QUERIES.items():
        variable = variables[name]
        assert variable["type"] == "query"
        assert variable["datasource"] == DATASOURCE
        assert variable["definition"] == query
        assert variable["query"]["query"] == query
        assert variable["multi"] is True and variable["includeAll"] is True


def test_template_variable_queries_name_exposed_metrics_and_labels(exposed: Exposed) -> None:
    for name, query in TEMPLATE_QUERIES.items():
        match = _LABEL_VALUES.fullmatch(query)
        assert match is not None, query
        metric, label = match.groups()
        assert label == name
        assert isinstance(promql_parser.parse(metric), promql_parser.VectorSelector)
        assert label in exposed.labels[metric], (metric, exposed.labels[metric])


def _expected_unit(expr: str, title: str) -> set[str]:
    if "histogram_quantile" in expr or "_seconds_sum" in expr:
        return {"s"}
    if re.search(r"streamhop_\w*bytes_total", expr):  # bytes, follower bytes: a byte rate
        return {"Bps"}
    if "ratio" in title.lower():
        return {"none"}
    if "rate(" in expr:
        return {"ops", "reqps"}
    return {"short"}


def test_units_match_what_the_queries_return() -> None:
    for panel in query_panels(load_dashboard()):
        unit = panel["fieldConfig"]["defaults"]["unit"]
        for target in panel["targets"]:
            assert unit in _expected_unit(target["expr"], panel["title"]), (panel["title"], unit)


# --- PromQL --------------------------------------------------------------------------------------


def _selectors(ast: promql_parser.Expr) -> list[promql_parser.VectorSelector]:
    found: list[promql_parser.VectorSelector] = []

    def visit(node: promql_parser.Expr) -> bool:
        if isinstance(node, promql_parser.VectorSelector):
            found.append(node)
        return True

    promql_parser.walk(ast, visit)
    return found


def _metric_name(selector: promql_parser.VectorSelector) -> str:
    if selector.name:
        return selector.name
    for matcher in selector.matchers.matchers:
        if matcher.name == "__name__" and matcher.op == promql_parser.MatchOp.Equal:
            return matcher.value
    raise AssertionError(f"selector without a metric name: {selector}")


def _parsed_targets(exposed: Exposed) -> Iterator[tuple[str, str, promql_parser.Expr]]:
    for panel in query_panels(load_dashboard()):
        for target in panel["targets"]:
            expr = substitute(target["expr"], exposed)
            try:
                ast = promql_parser.parse(expr)
            except ValueError as exc:
                raise AssertionError(f"{panel['title']}: {expr!r} does not parse: {exc}") from exc
            yield panel["title"], expr, ast


def test_every_query_parses_and_selects_exposed_metrics(exposed: Exposed) -> None:
    names: set[str] = set()
    for title, expr, ast in _parsed_targets(exposed):
        selectors = _selectors(ast)
        assert selectors, (title, expr)
        for selector in selectors:
            name = _metric_name(selector)
            names.add(name)
            assert name in exposed.labels, f"{title}: {name} is not in /metrics ({expr})"
    # Every family the sidecar exposes has a panel.
    families = {re.sub(r"(_bucket|_sum|_count)$", "", n) for n in names}
    exposed_families = {
        n.removesuffix(suffix)
        for n in exposed.labels
        for suffix in _HISTOGRAM_SUFFIXES
        if n.endswith(suffix)
    } | {n for n in exposed.labels if n.endswith("_total") or n == "streamhop_streams_active"}
    assert exposed_families <= families, exposed_families - families


def test_every_selector_filters_on_route_and_model_where_the_metric_has_them(
    exposed: Exposed,
) -> None:
    route = substitute("$route", exposed)
    model = substitute("$model", exposed)
    for title, expr, ast in _parsed_targets(exposed):
        for selector in _selectors(ast):
            name = _metric_name(selector)
            filters = {
                m.name: (m.op, m.value) for m in selector.matchers.matchers if m.name != "__name__"
            }
            wanted = {
                label: (promql_parser.MatchOp.Re, value)
                for label, value in (("route", route), ("model", model))
                if label in exposed.labels[name]
            }
            for label in ("route", "model"):
                assert filters.get(label) == wanted.get(label), (title, name, label, expr)


def test_rates_use_the_rate_interval_and_quantiles_keep_le(exposed: Exposed) -> None:
    for title, expr, ast in _parsed_targets(exposed):

        def visit(node: promql_parser.Expr, title: str = title, expr: str = expr) -> bool:
            if isinstance(node, promql_parser.MatrixSelector):
                assert node.range == RATE_INTERVAL, (title, expr)
            if isinstance(node, promql_parser.Call) and node.func.name == "histogram_quantile":
                inner = node.args[1]
                assert isinstance(inner, promql_parser.AggregateExpr), (title, expr)
                assert inner.modifier is not None and "le" in inner.modifier.labels, expr
                assert _metric_name(_selectors(inner)[0]).endswith("_bucket"), expr
            return True

        promql_parser.walk(ast, visit)
