"""The chart's alerts and dashboard, evaluated by a real Prometheus scraping a real sidecar.

Debian's ``prometheus`` (2.42) runs as a plain process on a loopback port with a 1 s scrape and
rule-evaluation interval and a temporary storage directory. It scrapes ``streamhop serve``
started from the chart-rendered TOML, under the labels the prometheus-operator gives a
ServiceMonitor's targets (``job`` = the Service's name, ``namespace``), and loads the rendered
PrometheusRule's groups as its rule file. Traffic from ``streamhop simulate`` (streams, a client
disconnect, a connect failure) makes every metric family move. Then, through the HTTP API:

* every panel query of the dashboard parses and returns data, with a finite value per panel;
* every alert expression parses and evaluates, and every series selector in it matches data,
  so a wrong metric name, label or ``job`` fails here rather than leaving an alert silent;
* Prometheus's own rule manager reports every rule healthy.

``promtool check rules`` and ``promtool test rules`` (tests/kubernetes/alerts_test.yaml) check
the rules file and that each alert fires on synthetic series, and stays quiet on healthy ones.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import promql_parser
import pytest
import yaml

from tests.kubernetes.chart import DASHBOARD, NAMESPACE, Rendered, render
from tests.support import StreamhopProcess, start_streamhop

PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        PROMETHEUS is None or PROMTOOL is None,
        reason="Debian's prometheus package is not installed (.ci/run installs it)",
    ),
]
ALERTS_TEST = Path(__file__).with_name("alerts_test.yaml")
RATE_INTERVAL = "60s"
"""``$__rate_interval``: wide enough to hold the traffic and a scrape before it."""
BOUND_S = 60.0
SIM_HEADERS = {
    "x-sim-ttft-ms": "40",
    "x-sim-events-per-second": "100",
    "x-sim-tokens-per-second": "1000",
}
SLOW_HEADERS = {"x-sim-events-per-second": "20", "x-sim-tokens-per-second": "100"}
FIRST_TEXT = re.compile(rb'"content":"[^"]')
_VARIABLE = re.compile(r"\$(\w+)|\$\{(\w+)(?::\w+)?\}")
T = TypeVar("T")


def poll(what: str, probe: Callable[[], T | None], bound_s: float = BOUND_S) -> T:
    """``probe()`` until it returns something other than None, for at most ``bound_s``."""
    deadline = time.monotonic() + bound_s
    while True:
        value = probe()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {bound_s:g} s")
        time.sleep(0.1)  # polling interval of a bounded wait on observable state


def chart_values(simulator_url: str) -> dict[str, Any]:
    return {
        "config": {
            "server": {"drain_timeout_s": 2},
            "routes": [
                {"prefix": "/sim", "upstream": simulator_url},
                {
                    "prefix": "/down",
                    "upstream": "http://127.0.0.1:9",
                    "connect_timeout_s": 2,
                    "retries": 0,
                },
            ],
            "resume": {"enabled": True, "store": "memory"},
        },
        "serviceMonitor": {"enabled": True},
        "prometheusRule": {"enabled": True},
        "dashboards": {"enabled": True},
    }


@dataclass(frozen=True)
class Stack:
    rendered: Rendered
    sidecar: StreamhopProcess
    prometheus_url: str
    rules_file: Path
    job: str

    def query(self, expr: str) -> list[dict[str, Any]]:
        response = httpx.get(
            self.prometheus_url + "/api/v1/query", params={"query": expr}, timeout=30
        )
        body = response.json()
        assert response.status_code == 200 and body["status"] == "success", (expr, body)
        result: list[dict[str, Any]] = body["data"]["result"]
        return result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def simulator() -> Iterator[StreamhopProcess]:
    proc = start_streamhop("simulate", "--listen", "127.0.0.1:0")
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def stack(simulator: StreamhopProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("prometheus")
    rendered = render(chart_values(simulator.url))
    config = tmp / "streamhop.toml"
    config.write_text(rendered.toml_text)
    sidecar = start_streamhop(
        "serve", "--config", str(config), "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"
    )
    assert sidecar.admin_url is not None
    # The prometheus-operator names a ServiceMonitor target's job after the Service.
    job = rendered.one("Service")["metadata"]["name"]
    rules_file = tmp / "rules.yaml"
    rules_file.write_text(yaml.safe_dump(rendered.one("PrometheusRule")["spec"]))
    port = free_port()
    (tmp / "prometheus.yml").write_text(
        yaml.safe_dump(
            {
                "global": {
                    "scrape_interval": "1s",
                    "scrape_timeout": "1s",
                    "evaluation_interval": "1s",
                },
                "rule_files": [str(rules_file)],
                "scrape_configs": [
                    {
                        "job_name": job,
                        "metrics_path": "/metrics",
                        "static_configs": [
                            {
                                "targets": [sidecar.admin_url.removeprefix("http://")],
                                "labels": {
                                    "namespace": NAMESPACE,
                                    "pod": "streamhop-0",
                                    "service": job,
                                    "endpoint": "admin",
                                },
                            }
                        ],
                    }
                ],
            }
        )
    )
    log = (tmp / "prometheus.log").open("wb")
    prometheus = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={tmp / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool | None:
            assert prometheus.poll() is None, (tmp / "prometheus.log").read_text()
            try:
                return httpx.get(url + "/-/ready", timeout=5).status_code == 200 or None
            except httpx.TransportError:
                return None

        poll("prometheus ready", ready)
        yield Stack(rendered, sidecar, url, rules_file, job)
    finally:
        prometheus.terminate()
        try:
            prometheus.wait(15)
        except subprocess.TimeoutExpired:
            prometheus.kill()
            prometheus.wait()
        log.close()
        sidecar.stop()


def total(stack: Stack, expr: str) -> float:
    return sum(float(s["value"][1]) for s in stack.query(expr))


def exercise(base: str) -> None:
    """Three streams, a client that leaves mid-stream, and a request whose upstream is down."""
    body = {
        "model": "gpt-x",
        "stream": True,
        "max_tokens": 60,
        "messages": [{"role": "user", "content": "hi"}],
    }
    with httpx.Client(timeout=30) as http:
        for _ in range(3):
            with http.stream(
                "POST", base + "/sim/v1/chat/completions", json=body, headers=SIM_HEADERS
            ) as response:
                assert response.status_code == 200
                response.read()
        with http.stream(
            "POST",
            base + "/sim/v1/chat/completions",
            json={**body, "max_tokens": 400},
            headers=SLOW_HEADERS,
        ) as response:
            seen = b""
            for chunk in response.iter_raw():
                seen += chunk
                if FIRST_TEXT.search(seen):
                    break
        assert http.post(base + "/down/v1/chat/completions", json=body).status_code == 502


@pytest.fixture(scope="module")
def traffic(stack: Stack) -> Stack:
    """The same traffic twice: the first round creates every series and Prometheus scrapes
    it, so the second round is an increase that rate() sees within one rate window."""
    sel = f'{{job="{stack.job}", namespace="{NAMESPACE}"}}'
    poll("first scrape", lambda: total(stack, f"up{sel}") == 1 or None)

    def recorded(rounds: int) -> bool | None:
        return (
            total(stack, f"streamhop_stream_duration_seconds_count{sel}") >= 5 * rounds
            and total(stack, f"streamhop_upstream_time_to_first_token_seconds_count{sel}")
            >= 3 * rounds
            and total(stack, f"streamhop_cancel_latency_seconds_count{sel}") >= rounds
            and total(stack, f"streamhop_upstream_errors_total{sel}") >= rounds
            and total(stack, f"sum(streamhop_streams_active{sel})") == 0
        ) or None

    for rounds in (1, 2):
        exercise(stack.sidecar.url)
        poll(f"round {rounds} of traffic in Prometheus", lambda rounds=rounds: recorded(rounds))
    return stack


# --- the dashboard -------------------------------------------------------------------------------


def dashboard_targets() -> Iterator[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = []
    for panel in dashboard["panels"]:
        panels.extend(panel.get("panels", []) if panel["type"] == "row" else [panel])
    for panel in panels:
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]


def substitute(expr: str, allvalues: Mapping[str, str]) -> str:
    """Grafana's variables as Grafana sends them with *All* selected."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name == "__rate_interval":
            return RATE_INTERVAL
        return allvalues[name]

    return _VARIABLE.sub(value, expr)


def finite(series: list[dict[str, Any]]) -> bool:
    return any(math.isfinite(float(s["value"][1])) for s in series)


def test_every_panel_query_returns_data_from_the_real_sidecar(traffic: Stack) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"] if v["type"] == "query"}
    allvalues = {name: v["allValue"] for name, v in variables.items()}
    # Template variables: label_values(metric, label) as Grafana asks the label API.
    for name, variable in variables.items():
        metric, label = re.fullmatch(
            r"label_values\((\w+),\s*(\w+)\)", variable["query"]["query"]
        ).groups()
        response = httpx.get(
            f"{traffic.prometheus_url}/api/v1/label/{label}/values",
            params={"match[]": metric},
            timeout=30,
        ).json()
        assert response["status"] == "success" and response["data"], (name, response)
    by_panel: dict[str, bool] = {}
    for title, expr in dashboard_targets():
        series = traffic.query(substitute(expr, allvalues))
        assert series, f"{title}: no data for {expr}"
        by_panel[title] = by_panel.get(title, False) or finite(series)
    empty = [title for title, ok in by_panel.items() if not ok]
    assert not empty, f"panels with only NaN/Inf: {empty}"


# --- the alerts ----------------------------------------------------------------------------------


def alert_rules(rendered: Rendered) -> list[dict[str, Any]]:
    groups = rendered.one("PrometheusRule")["spec"]["groups"]
    return [rule for group in groups for rule in group["rules"]]


def selectors(expr: str) -> list[str]:
    found: list[str] = []

    def visit(node: promql_parser.Expr) -> bool:
        if isinstance(node, promql_parser.VectorSelector):
            found.append(re.sub(r" offset \S+$", "", str(node)))
        return True

    promql_parser.walk(promql_parser.parse(expr), visit)
    return found


def test_every_alert_expression_evaluates_and_selects_real_series(traffic: Stack) -> None:
    rules = alert_rules(traffic.rendered)
    assert {r["alert"] for r in rules} >= {
        "StreamhopTimeToFirstTokenHigh",
        "StreamhopProxyOverheadHigh",
        "StreamhopUpstreamErrorRatioHigh",
        "StreamhopCancellationsSpike",
        "StreamhopStreamsNearLimit",
        "StreamhopScrapeDown",
        "StreamhopTargetsMissing",
        "StreamhopResumeStoreErrors",
    }
    for rule in rules:
        traffic.query(rule["expr"])  # parses and evaluates
        for selector in selectors(rule["expr"]):
            assert traffic.query(selector), f"{rule['alert']}: {selector} matches no series"
    # Healthy traffic fires nothing but the upstream-error alert's condition (one of the five
    # requests failed to connect, on purpose), and the scrape alerts are quiet.
    quiet = {
        "StreamhopScrapeDown",
        "StreamhopTargetsMissing",
        "StreamhopStreamsNearLimit",
        "StreamhopResumeStoreErrors",
    }
    for rule in rules:
        if rule["alert"] in quiet:
            assert traffic.query(rule["expr"]) == [], rule["alert"]
    error_ratio = next(r for r in rules if r["alert"] == "StreamhopUpstreamErrorRatioHigh")
    assert {s["metric"]["route"] for s in traffic.query(error_ratio["expr"])} == {"/down"}


def test_prometheus_evaluates_every_rule_without_error(traffic: Stack) -> None:
    def evaluated() -> list[dict[str, Any]] | None:
        body = httpx.get(traffic.prometheus_url + "/api/v1/rules", timeout=30).json()
        rules = [r for g in body["data"]["groups"] for r in g["rules"]]
        done = rules and all(not r["lastEvaluation"].startswith("0001") for r in rules)
        return rules if done else None

    rules = poll("every rule evaluated", evaluated)
    assert len(rules) == len(alert_rules(traffic.rendered))
    assert [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"] == []


# --- promtool ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rules_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default chart's rules (release streamhop in llm, resume on for its alert)."""
    rendered = render(
        {
            "prometheusRule": {"enabled": True},
            "config": {"resume": {"enabled": True}},
        }
    )
    path = tmp_path_factory.mktemp("promtool") / "rules.yaml"
    path.write_text(yaml.safe_dump(rendered.one("PrometheusRule")["spec"]))
    shutil.copy(ALERTS_TEST, path.with_name(ALERTS_TEST.name))
    return path


def test_promtool_check_rules(rules_file: Path) -> None:
    result = subprocess.run(
        [PROMTOOL, "check", "rules", rules_file], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_unit_tests_of_every_alert(rules_file: Path) -> None:
    tests = yaml.safe_load(ALERTS_TEST.read_text())
    tested = {case["alertname"] for test in tests["tests"] for case in test["alert_rule_test"]}
    rules = yaml.safe_load(rules_file.read_text())
    assert tested == {r["alert"] for g in rules["groups"] for r in g["rules"]}
    result = subprocess.run(
        [PROMTOOL, "test", "rules", rules_file.with_name(ALERTS_TEST.name)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=rules_file.parent,
    )
    assert result.returncode == 0, result.stdout + result.stderr
