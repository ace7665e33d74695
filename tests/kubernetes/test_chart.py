"""The Helm chart, rendered by Helm's own engine: lint, Kubernetes and CRD schemas, the values
schema, and the agreement between what the chart renders around the process (ports, probes,
grace period) and the config it renders for it — which a real ``streamhop serve`` must accept.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import helm_python as helm
import httpx
import pytest
import redis
import yaml
from cloudcoil.models.prometheus_operator import v1 as monitoring

from streamhop.middleware.errors import ConfigError
from streamhop.sidecar.config import load_config
from tests.kubernetes.chart import (
    ALL_ON,
    CHART,
    DASHBOARD,
    NATIVE_SIDECAR_KUBERNETES,
    NEWEST_KUBERNETES,
    OLDEST_KUBERNETES,
    SIDECAR,
    Rendered,
    deep_merge,
    render,
    render_example,
)
from tests.support import StreamhopProcess, start_streamhop

CRD_MODELS = {
    "ServiceMonitor": monitoring.ServiceMonitor,
    "PodMonitor": monitoring.PodMonitor,
    "PrometheusRule": monitoring.PrometheusRule,
}
KUBERNETES_VALIDATE = Path(sys.executable).parent / "kubernetes-validate"
ADMIN_PATHS = {"readinessProbe": "/readyz", "livenessProbe": "/healthz", "startupProbe": "/healthz"}


def containers(pod_spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [*pod_spec.get("initContainers", []), *pod_spec["containers"]]


def streamhop_container(pod_spec: Mapping[str, Any]) -> dict[str, Any]:
    found = [c for c in containers(pod_spec) if c.get("args", [None])[0] == "serve"]
    assert len(found) == 1, [c["name"] for c in containers(pod_spec)]
    return found[0]


def port_of(hostport: str) -> int:
    return int(hostport.rpartition(":")[2])


# --- lint and schemas ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "kube_version"),
    [({}, OLDEST_KUBERNETES), (ALL_ON, OLDEST_KUBERNETES), (SIDECAR, NATIVE_SIDECAR_KUBERNETES)],
    ids=["gateway", "all-on", "sidecar"],
)
def test_helm_lint_strict_finds_nothing(values: Mapping[str, Any], kube_version: str) -> None:
    report = helm.lint(CHART, dict(values), strict=True, kube_version=f"v{kube_version}")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not problems and not report["errors"], report


def validate_cases(tmp: Path) -> Iterator[tuple[str, str, list[dict[str, Any]]]]:
    """(case, Kubernetes version, objects) for every way the chart is used."""
    yield "gateway", OLDEST_KUBERNETES, render().objects
    yield "all-on", OLDEST_KUBERNETES, render(ALL_ON).objects
    yield "sidecar", OLDEST_KUBERNETES, render(SIDECAR).objects
    native = render_example(tmp / "native").objects
    yield "example-native", NATIVE_SIDECAR_KUBERNETES, native
    plain = {"streamhop": {"sidecar": {"native": False}}}
    yield "example-plain", OLDEST_KUBERNETES, render_example(tmp / "plain", plain).objects
    redis = {"streamhop": deep_merge({"sidecar": {"native": False}}, _redis_values())}
    yield "example-plain-redis", OLDEST_KUBERNETES, render_example(tmp / "r", redis).objects
    redis_native = {"streamhop": _redis_values()}
    yield (
        "example-native-redis",
        NATIVE_SIDECAR_KUBERNETES,
        render_example(tmp / "rn", redis_native).objects,
    )


def _redis_values() -> dict[str, Any]:
    return {
        "config": {"resume": {"enabled": True, "store": "redis"}},
        "secrets": {
            "resumeBindingKey": {"existingSecret": "streamhop-resume"},
            "redisUrl": {"existingSecret": "streamhop-redis"},
        },
    }


def test_every_object_passes_kubernetes_validate_strict(tmp_path: Path) -> None:
    """Built-in kinds against the oldest version each mode supports and the newest bundled."""
    for case, oldest, objects in validate_cases(tmp_path):
        builtin = [o for o in objects if o["kind"] not in CRD_MODELS]
        assert builtin, case
        manifest = tmp_path / f"{case}.yaml"
        manifest.write_text(yaml.safe_dump_all(builtin))
        for version in (oldest, NEWEST_KUBERNETES):
            result = subprocess.run(
                [KUBERNETES_VALIDATE, "--strict", "-k", version, manifest],
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert result.returncode == 0, (case, version, result.stdout, result.stderr)
            assert result.stdout.count("INFO") == len(builtin), (case, result.stdout)


def test_native_sidecar_is_refused_by_a_schema_without_it(tmp_path: Path) -> None:
    """Why the oldest version differs by mode: 1.27 has no restartPolicy on init containers
    (1.28 has the field, alpha behind a feature gate; 1.29 turns it on by default)."""
    objects = render_example(tmp_path).objects
    manifest = tmp_path / "native.yaml"
    manifest.write_text(yaml.safe_dump_all([o for o in objects if o["kind"] == "Deployment"]))
    result = subprocess.run(
        [KUBERNETES_VALIDATE, "--strict", "-k", "1.27.0", manifest],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0 and "restartPolicy" in result.stdout + result.stderr


def test_monitoring_objects_match_the_prometheus_operator_models(tmp_path: Path) -> None:
    """ServiceMonitor, PodMonitor and PrometheusRule parse into the operator's generated models
    with nothing left over (a misspelt field would be dropped: the round trip catches it)."""
    seen: set[str] = set()
    for case, _, objects in validate_cases(tmp_path):
        for obj in objects:
            model = CRD_MODELS.get(obj["kind"])
            if model is None:
                continue
            seen.add(obj["kind"])
            parsed = model.model_validate(obj)
            assert parsed.model_dump(by_alias=True, exclude_none=True) == obj, (case, obj["kind"])
    assert seen == set(CRD_MODELS)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"mode": "gatway"}, "/mode"),
        ({"config": {"server": {"drain_timeout_s": "30s"}}}, "drain_timeout_s"),
        ({"config": {"server": {"listen": "0.0.0.0:1"}}}, "listen"),
        ({"config": {"routes": []}}, "/config/routes"),
        ({"config": {"routes": [{"prefix": "v1", "upstream": "https://x"}]}}, "prefix"),
        ({"config": {"routes": [{"prefix": "/", "upstream": "api.openai.com"}]}}, "upstream"),
        ({"config": {"rechunk": {"mode": "fast"}}}, "mode"),
        ({"config": {"server": {"allowed_origins": ["app.example.com"]}}}, "allowed_origins"),
        ({"ports": {"proxy": 70000}}, "proxy"),
        ({"replicaCount": "2"}, "replicaCount"),
        ({"image": {"digest": "latest"}}, "digest"),
        ({"unknownKey": True}, "unknownKey"),
        ({"prometheusRule": {"saturation": {"ratio": 90}}}, "ratio"),
    ],
)
def test_values_schema_refuses_wrong_values_at_install(
    values: Mapping[str, Any], message: str
) -> None:
    with pytest.raises(helm.HelmValuesError, match=re.escape(message)):
        render(values)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"config": {"resume": {"enabled": True, "store": "redis", "redis_url": "redis://r"}}},
            "binding key",
        ),
        (
            {
                "config": {"resume": {"enabled": True, "store": "redis"}},
                "secrets": {"resumeBindingKey": {"existingSecret": "k"}},
            },
            "redisUrl",
        ),
        ({"terminationGracePeriodSeconds": 30}, "terminationGracePeriodSeconds (30)"),
        ({"mode": "sidecar", "podMonitor": {"enabled": True}}, "podMonitor.selector"),
    ],
)
def test_impossible_combinations_fail_at_render_with_the_reason(
    values: Mapping[str, Any], message: str
) -> None:
    with pytest.raises(helm.HelmError, match=re.escape(message)):
        render(values)


def test_app_version_and_the_default_image_tag_agree() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    container = streamhop_container(render().one("Deployment")["spec"]["template"]["spec"])
    assert container["image"] == f"streamhop:{chart['appVersion']}"
    assert re.search(
        r'"streamhop\.appVersion" -}}' + re.escape(chart["appVersion"]),
        (CHART / "templates" / "_helpers.tpl").read_text(),
    )


# --- what surrounds the process agrees with its config -------------------------------------------


@pytest.mark.parametrize("values", [{}, ALL_ON], ids=["gateway", "all-on"])
def test_gateway_ports_probes_and_grace_agree_with_the_rendered_config(
    values: Mapping[str, Any],
) -> None:
    rendered = render(values)
    config = rendered.config
    pod = rendered.one("Deployment")["spec"]["template"]["spec"]
    container = streamhop_container(pod)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert config["server"]["listen"] == f"0.0.0.0:{ports['proxy']}"
    assert config["server"]["admin_listen"] == f"0.0.0.0:{ports['admin']}"
    for probe, path in ADMIN_PATHS.items():
        assert container[probe]["httpGet"] == {"path": path, "port": ports["admin"]}, probe
    # The config file the process reads is the one the chart rendered, from the ConfigMap.
    config_path = container["args"][container["args"].index("--config") + 1]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    config_volume = next(
        v for v in pod["volumes"] if v["name"] == mounts[str(Path(config_path).parent)]
    )
    assert config_volume["configMap"]["name"] == rendered.config_map()["metadata"]["name"]
    # SIGTERM comes after the preStop pause; the drain must end before the kill.
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][1])
    assert pod["terminationGracePeriodSeconds"] > pre_stop + config["server"]["drain_timeout_s"]
    # The Service sends its ports to the container's, by name.
    service = rendered.one("Service")
    targets = {p["name"]: p["targetPort"] for p in service["spec"]["ports"]}
    assert targets == {"proxy": "proxy", "admin": "admin"}
    assert service["spec"]["selector"].items() <= pod_labels(rendered).items()
    # Hardened: non-root, nothing writable but /tmp, no capabilities.
    security = container["securityContext"]
    assert security["runAsNonRoot"] and security["readOnlyRootFilesystem"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert pod["automountServiceAccountToken"] is False


def pod_labels(rendered: Rendered) -> dict[str, str]:
    labels: dict[str, str] = rendered.one("Deployment")["spec"]["template"]["metadata"]["labels"]
    return labels


def test_service_monitor_pdb_and_hpa_point_at_the_gateway() -> None:
    rendered = render(ALL_ON)
    labels = pod_labels(rendered)
    monitor = rendered.one("ServiceMonitor")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items()
        <= rendered.one("Service")["metadata"]["labels"].items()
    )
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["admin"]
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    assert rendered.one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= (
        labels.items()
    )
    hpa = rendered.one("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == rendered.one("Deployment")["metadata"]["name"]
    assert "replicas" not in rendered.one("Deployment")["spec"]


def test_sidecar_ports_and_probes_agree_with_the_rendered_config(tmp_path: Path) -> None:
    for native in (True, False):
        rendered = render_example(
            tmp_path / str(native), {"streamhop": {"sidecar": {"native": native}}}
        )
        config = rendered.config
        pod = rendered.one("Deployment")["spec"]["template"]["spec"]
        container = streamhop_container(pod)
        assert (container in pod.get("initContainers", [])) is native
        assert container.get("restartPolicy") == ("Always" if native else None)
        # The proxy is for the pod only; the admin listener is for the kubelet and Prometheus.
        assert config["server"]["listen"] == "127.0.0.1:8787"
        admin = {p["name"]: p["containerPort"] for p in container["ports"]}["streamhop-admin"]
        assert config["server"]["admin_listen"] == f"0.0.0.0:{admin}"
        for probe, path in ADMIN_PATHS.items():
            assert container[probe]["httpGet"] == {"path": path, "port": admin}, probe
        # A native sidecar is stopped after the app: it needs no preStop pause.
        assert ("lifecycle" in container) is not native
        app = next(c for c in pod["containers"] if c["name"] == "chat")
        assert {"name": "OPENAI_BASE_URL", "value": "http://127.0.0.1:8787/v1"} in app["env"]
        monitor = rendered.one("PodMonitor")
        assert monitor["spec"]["podMetricsEndpoints"][0]["port"] == "streamhop-admin"
        assert monitor["spec"]["selector"]["matchLabels"].items() <= (
            rendered.one("Deployment")["spec"]["template"]["metadata"]["labels"].items()
        )


def test_a_config_change_rolls_the_pods_and_nothing_else_does() -> None:
    def checksum(values: Mapping[str, Any]) -> str:
        annotations = render(values).one("Deployment")["spec"]["template"]["metadata"][
            "annotations"
        ]
        value: str = annotations["checksum/config"]
        return value

    base = checksum({})
    assert checksum({"replicaCount": 5}) == base
    assert checksum({"config": {"rechunk": {"flush_interval_ms": 10}}}) != base
    assert checksum({"config": {"server": {"drain_timeout_s": 60}}}) != base


SECRETS: Mapping[str, Mapping[str, str]] = {
    "llm-provider-keys": {"CEREBRAS_API_KEY": "k1"},
    "anthropic": {"api-key": "k2"},
    "streamhop-resume": {"binding-key": "a-long-random-string"},
    "streamhop-redis": {"redis-url": 'redis://:p"a\\ss@redis.example:6379/0'},
}
"""The cluster's Secrets that ALL_ON (and ``_redis_values``) name: Secret -> key -> value."""


def process_env(
    container: Mapping[str, Any], secrets: Mapping[str, Mapping[str, str]] = SECRETS
) -> dict[str, str]:
    """The environment the kubelet gives ``container`` from ``secrets``: every key of an
    ``envFrom`` Secret, then the ``env`` entries (which win over ``envFrom``)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(secrets[source["secretRef"]["name"]])
    for entry in container.get("env", []):
        if "value" in entry:
            env[entry["name"]] = entry["value"]
        else:
            ref = entry["valueFrom"]["secretKeyRef"]
            env[entry["name"]] = secrets[ref["name"]][ref["key"]]
    return env


def test_provider_keys_and_resume_secrets_reach_the_process_as_env() -> None:
    rendered = render(ALL_ON)
    pod = rendered.one("Deployment")["spec"]["template"]["spec"]
    container = streamhop_container(pod)
    assert container["envFrom"] == [{"secretRef": {"name": "llm-provider-keys"}}]
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"]}
    assert env["ANTHROPIC_API_KEY"] == {"name": "anthropic", "key": "api-key"}
    assert env["STREAMHOP_RESUME_BINDING_KEY"] == {"name": "streamhop-resume", "key": "binding-key"}
    assert rendered.config["resume"]["binding_key"] == "${STREAMHOP_RESUME_BINDING_KEY}"
    # The Redis URL (with its password) never sits in the ConfigMap: streamhop expands the
    # reference from the container's environment, which the Secret fills.
    assert env["STREAMHOP_REDIS_URL"] == {"name": "streamhop-redis", "key": "redis-url"}
    assert rendered.config["resume"]["redis_url"] == "${STREAMHOP_REDIS_URL}"
    # Nothing else runs in the pod, and it mounts only the ConfigMap and /tmp.
    assert "initContainers" not in pod and len(pod["containers"]) == 1
    assert {v["name"] for v in pod["volumes"]} == {"streamhop-config", "streamhop-tmp"}


def test_a_redis_url_without_a_secret_stays_in_the_config_and_adds_no_env() -> None:
    rendered = render(
        {
            "config": {
                "resume": {"enabled": True, "store": "redis", "redis_url": "redis://redis:6379/0"}
            },
            "secrets": {"resumeBindingKey": {"existingSecret": "streamhop-resume"}},
        }
    )
    container = streamhop_container(rendered.one("Deployment")["spec"]["template"]["spec"])
    assert rendered.config["resume"]["redis_url"] == "redis://redis:6379/0"
    assert "STREAMHOP_REDIS_URL" not in {e["name"] for e in container["env"]}
    # Resume off: a Secret named for Redis is neither referenced nor required.
    off = render({"secrets": {"redisUrl": {"existingSecret": "streamhop-redis"}}})
    assert "redis_url" not in off.config["resume"]
    assert "STREAMHOP_REDIS_URL" not in off.files["streamhop/templates/deployment.yaml"]


def test_the_sidecar_gets_the_redis_url_from_its_secret_native_and_plain(tmp_path: Path) -> None:
    for native in (True, False):
        values = {"streamhop": deep_merge({"sidecar": {"native": native}}, _redis_values())}
        rendered = render_example(tmp_path / str(native), values)
        pod = rendered.one("Deployment")["spec"]["template"]["spec"]
        container = streamhop_container(pod)
        assert rendered.config["resume"]["redis_url"] == "${STREAMHOP_REDIS_URL}"
        refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"]}
        assert refs["STREAMHOP_REDIS_URL"] == {"name": "streamhop-redis", "key": "redis-url"}
        assert refs["STREAMHOP_RESUME_BINDING_KEY"] == {
            "name": "streamhop-resume",
            "key": "binding-key",
        }
        # The sidecar is the pod's only streamhop container, and needs only its two volumes.
        init = [c["name"] for c in pod.get("initContainers", [])]
        assert init == (["streamhop"] if native else [])
        assert [c["name"] for c in pod["containers"]] == (
            ["chat"] if native else ["chat", "streamhop"]
        )
        assert {v["name"] for v in pod["volumes"]} == {"streamhop-config", "streamhop-tmp"}


def test_the_rendered_config_takes_the_redis_url_from_the_env(tmp_path: Path) -> None:
    """streamhop's own loader on the ConfigMap's file with the container's environment: the
    password (with TOML-special characters) arrives verbatim, and only from the environment."""
    rendered = render(ALL_ON)
    url = SECRETS["streamhop-redis"]["redis-url"]
    assert 'p"a' not in "".join(rendered.files.values())
    path = tmp_path / "streamhop.toml"
    path.write_text(rendered.toml_text)
    env = process_env(streamhop_container(rendered.one("Deployment")["spec"]["template"]["spec"]))
    assert env["STREAMHOP_REDIS_URL"] == url
    assert load_config(path, env).resume.redis_url == url
    del env["STREAMHOP_REDIS_URL"]
    with pytest.raises(ConfigError, match=r"resume\.redis_url.*STREAMHOP_REDIS_URL"):
        load_config(path, env)


def test_notes_tell_the_base_url() -> None:
    assert "http://streamhop.llm.svc.cluster.local:8787" in render().notes
    assert 'OpenAI(base_url="http://streamhop.llm.svc.cluster.local:8787/v1"' in render().notes
    assert "http://127.0.0.1:8787" in render(SIDECAR).notes


def test_dashboard_config_map_carries_the_dashboard_for_grafanas_sidecar() -> None:
    rendered = render(ALL_ON)
    dashboard = next(o for o in rendered.of_kind("ConfigMap") if "streamhop.json" in o["data"])
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["metadata"]["annotations"] == {"grafana_folder": "LLM"}
    assert json.loads(dashboard["data"]["streamhop.json"]) == json.loads(DASHBOARD.read_text())
    # Helm merges maps: a null removes the default label.
    custom = render(
        {
            "dashboards": {
                "enabled": True,
                "labels": {"grafana_dashboard": None, "dashboards": "streamhop"},
            }
        }
    )
    labels = next(o for o in custom.of_kind("ConfigMap") if "streamhop.json" in o["data"])[
        "metadata"
    ]["labels"]
    assert labels["dashboards"] == "streamhop" and "grafana_dashboard" not in labels


# --- a real streamhop serve accepts the rendered config ------------------------------------------


def serve_rendered(toml_text: str, tmp: Path) -> StreamhopProcess:
    """``streamhop serve`` on the chart's file, on loopback ports (the flags replace only the
    two listen addresses, which the other tests tie to the pod spec)."""
    path = tmp / "streamhop.toml"
    path.write_text(toml_text)
    return start_streamhop(
        "serve", "--config", str(path), "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"
    )


def assert_serves(proc: StreamhopProcess) -> None:
    assert proc.admin_url is not None
    try:
        for path in ("/healthz", "/readyz"):
            assert httpx.get(proc.admin_url + path, timeout=10).status_code == 200, path
    finally:
        assert proc.stop() == 0, proc.stderr


@pytest.mark.integration
@pytest.mark.parametrize("values", [{}, SIDECAR], ids=["gateway", "sidecar"])
def test_streamhop_serve_starts_from_the_rendered_config(
    values: Mapping[str, Any], tmp_path: Path
) -> None:
    assert_serves(serve_rendered(render(values).toml_text, tmp_path))


@pytest.fixture
def redis_with_password() -> Iterator[tuple[int, str]]:
    """A private ``redis-server`` (no persistence) on a free loopback port that refuses clients
    without its password (set with CONFIG SET, so no shell or config quoting is involved)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not on PATH (apt-get install redis-server)")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)
        password = 'p"a\\ss w#rd/@:'
        with redis.Redis(port=port) as admin:
            admin.config_set("requirepass", password)
        yield port, password
    finally:
        proc.terminate()
        proc.wait(10)


def resume_errors(admin_url: str) -> float:
    text = httpx.get(admin_url + "/metrics", timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("streamhop_resume_errors_total{")
    )


@pytest.mark.integration
def test_streamhop_serve_from_the_all_on_config_logs_streams_to_the_redis_of_its_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_with_password: tuple[int, str]
) -> None:
    """The gateway's ConfigMap and the container's environment as the kubelet builds it from
    the Secrets, against a real ``redis-server`` that requires a password: a stream through
    streamhop lands in that Redis, so the URL from the Secret (password included) is used."""
    port, password = redis_with_password
    url = f"redis://:{quote(password, safe='')}@127.0.0.1:{port}/0"
    simulator = start_streamhop("simulate", "--listen", "127.0.0.1:0")
    try:
        routes = [dict(r) for r in ALL_ON["config"]["routes"]]
        routes[0]["upstream"] = simulator.url  # the /cerebras route
        # No OTLP collector here: tracing off, so the exporter's retries cannot slow the stop.
        config = {"routes": routes, "tracing": {"otlp_endpoint": ""}}
        rendered = render(deep_merge(ALL_ON, {"config": config}))
        assert rendered.config["resume"]["redis_url"] == "${STREAMHOP_REDIS_URL}"
        container = streamhop_container(rendered.one("Deployment")["spec"]["template"]["spec"])
        secrets = {**SECRETS, "streamhop-redis": {"redis-url": url}}
        for name, value in process_env(container, secrets).items():
            monkeypatch.setenv(name, value)
        proc = serve_rendered(rendered.toml_text, tmp_path)
        try:
            assert proc.admin_url is not None
            body = {
                "model": "sim",
                "stream": True,
                "max_tokens": 20,
                "messages": [{"role": "user", "content": "to redis"}],
            }
            response = httpx.post(proc.url + "/cerebras/v1/chat/completions", json=body, timeout=30)
            assert response.status_code == 200 and b"data: [DONE]" in response.content
            assert b"\nid: " in response.content or response.content.startswith(b"id: ")
            with redis.Redis(port=port, password=password) as client:
                deadline = time.monotonic() + 10
                while not client.keys("streamhop:resume:*"):
                    assert time.monotonic() < deadline, "no resume log reached Redis"
                    time.sleep(0.05)
            assert resume_errors(proc.admin_url) == 0
            # The password is what let streamhop in.
            with redis.Redis(port=port) as anonymous, pytest.raises(redis.AuthenticationError):
                anonymous.ping()
        finally:
            assert proc.stop() == 0, proc.stderr
    finally:
        simulator.stop()


# --- the chart's README --------------------------------------------------------------------------

OPAQUE = {
    "strategy",
    "podSecurityContext",
    "securityContext",
    "resources",
    "autoscaling.behavior",
    "probes.startup",
    "probes.readiness",
    "probes.liveness",
    "config.routes",
}
"""Values documented as one object rather than key by key."""


def value_paths(values: Any, prefix: str = "") -> Iterator[str]:
    if (
        isinstance(values, dict)
        and values
        and prefix not in OPAQUE
        and not prefix.endswith("labels")
    ):
        for key, value in values.items():
            yield from value_paths(value, f"{prefix}.{key}" if prefix else key)
    else:
        yield prefix


def test_readme_lists_every_value() -> None:
    readme = (CHART / "README.md").read_text()
    documented = set(re.findall(r"^\| `([^`]+)` \|", readme, flags=re.M))
    paths = set(value_paths(yaml.safe_load((CHART / "values.yaml").read_text())))
    assert paths - documented == set()
    assert documented - paths == set()
