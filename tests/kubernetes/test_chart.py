"""The Helm chart, rendered by Helm's own engine: lint, Kubernetes and CRD schemas, the values
schema, and the agreement between what the chart renders around the process (ports, probes,
grace period) and the config it renders for it — which a real ``streamhop serve`` must accept.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import re
import shutil
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import helm_python as helm
import httpx
import pytest
import redis
import trustme
import yaml
from cloudcoil.models.prometheus_operator import v1 as monitoring

from streamhop.middleware.errors import ConfigError
from streamhop.sidecar.admission.guard import normalise_path
from streamhop.sidecar.admission.routing import RouteTable
from streamhop.sidecar.config import Config, config_from_dict, load_config, model
from tests.kubernetes.chart import (
    ALL_ON,
    CHART,
    DASHBOARD,
    NATIVE_SIDECAR_KUBERNETES,
    NEWEST_KUBERNETES,
    OLDEST_KUBERNETES,
    ROOT,
    SIDECAR,
    Rendered,
    deep_merge,
    render,
    render_app,
    render_example,
)
from tests.support import StreamhopProcess, start_streamhop

CRD_MODELS = {
    "ServiceMonitor": monitoring.ServiceMonitor,
    "PodMonitor": monitoring.PodMonitor,
    "PrometheusRule": monitoring.PrometheusRule,
}
NOT_IN_KUBERNETES_SCHEMAS = {*CRD_MODELS, "Certificate"}
"""Kinds kubernetes-validate has no schema for: the prometheus-operator's (checked against its
models below) and cert-manager's Certificate (against cert-manager's models, when installed)."""
KUBERNETES_VALIDATE = Path(sys.executable).parent / "kubernetes-validate"
ADMIN_PATHS = {"readinessProbe": "/readyz", "livenessProbe": "/healthz", "startupProbe": "/healthz"}

# The paths docs/kubernetes.md and the chart's README promise (section "Company networks").
CA_BUNDLE = "/etc/streamhop/trust/ca.pem"
CLIENT_CERTS = "/etc/streamhop/client-certs"
LISTENER_TLS = "/etc/streamhop/tls"
ISSUE_23_KEYS = frozenset(
    (
        "trust_env",
        "tls_cert_file",
        "tls_key_file",
        "proxy",
        "tls_ca_file",
        "tls_client_cert",
        "tls_client_key",
        "tls_server_name",
        "tls_verify",
    )
)
"""The config keys issue 23 adds (the sidecar's part of it defines what they do)."""
PROXY_URL = "http://svc-llm:pa55w0rd@proxy.corp.example:3128"
"""The proxy URL with credentials that the Secret ``corp-proxy`` holds (see SECRETS)."""


def _route(**keys: Any) -> dict[str, Any]:
    return {"prefix": "/", "upstream": "https://llm.corp.example", **keys}


COMPANY: Mapping[str, Any] = {
    "egressProxy": {"existingSecret": "corp-proxy"},
    "caBundle": {"configMap": "corp-ca"},
    "clientCertificates": [{"name": "corp", "secretName": "corp-client-tls"}],
    "tls": {
        "enabled": True,
        "certManager": {"enabled": True, "issuerRef": {"name": "corp-ca", "kind": "ClusterIssuer"}},
    },
    "config": {
        "routes": [
            # A public provider: through the egress proxy of the environment, public roots.
            {
                "prefix": "/cerebras",
                "upstream": "https://api.cerebras.ai",
                "headers": {"Authorization": "Bearer ${CEREBRAS_API_KEY}"},
            },
            # The company's own gateway: direct, private CA, mutual TLS, another name.
            _route(
                prefix="/internal",
                proxy="",
                tls_ca_file=CA_BUNDLE,
                tls_client_cert=f"{CLIENT_CERTS}/corp/tls.crt",
                tls_client_key=f"{CLIENT_CERTS}/corp/tls.key",
                tls_server_name="llm-gateway.corp.internal",
            ),
            # A model server in the cluster: NO_PROXY keeps it off the proxy.
            {"prefix": "/vllm", "upstream": "https://vllm.llm.svc.cluster.local:8443"},
        ]
    },
}
"""A gateway in a company network: every option of issue 23 on (merged over ALL_ON or not)."""

SIDECAR_COMPANY: Mapping[str, Any] = {
    "egressProxy": {"httpsProxy": "http://proxy.corp.example:3128"},
    "caBundle": {"secret": "corp-ca", "key": "bundle.pem", "setSslCertFile": True},
    "clientCertificates": [{"name": "corp", "secretName": "corp-client-tls"}],
}
"""The sidecar's share of it (no listener TLS: the sidecar listens on loopback)."""


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
    [
        ({}, OLDEST_KUBERNETES),
        (ALL_ON, OLDEST_KUBERNETES),
        (SIDECAR, NATIVE_SIDECAR_KUBERNETES),
        (deep_merge(ALL_ON, COMPANY), OLDEST_KUBERNETES),
    ],
    ids=["gateway", "all-on", "sidecar", "company-network"],
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
    yield "company-network", OLDEST_KUBERNETES, render(deep_merge(ALL_ON, COMPANY)).objects
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
    company = {"streamhop": SIDECAR_COMPANY}
    yield (
        "example-native-company",
        NATIVE_SIDECAR_KUBERNETES,
        render_example(tmp / "cn", company).objects,
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
        builtin = [o for o in objects if o["kind"] not in NOT_IN_KUBERNETES_SCHEMAS]
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
        # Credentials in a proxy URL would sit in the pod spec or the ConfigMap: refused.
        ({"egressProxy": {"httpsProxy": "http://u:pw@proxy:3128"}}, "/egressProxy/httpsProxy"),
        ({"egressProxy": {"httpProxy": "proxy:3128"}}, "/egressProxy/httpProxy"),
        ({"egressProxy": {"noProxy": ".svc,.cluster.local"}}, "/egressProxy/noProxy"),
        ({"config": {"routes": [_route(proxy="http://u:pw@proxy:3128")]}}, "/routes/0/proxy"),
        ({"config": {"routes": [_route(proxy="https://proxy:3128")]}}, "/routes/0/proxy"),
        ({"config": {"routes": [_route(tls_verify="false")]}}, "/routes/0/tls_verify"),
        ({"config": {"routes": [_route(tls_ca_file="ca.pem")]}}, "/routes/0/tls_ca_file"),
        ({"config": {"routes": [_route(tls_client_key="/k.pem")]}}, "tls_client_cert"),
        ({"config": {"routes": [_route(tls_server_name="a b")]}}, "tls_server_name"),
        ({"config": {"server": {"trust_env": "yes"}}}, "trust_env"),
        ({"config": {"server": {"tls_cert_file": "/c.pem"}}}, "tls_cert_file"),
        ({"caBundle": {"setSslCertFile": "true"}}, "/caBundle/setSslCertFile"),
        ({"caBundle": {"key": "ca/crt"}}, "/caBundle/key"),
        (
            {"clientCertificates": [{"name": "Corp", "secretName": "c"}]},
            "/clientCertificates/0/name",
        ),
        ({"clientCertificates": [{"name": "corp"}]}, "secretName"),
        ({"tls": {"enabled": "true"}}, "/tls/enabled"),
        ({"tls": {"certManager": {"issuerRef": {"kind": ""}}}}, "/tls/certManager/issuerRef/kind"),
        ({"tls": {"certManager": {"dnsNames": ["Streamhop.LLM"]}}}, "/tls/certManager/dnsNames/0"),
        ({"tls": {"certManager": {"duration": "90d"}}}, "/tls/certManager/duration"),
        ({"tls": {"secret": "x"}}, "secret"),
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
        ({"egressProxy": {"existingSecret": "p", "httpsProxyKey": ""}}, "neither egressProxy"),
        (
            {"egressProxy": {"existingSecret": "p", "httpsProxy": "http://proxy:3128"}},
            "HTTPS_PROXY would come from both",
        ),
        (
            {
                "egressProxy": {"httpsProxy": "http://proxy:3128"},
                "config": {"server": {"trust_env": False}},
            },
            "config.server.trust_env is false",
        ),
        ({"caBundle": {"configMap": "a", "secret": "b"}}, 'caBundle.configMap ("a") and'),
        ({"caBundle": {"setSslCertFile": True}}, "no bundle is mounted there"),
        (
            {
                "clientCertificates": [
                    {"name": "a", "secretName": "x"},
                    {"name": "a", "secretName": "y"},
                ]
            },
            'two entries named "a"',
        ),
        (
            {"config": {"routes": [_route(tls_ca_file="/etc/streamhop/trust/ca.pem")]}},
            'tls_ca_file = "/etc/streamhop/trust/ca.pem", but the chart mounts no such file',
        ),
        (
            {
                "clientCertificates": [{"name": "corp", "secretName": "x"}],
                "config": {"routes": [_route(tls_client_cert=f"{CLIENT_CERTS}/crop/tls.crt")]},
            },
            f"it mounts {CLIENT_CERTS}/corp/tls.crt, {CLIENT_CERTS}/corp/tls.key",
        ),
        ({"tls": {"enabled": True}}, "tls.enabled needs the listener's certificate"),
        ({"mode": "sidecar", "tls": {"enabled": True, "secretName": "t"}}, "gateway mode"),
        (
            {"tls": {"certManager": {"enabled": True, "issuerRef": {"name": "ca"}}}},
            "tls.enabled is false, so nothing would use it",
        ),
        (
            {"tls": {"enabled": True, "certManager": {"enabled": True}}},
            "needs tls.certManager.issuerRef.name",
        ),
        (
            {"config": {"server": {"workers": 2}, "resume": {"enabled": True}}},
            'config.server.workers is 2, but config.resume.store is "memory"',
        ),
    ],
)
def test_impossible_combinations_fail_at_render_with_the_reason(
    values: Mapping[str, Any], message: str
) -> None:
    with pytest.raises(helm.HelmError, match=re.escape(message)):
        render(values)


def test_workers_render_into_the_config_and_the_streams_alert() -> None:
    assert render({}).config["server"]["workers"] == 1
    values = {"config": {"server": {"workers": 2}}, "prometheusRule": {"enabled": True}}
    rendered = render(values)
    assert rendered.config["server"]["workers"] == 2
    # max_streams is per worker: the pod holds workers times as many.
    rules = [r for g in rendered.one("PrometheusRule")["spec"]["groups"] for r in g["rules"]]
    (near,) = [r for r in rules if r.get("alert") == "StreamhopStreamsNearLimit"]
    assert " / 20000 >= " in near["expr"]
    # "auto" renders as written (streamhop resolves it from the pod's CPUs); the alert then
    # counts one worker, and a memory resume store is refused as for any number above 1.
    auto = render({"config": {"server": {"workers": "auto"}}, "prometheusRule": {"enabled": True}})
    assert auto.config["server"]["workers"] == "auto"
    with pytest.raises(helm.HelmError, match=re.escape("config.resume.store")):
        render({"config": {"server": {"workers": "auto"}, "resume": {"enabled": True}}})


# The schema's config part is generated from the config model: tests/kubernetes/
# test_config_schema.py checks that it is fresh and that its keys are exactly the model's.


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
    "corp-proxy": {"https-proxy": PROXY_URL},
}
"""The cluster's Secrets that ALL_ON (and ``_redis_values``, COMPANY) name: Secret -> key ->
value."""


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


# --- company networks: egress proxy, private CA, client certificates, TLS (issue 23) -----------


def gateway_pod(rendered: Rendered) -> tuple[dict[str, Any], dict[str, Any]]:
    pod: dict[str, Any] = rendered.one("Deployment")["spec"]["template"]["spec"]
    return pod, streamhop_container(pod)


def mounted_files(
    rendered: Rendered, pod_spec: Mapping[str, Any], container: Mapping[str, Any]
) -> dict[str, tuple[str, str, str]]:
    """Every file the kubelet puts into ``container`` from a ConfigMap or a Secret: absolute
    path -> (``"configMap"`` or ``"secret"``, object name, key). A source without ``items``
    (the chart's own ConfigMap) brings every key of the rendered object."""
    own = {o["metadata"]["name"]: o["data"] for o in rendered.of_kind("ConfigMap")}
    volumes = {v["name"]: v for v in pod_spec["volumes"]}
    files: dict[str, tuple[str, str, str]] = {}
    for mount in container["volumeMounts"]:
        volume = volumes[mount["name"]]
        if "emptyDir" in volume:
            continue
        for source in volume["projected"]["sources"] if "projected" in volume else [volume]:
            (kind,) = source.keys() & {"configMap", "secret"}
            ref = source[kind]
            items = ref.get("items") or [{"key": k, "path": k} for k in own[ref["name"]]]
            for item in items:
                path = f"{mount['mountPath']}/{item['path']}"
                assert path not in files, f"two sources write {path}"
                files[path] = (kind, ref["name"], item["key"])
    return files


def assert_mounts_are_read_only(container: Mapping[str, Any]) -> None:
    """Only /tmp (an emptyDir) is writable; the config, CA and key files are not."""
    for mount in container["volumeMounts"]:
        assert mount.get("readOnly", False) is (mount["mountPath"] != "/tmp"), mount


def load_with_streamhop(path: Path, environ: Mapping[str, str]) -> Config:
    """streamhop's own loader on ``path``; skipped while it does not know issue 23's keys (the
    sidecar's part of the issue brings them)."""
    try:
        return load_config(path, environ)
    except ConfigError as exc:
        if exc.reason.startswith("unknown key") and exc.key.rpartition(".")[2] in ISSUE_23_KEYS:
            pytest.skip(f"streamhop's config loader does not know {exc.key} yet")
        raise


def test_egress_proxy_from_plain_values_is_the_containers_environment() -> None:
    proxy = "http://proxy.corp.example:3128"
    rendered = render({"egressProxy": {"httpsProxy": proxy, "httpProxy": proxy}})
    assert process_env(gateway_pod(rendered)[1]) == {
        "HTTPS_PROXY": proxy,
        "HTTP_PROXY": proxy,
        "NO_PROXY": "localhost,127.0.0.1,.svc,.cluster.local",
    }
    # The environment, not the config: streamhop honours it with [server] trust_env (its
    # default), so the ConfigMap does not change.
    assert rendered.toml_text == render().toml_text
    # No proxy, no NO_PROXY: by default the container has no environment at all.
    assert "env" not in gateway_pod(render())[1]
    assert "env" not in gateway_pod(render({"egressProxy": {"noProxy": ["corp.example"]}}))[1]


def test_a_proxy_url_with_credentials_comes_from_its_secret_and_nowhere_else() -> None:
    rendered = render(COMPANY)
    container = gateway_pod(rendered)[1]
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e}
    assert refs == {"HTTPS_PROXY": {"name": "corp-proxy", "key": "https-proxy"}}
    assert {e["name"]: e["value"] for e in container["env"] if "value" in e} == {
        "NO_PROXY": "localhost,127.0.0.1,.svc,.cluster.local"
    }
    assert process_env(container)["HTTPS_PROXY"] == PROXY_URL
    # The chart names the Secret only: no rendered object holds the proxy, the ConfigMap
    # included (the provider key reaches streamhop the same way).
    assert "proxy.corp.example" not in "".join(rendered.files.values())
    assert "proxy" not in rendered.config["routes"][0]
    # HTTP_PROXY from the same Secret, by its own key.
    both = render({"egressProxy": {"existingSecret": "corp-proxy", "httpProxyKey": "http-proxy"}})
    refs = {
        e["name"]: e["valueFrom"]["secretKeyRef"]
        for e in gateway_pod(both)[1]["env"]
        if "valueFrom" in e
    }
    assert refs["HTTP_PROXY"] == {"name": "corp-proxy", "key": "http-proxy"}


@pytest.mark.parametrize("set_ssl_cert_file", [False, True], ids=["tls_ca_file", "SSL_CERT_FILE"])
@pytest.mark.parametrize("kind", ["configMap", "secret"])
def test_the_ca_bundle_is_mounted_at_the_documented_path(
    kind: str, set_ssl_cert_file: bool
) -> None:
    values = {
        "caBundle": {kind: "corp-ca", "key": "bundle.pem", "setSslCertFile": set_ssl_cert_file}
    }
    rendered = render(values)
    pod, container = gateway_pod(rendered)
    assert mounted_files(rendered, pod, container) == {
        "/etc/streamhop/streamhop.toml": ("configMap", "streamhop-config", "streamhop.toml"),
        CA_BUNDLE: (kind, "corp-ca", "bundle.pem"),
    }
    # SSL_CERT_FILE replaces the system store for the whole process: only when asked for.
    assert process_env(container) == ({"SSL_CERT_FILE": CA_BUNDLE} if set_ssl_cert_file else {})
    assert_mounts_are_read_only(container)
    assert container["args"][-1] == "/etc/streamhop/streamhop.toml"


def test_client_certificates_are_mounted_by_name() -> None:
    certificates = [
        {"name": "corp", "secretName": "corp-client-tls"},
        {"name": "partner-b", "secretName": "b-mtls"},
    ]
    rendered = render({"clientCertificates": certificates})
    pod, container = gateway_pod(rendered)
    files = mounted_files(rendered, pod, container)
    assert {p: f for p, f in files.items() if p.startswith(f"{CLIENT_CERTS}/")} == {
        f"{CLIENT_CERTS}/corp/tls.crt": ("secret", "corp-client-tls", "tls.crt"),
        f"{CLIENT_CERTS}/corp/tls.key": ("secret", "corp-client-tls", "tls.key"),
        f"{CLIENT_CERTS}/partner-b/tls.crt": ("secret", "b-mtls", "tls.crt"),
        f"{CLIENT_CERTS}/partner-b/tls.key": ("secret", "b-mtls", "tls.key"),
    }
    assert_mounts_are_read_only(container)
    assert "env" not in container


def test_tls_on_the_listener_mounts_its_secret_and_names_it_in_the_config() -> None:
    plain = render()
    rendered = render({"tls": {"enabled": True, "secretName": "streamhop-listener"}})
    pod, container = gateway_pod(rendered)
    files = mounted_files(rendered, pod, container)
    server = rendered.config["server"]
    assert server["tls_cert_file"] == f"{LISTENER_TLS}/tls.crt"
    assert server["tls_key_file"] == f"{LISTENER_TLS}/tls.key"
    assert files[server["tls_cert_file"]] == ("secret", "streamhop-listener", "tls.crt")
    assert files[server["tls_key_file"]] == ("secret", "streamhop-listener", "tls.key")
    assert "tls_cert_file" not in plain.config["server"] and not rendered.of_kind("Certificate")
    # The Service says https on the proxy port (Istio, Traefik and others go by the name or
    # appProtocol); the admin port stays plain HTTP, and so do the probes on it.
    ports = {p["port"]: p for p in rendered.one("Service")["spec"]["ports"]}
    assert ports[8787] == {
        "name": "https",
        "port": 8787,
        "targetPort": "proxy",
        "protocol": "TCP",
        "appProtocol": "https",
    }
    assert ports[9464] == next(
        p for p in plain.one("Service")["spec"]["ports"] if p["port"] == 9464
    )
    admin = {p["name"]: p["containerPort"] for p in container["ports"]}["admin"]
    assert port_of(server["admin_listen"]) == admin
    for probe, path in ADMIN_PATHS.items():
        assert container[probe]["httpGet"] == {"path": path, "port": admin}, probe  # no scheme
    # The same hardening; the certificate's files are read-only like the config.
    assert container["securityContext"] == gateway_pod(plain)[1]["securityContext"]
    assert_mounts_are_read_only(container)
    assert 'OpenAI(base_url="https://streamhop.llm.svc.cluster.local:8787/v1"' in rendered.notes


def test_cert_manager_issues_the_certificate_the_listener_mounts() -> None:
    rendered = render(COMPANY)
    pod, container = gateway_pod(rendered)
    files = mounted_files(rendered, pod, container)
    spec = rendered.one("Certificate")["spec"]
    assert spec["secretName"] == "streamhop-tls"
    assert files[f"{LISTENER_TLS}/tls.crt"] == ("secret", spec["secretName"], "tls.crt")
    assert files[f"{LISTENER_TLS}/tls.key"] == ("secret", spec["secretName"], "tls.key")
    assert spec["issuerRef"] == {
        "name": "corp-ca",
        "kind": "ClusterIssuer",
        "group": "cert-manager.io",
    }
    # By default the names apps in the cluster use for the Service, the base URL among them.
    service = rendered.one("Service")["metadata"]["name"]
    assert spec["dnsNames"] == [
        service,
        f"{service}.llm",
        f"{service}.llm.svc",
        f"{service}.llm.svc.cluster.local",
    ]
    assert f"https://{spec['dnsNames'][-1]}:8787" in rendered.notes
    custom = render(deep_merge(COMPANY, CUSTOM_CERTIFICATE)).one("Certificate")["spec"]
    assert custom["secretName"] == "llm-gateway-tls"
    assert custom["dnsNames"] == ["llm.corp.example", "streamhop.llm.svc"]
    assert (custom["duration"], custom["renewBefore"]) == ("2160h", "360h")


CUSTOM_CERTIFICATE: Mapping[str, Any] = {
    "tls": {
        "secretName": "llm-gateway-tls",
        "certManager": {
            "dnsNames": ["llm.corp.example", "streamhop.llm.svc"],
            "duration": "2160h",
            "renewBefore": "360h",
        },
    }
}


def test_the_certificate_matches_cert_managers_model() -> None:
    """kubernetes-validate has no schema for cert-manager's kinds; cert-manager's generated
    models do: the Certificate parses with nothing left over (a misspelt field would be
    dropped, and the round trip would differ)."""
    cert_manager = pytest.importorskip(
        "cloudcoil.models.cert_manager.v1", reason="pip install cloudcoil-models-cert-manager"
    )
    for values in (COMPANY, deep_merge(COMPANY, CUSTOM_CERTIFICATE)):
        certificate = render(values).one("Certificate")
        parsed = cert_manager.Certificate.model_validate(certificate)
        assert parsed.model_dump(by_alias=True, exclude_none=True) == certificate


def test_route_egress_keys_render_as_toml_strings_and_booleans() -> None:
    routes = [
        _route(
            prefix="/a",
            proxy="http://proxy.corp.example:3128",
            tls_server_name="llm-gateway.corp.internal",
            tls_verify=False,
        ),
        _route(prefix="/b", proxy=""),
        _route(prefix="/c", tls_verify=True),
    ]
    rendered = render({"config": {"routes": routes, "server": {"trust_env": False}}})
    a, b, c = rendered.config["routes"]
    assert a["proxy"] == "http://proxy.corp.example:3128"
    assert a["tls_server_name"] == "llm-gateway.corp.internal"
    assert a["tls_verify"] is False and c["tls_verify"] is True
    # "" means "go direct even where the environment names a proxy", so unlike other empty
    # strings it is written; without the key, the environment's proxy applies.
    assert b["proxy"] == "" and "proxy" not in c
    assert rendered.config["server"]["trust_env"] is False
    assert 'WARNING: route "/a" has tls_verify = false' in rendered.notes
    assert "WARNING: route" not in render().notes


def _tls_secret(cert: trustme.LeafCert) -> dict[str, str]:
    """A kubernetes.io/tls Secret's data (decoded) for ``cert``."""
    chain = "".join(pem.bytes().decode() for pem in cert.cert_chain_pems)
    return {"tls.crt": chain, "tls.key": cert.private_key_pem.bytes().decode()}


def test_the_pod_holds_every_file_the_config_names_and_streamhop_loads_them(tmp_path: Path) -> None:
    """The gateway with everything on, as streamhop meets it in the pod: the projected volume
    written out as the kubelet would (a CA, the listener's and a client certificate made for
    the test), the environment from the Secrets; then streamhop's own loader, which opens every
    file, and its egress rules, which pick each route's way out."""
    rendered = render(deep_merge(ALL_ON, COMPANY))
    pod, container = gateway_pod(rendered)
    files = mounted_files(rendered, pod, container)
    config = rendered.config
    named = [config["server"]["tls_cert_file"], config["server"]["tls_key_file"]]
    for route in config["routes"]:
        named += [
            route[k] for k in ("tls_ca_file", "tls_client_cert", "tls_client_key") if k in route
        ]
    assert len(named) == 5 and set(named) <= files.keys()

    root = tmp_path / "etc" / "streamhop"
    ca = trustme.CA()
    certificate = rendered.one("Certificate")["spec"]
    cluster = {
        ("configMap", rendered.config_map()["metadata"]["name"]): {
            "streamhop.toml": rendered.toml_text.replace("/etc/streamhop/", f"{root}/")
        },
        ("configMap", "corp-ca"): {"ca.crt": ca.cert_pem.bytes().decode()},
        ("secret", "corp-client-tls"): _tls_secret(ca.issue_cert("streamhop.llm.svc")),
        ("secret", certificate["secretName"]): _tls_secret(ca.issue_cert(*certificate["dnsNames"])),
    }
    for path, (kind, name, key) in files.items():
        target = root / Path(path).relative_to("/etc/streamhop")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(cluster[kind, name][key])

    env = process_env(container)
    loaded = load_with_streamhop(root / "streamhop.toml", env)
    assert loaded.server.tls_cert_file == str(root / "tls" / "tls.crt")
    internal = next(r for r in loaded.routes if r.prefix == "/internal")
    assert internal.tls_ca_file == str(root / "trust" / "ca.pem")
    assert internal.tls_client_key == str(root / "client-certs" / "corp" / "tls.key")

    egress = pytest.importorskip("streamhop.sidecar.upstream.egress")
    ways = {
        r.prefix: egress.route_proxy(r, trust_env=loaded.server.trust_env, environ=env)
        for r in loaded.routes
    }
    public = ways["/cerebras"]
    assert (public.host, public.port) == ("proxy.corp.example", 3128)
    assert public.authorization == b"Basic " + base64.b64encode(b"svc-llm:pa55w0rd")
    assert ways["/internal"] is None  # proxy = "": direct
    assert ways["/vllm"] is None  # NO_PROXY: .cluster.local


def test_the_sidecar_gets_the_proxy_the_ca_and_the_client_certificates_too(tmp_path: Path) -> None:
    rendered = render_example(tmp_path, {"streamhop": SIDECAR_COMPANY})
    pod = rendered.one("Deployment")["spec"]["template"]["spec"]
    container = streamhop_container(pod)
    files = mounted_files(rendered, pod, container)
    assert files[CA_BUNDLE] == ("secret", "corp-ca", "bundle.pem")
    assert files[f"{CLIENT_CERTS}/corp/tls.crt"] == ("secret", "corp-client-tls", "tls.crt")
    assert files[f"{CLIENT_CERTS}/corp/tls.key"] == ("secret", "corp-client-tls", "tls.key")
    assert_mounts_are_read_only(container)
    env = process_env(container)
    assert env["HTTPS_PROXY"] == "http://proxy.corp.example:3128"
    assert env["SSL_CERT_FILE"] == CA_BUNDLE
    # They are the sidecar's: the app container mounts neither the files nor gets the proxy.
    app = next(c for c in pod["containers"] if c["name"] == "chat")
    assert "streamhop-config" not in {m["name"] for m in app.get("volumeMounts", [])}
    assert not {"HTTPS_PROXY", "SSL_CERT_FILE"} & {e["name"] for e in app.get("env", [])}


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


# --- issue 24: every documented key, base URLs, Kubernetes versions, defaults -------------------

EXAMPLE = ROOT / "config.example.toml"
_COMMENTED_KEY = re.compile(r"^# ([A-Za-z_][A-Za-z0-9_-]*) = (.+)$")
_TABLE = re.compile(r"^\[\[?([a-z.]+)\]\]?$")
CHART_OWNED = {
    "server": ("listen", "admin_listen", "tls_cert_file", "tls_key_file"),
    "record": ("dir",),
}
"""Keys the chart renders itself (from mode, ports, tls and record), refused in values."""


def example_tables() -> dict[str, dict[str, Any]]:
    """config.example.toml as tables of keys: its first route as ``routes``, and its
    commented-out keys (``# timeout_s = 300.0``: documented, off by default) set too."""
    data = tomllib.loads(EXAMPLE.read_text())
    tables: dict[str, dict[str, Any]] = {
        name: dict(value) for name, value in data.items() if name != "routes"
    }
    tables["routes"] = dict(data["routes"][0])
    tables["routes"]["headers"] = dict(tables["routes"].get("headers", {}))
    table = ""
    seen_routes = 0
    for line in EXAMPLE.read_text().splitlines():
        if found := _TABLE.match(line):
            table = found.group(1)
            seen_routes += table == "routes"
            continue
        found = _COMMENTED_KEY.match(line)
        if not found or not table or seen_routes > 1:
            continue
        try:
            value = tomllib.loads(f"{found.group(1)} = {found.group(2)}")
        except tomllib.TOMLDecodeError:
            continue  # prose that looks like a key
        target = tables["routes"]["headers"] if table == "routes.headers" else tables[table]
        assert found.group(1) not in target, (table, found.group(1))
        target.update(value)
    return tables


def test_the_example_walk_finds_the_commented_out_keys_too() -> None:
    tables = example_tables()
    assert {"tls_cert_file", "tls_key_file"} <= tables["server"].keys()
    assert {"timeout_s", "proxy", "tls_ca_file", "tls_client_key"} <= tables["routes"].keys()
    assert tables["routes"]["headers"] == {"Authorization": "Bearer ${CEREBRAS_API_KEY}"}
    assert "otlp_endpoint" in tables["tracing"]
    # And nothing the model does not have (streamhop's loader would refuse it).
    for name, keys in tables.items():
        cls = {"routes": model.RouteConfig}.get(name) or getattr(
            model, f"{name.capitalize()}Config"
        )
        assert keys.keys() <= cls.__dataclass_fields__.keys(), name


def test_every_key_of_config_example_renders_through_the_chart_and_streamhop_loads_it(
    tmp_path: Path,
) -> None:
    """Every key config.example.toml documents, commented-out ones included, as chart values
    through Helm's engine; the rendered streamhop.toml, with the files it names written where
    the pod has them, loads with streamhop's own loader into the same config as the example."""
    tables = example_tables()
    config: dict[str, Any] = {
        name: {k: v for k, v in keys.items() if k not in CHART_OWNED.get(name, ())}
        for name, keys in tables.items()
    }
    config["routes"] = [config["routes"]]
    server, route = tables["server"], tables["routes"]
    # The files the example names, mounted by the chart at exactly those paths.
    client_dir = Path(route["tls_client_cert"]).parent
    assert route["tls_client_key"] == f"{client_dir}/tls.key"
    assert client_dir.parent == Path(CLIENT_CERTS) and route["tls_ca_file"] == CA_BUNDLE
    values = {
        "config": config,
        "caBundle": {"configMap": "corp-ca"},
        "clientCertificates": [{"name": client_dir.name, "secretName": "gateway-client-tls"}],
        "tls": {"enabled": True, "secretName": "streamhop-listener"},
    }
    rendered = render(values)
    toml = rendered.config
    for name, keys in tables.items():
        table = toml["routes"][0] if name == "routes" else toml[name]
        for key, value in keys.items():
            if value == "" or key in ("listen", "admin_listen"):
                continue  # "" is left out (the default); the chart sets the listeners
            assert table[key] == value, (name, key)
    assert server["tls_cert_file"] == toml["server"]["tls_cert_file"]

    pod, container = gateway_pod(rendered)
    files = mounted_files(rendered, pod, container)
    root = tmp_path / "etc" / "streamhop"
    ca = trustme.CA()
    content = {
        ("configMap", "corp-ca"): {"ca.crt": ca.cert_pem.bytes().decode()},
        ("secret", "gateway-client-tls"): _tls_secret(ca.issue_cert("streamhop.llm.svc")),
        ("secret", "streamhop-listener"): _tls_secret(ca.issue_cert("streamhop.llm.svc")),
    }
    for path, (kind, name, key) in files.items():
        if path.endswith("streamhop.toml"):
            continue
        target = root / Path(path).relative_to("/etc/streamhop")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content[kind, name][key])
    here = rendered.toml_text.replace("/etc/streamhop/", f"{root}/")
    (root / "streamhop.toml").write_text(here)
    env = {**process_env(container), "CEREBRAS_API_KEY": "k1"}
    loaded = load_config(root / "streamhop.toml", env)

    example = tomllib.loads(EXAMPLE.read_text().replace("/etc/streamhop/", f"{root}/"))
    example_tables_here = tomllib.loads(json_to_toml(tables).replace("/etc/streamhop/", f"{root}/"))
    expected = config_from_dict(example_tables_here, env)
    assert loaded.routes == expected.routes
    assert loaded.server == dataclasses.replace(
        expected.server, listen="0.0.0.0:8787", admin_listen="0.0.0.0:9464"
    )
    for name in ("rechunk", "backpressure", "resume", "tracing", "metrics"):
        assert getattr(loaded, name) == getattr(expected, name), name
    assert example.keys() == tables.keys()


def json_to_toml(tables: Mapping[str, Mapping[str, Any]]) -> str:
    """``tables`` (as :func:`example_tables` returns them) as TOML, ``routes`` as one
    ``[[routes]]``: the example with its commented-out keys switched on."""
    lines: list[str] = []
    for name, keys in tables.items():
        lines.append(f"[[{name}]]" if name == "routes" else f"[{name}]")
        nested = {k: v for k, v in keys.items() if isinstance(v, Mapping)}
        for key, value in keys.items():
            if key not in nested:
                lines.append(f"{key} = {json.dumps(value)}")
        for key, value in nested.items():
            lines.append(f"[{name}.{key}]")
            lines += [f"{json.dumps(k)} = {json.dumps(v)}" for k, v in value.items()]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    "config",
    [
        {"rechunk": {"flush_boundary": "sentence", "max_boundary_wait_ms": 100}},
        {"rechunk": {"coalesce_reads": True}},
        {"resume": {"handoff_jitter_ms": 500}},
        {"tracing": {"otlp_endpoint": "http://otel:4318", "export_metrics": True}},
        {"routes": [_route(client_on_disconnect=True)]},
    ],
    ids=["flush_boundary", "coalesce_reads", "handoff_jitter_ms", "export_metrics", "client"],
)
def test_the_keys_issue_24_found_refused_render_and_load(config: Mapping[str, Any]) -> None:
    rendered = render({"config": config})
    loaded = config_from_dict(rendered.config, {})
    for name, keys in config.items():
        for key, value in (keys[0] if name == "routes" else keys).items():
            got = getattr(loaded.routes[0] if name == "routes" else getattr(loaded, name), key)
            assert got == value, (name, key)


def _sdk_lines(notes: str) -> dict[str, tuple[str, str]]:
    """route prefix -> (SDK class, base_url) as NOTES print them."""
    found = re.findall(
        r'route "([^"]+)" -> \S+\n\s+(OpenAI|Anthropic)\(base_url="([^"]+)"\)', notes
    )
    return {prefix: (sdk, url) for prefix, sdk, url in found}


SDK_PATHS = {"OpenAI": "/chat/completions", "Anthropic": "/v1/messages"}
"""What each SDK appends to its base_url for a streamed chat."""
PROVIDER_PATHS = {"OpenAI": "/v1/chat/completions", "Anthropic": "/v1/messages"}
"""Where the provider answers it."""


@pytest.mark.parametrize(
    ("routes", "expected"),
    [
        (
            ALL_ON["config"]["routes"],
            {"/cerebras": ("OpenAI", "/cerebras/v1"), "/anthropic": ("Anthropic", "/anthropic")},
        ),
        (
            [
                {"prefix": "/", "upstream": "https://u:pw@api.openai.com", "format": "openai-chat"},
                {"prefix": "/claude/", "upstream": "https://api.anthropic.com"},
                {"prefix": "/vllm", "upstream": "http://vllm.llm.svc:8000/v1"},
            ],
            {
                "/": ("OpenAI", "/v1"),
                "/claude/": ("Anthropic", "/claude"),
                "/vllm": ("OpenAI", "/vllm"),
            },
        ),
    ],
    ids=["docs", "mixed"],
)
def test_notes_print_a_working_base_url_for_every_route(
    routes: list[dict[str, Any]], expected: Mapping[str, tuple[str, str]]
) -> None:
    """Each printed base_url plus what its SDK appends reaches, through streamhop's own route
    table, the provider's endpoint (issue 24: ".../v1" for prefixed routes was a 404)."""
    rendered = render({"config": {"routes": routes}})
    service = "http://streamhop.llm.svc.cluster.local:8787"
    printed = _sdk_lines(rendered.notes)
    assert printed == {p: (sdk, service + path) for p, (sdk, path) in expected.items()}
    assert ":pw@" not in rendered.notes  # a route's credentials are never printed
    keys = {"CEREBRAS_API_KEY": "k1", "ANTHROPIC_API_KEY": "k2"}
    table = RouteTable(config_from_dict(rendered.config, keys).routes)
    for prefix, (sdk, url) in printed.items():
        path = normalise_path(urlsplit(url).path + SDK_PATHS[sdk])
        route = table.match(path)
        assert route is not None and route.prefix == prefix, url
        upstream = str(table.upstream_url(route, path, b""))
        assert upstream.endswith(PROVIDER_PATHS[sdk]), (url, upstream)
        assert "/v1/v1/" not in upstream


def test_the_sidecar_notes_print_the_loopback_url_per_route() -> None:
    routes = ALL_ON["config"]["routes"]
    notes = render(deep_merge(SIDECAR, {"config": {"routes": routes}})).notes
    assert _sdk_lines(notes) == {
        "/cerebras": ("OpenAI", "http://127.0.0.1:8787/cerebras/v1"),
        "/anthropic": ("Anthropic", "http://127.0.0.1:8787/anthropic"),
    }


@pytest.mark.parametrize(
    ("kube_version", "native"),
    [
        (OLDEST_KUBERNETES, False),
        ("1.28.9", False),
        (NATIVE_SIDECAR_KUBERNETES, True),
        (NEWEST_KUBERNETES, True),
    ],
)
def test_the_native_sidecar_needs_kubernetes_1_29_and_falls_back_to_a_plain_one(
    kube_version: str, native: bool, tmp_path: Path
) -> None:
    """An app chart that passes .Capabilities (docs/kubernetes.md) gets the native sidecar from
    1.29 and a plain container before, and the result passes kubernetes-validate for that
    version; NOTES say which."""
    rendered = render_app(tmp_path, kube_version=kube_version)
    pod = rendered.one("Deployment")["spec"]["template"]["spec"]
    container = streamhop_container(pod)
    assert (container in pod.get("initContainers", [])) is native
    assert container.get("restartPolicy") == ("Always" if native else None)
    # A plain sidecar keeps serving while the app finishes; a native one stops after the app.
    assert ("lifecycle" in container) is not native
    manifest = tmp_path / "app.yaml"
    manifest.write_text(yaml.safe_dump(rendered.one("Deployment")))
    result = subprocess.run(
        [KUBERNETES_VALIDATE, "--strict", "-k", kube_version, manifest],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, (kube_version, result.stdout, result.stderr)
    notes = render(SIDECAR, kube_version=kube_version).notes
    assert ("has no native sidecars" in notes) is not native
    assert ("it is a native sidecar" in notes) is native


def test_the_example_chart_passes_its_capabilities_so_the_sidecar_follows_the_version(
    tmp_path: Path,
) -> None:
    """examples/kubernetes/chat-with-sidecar hands .Capabilities to the streamhop templates: on
    1.25 the sidecar is a plain container, from 1.29 a native one (an init container with
    restartPolicy Always)."""
    old = render_example(tmp_path / "old", kube_version=OLDEST_KUBERNETES)
    pod = old.one("Deployment")["spec"]["template"]["spec"]
    assert not pod.get("initContainers")
    assert streamhop_container(pod).get("restartPolicy") is None
    new = render_example(tmp_path / "new", kube_version=NATIVE_SIDECAR_KUBERNETES)
    pod = new.one("Deployment")["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["initContainers"]] == ["streamhop"]
    assert streamhop_container(pod).get("restartPolicy") == "Always"


def test_gateway_renders_valid_manifests_for_1_25_and_1_29(tmp_path: Path) -> None:
    for version in (OLDEST_KUBERNETES, NATIVE_SIDECAR_KUBERNETES):
        objects = render(ALL_ON, kube_version=version).objects
        builtin = [o for o in objects if o["kind"] not in NOT_IN_KUBERNETES_SCHEMAS]
        manifest = tmp_path / f"gateway-{version}.yaml"
        manifest.write_text(yaml.safe_dump_all(builtin))
        result = subprocess.run(
            [KUBERNETES_VALIDATE, "--strict", "-k", version, manifest],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, (version, result.stdout, result.stderr)


def test_one_slow_readiness_probe_does_not_take_a_pod_out() -> None:
    container = streamhop_container(render().one("Deployment")["spec"]["template"]["spec"])
    readiness, liveness = container["readinessProbe"], container["livenessProbe"]
    assert readiness["failureThreshold"] >= 3
    assert readiness["periodSeconds"] * readiness["failureThreshold"] >= 15
    assert readiness["timeoutSeconds"] >= 2
    # Liveness restarts the process: slower to give up than readiness.
    assert (
        liveness["periodSeconds"] * liveness["failureThreshold"]
        > readiness["periodSeconds"] * readiness["failureThreshold"]
    )


def test_notes_warn_about_the_unpublished_default_image_and_say_how_to_build_it() -> None:
    notes = render().notes
    assert 'WARNING: the image is "streamhop:0.1.0"' in notes
    assert "buildah bud -f Dockerfile" in notes and "buildah push" in notes
    assert "image.repository" in notes
    assert (ROOT / "Dockerfile").is_file()
    assert "WARNING: the image" not in render(ALL_ON).notes
    assert "WARNING: the image" not in render({"image": {"repository": "ghcr.io/me/sh"}}).notes
