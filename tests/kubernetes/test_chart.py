"""The Helm chart, rendered by Helm's own engine: lint, Kubernetes and CRD schemas, the values
schema, and the agreement between what the chart renders around the process (ports, probes,
grace period) and the config it renders for it — which a real ``streamhop serve`` must accept.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import helm_python as helm
import httpx
import pytest
import yaml
from cloudcoil.models.prometheus_operator import v1 as monitoring

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
    # The config file the process reads is the one the chart rendered (or its Redis copy).
    config_path = container["args"][container["args"].index("--config") + 1]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts[str(Path(config_path).parent)] in {v["name"] for v in pod["volumes"]}
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


def test_provider_keys_and_resume_secrets_reach_the_process_as_env() -> None:
    rendered = render(ALL_ON)
    pod = rendered.one("Deployment")["spec"]["template"]["spec"]
    container = streamhop_container(pod)
    assert container["envFrom"] == [{"secretRef": {"name": "llm-provider-keys"}}]
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"]}
    assert env["ANTHROPIC_API_KEY"] == {"name": "anthropic", "key": "api-key"}
    assert env["STREAMHOP_RESUME_BINDING_KEY"] == {"name": "streamhop-resume", "key": "binding-key"}
    assert rendered.config["resume"]["binding_key"] == "${STREAMHOP_RESUME_BINDING_KEY}"
    # The Redis URL never sits in the ConfigMap: an init container writes it into a copy.
    assert "STREAMHOP_REDIS_URL" not in env
    init = pod["initContainers"][0]
    assert init["env"][0]["valueFrom"]["secretKeyRef"] == {
        "name": "streamhop-redis",
        "key": "redis-url",
    }
    assert container["args"][-1] == "/run/streamhop/streamhop.toml"


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


@pytest.mark.integration
def test_streamhop_serve_starts_from_the_all_on_config_after_the_init_container(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run the init container's own command on the ConfigMap's file (with a password holding
    TOML-special characters), then start streamhop on its output with the Secrets' env."""
    rendered = render(ALL_ON)
    pod = rendered.one("Deployment")["spec"]["template"]["spec"]
    command = pod["initContainers"][0]["command"]
    source, target = tmp_path / "etc", tmp_path / "run"
    source.mkdir()
    target.mkdir()
    (source / "streamhop.toml").write_text(rendered.toml_text)
    script = (
        command[2].replace("/etc/streamhop", str(source)).replace("/run/streamhop", str(target))
    )
    url = 'redis://:p"a\\ss@127.0.0.1:1/0'
    subprocess.run(
        [sys.executable, "-c", script], check=True, timeout=30, env={"STREAMHOP_REDIS_URL": url}
    )
    written = (target / "streamhop.toml").read_text()
    assert tomllib.loads(written)["resume"]["redis_url"] == url
    # What envFrom / secretKeyRef give the container.
    monkeypatch.setenv("CEREBRAS_API_KEY", "k1")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "k2")
    monkeypatch.setenv("STREAMHOP_RESUME_BINDING_KEY", "a-long-random-string")
    assert_serves(serve_rendered(written, tmp_path))


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
