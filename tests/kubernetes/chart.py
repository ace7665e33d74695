"""Render the Helm chart with Helm's own engine (``helm-python-sdk`` binds Helm's Go library) and
hand the objects to the tests.

No cluster is involved: ``Chart.render`` is ``helm template``. The release is always named
``streamhop`` in namespace ``llm``, so the fullname (and the scrape ``job`` the alerts select) is
``streamhop``.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "streamhop"
DASHBOARD = CHART / "dashboards" / "streamhop.json"
EXAMPLES = ROOT / "examples" / "kubernetes"
RELEASE = "streamhop"
NAMESPACE = "llm"
OLDEST_KUBERNETES = "1.25.0"
"""Oldest version the gateway and the plain-container sidecar are validated against."""
NATIVE_SIDECAR_KUBERNETES = "1.29.0"
"""Oldest version with native sidecars (initContainers with restartPolicy: Always)."""
NEWEST_KUBERNETES = "1.37.0"

ALL_ON: Mapping[str, Any] = {
    "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
    "prometheusRule": {
        "enabled": True,
        "runbookBaseUrl": "https://git.example.com/streamhop/docs/kubernetes.md",
    },
    "dashboards": {"enabled": True, "annotations": {"grafana_folder": "LLM"}},
    "autoscaling": {"enabled": True, "targetMemoryUtilizationPercentage": 80},
    "config": {
        "resume": {"enabled": True, "store": "redis"},
        "tracing": {"otlp_endpoint": "http://otel-collector.observability:4318"},
        "metrics": {"models": ["llama-3.3-70b"]},
        "routes": [
            {
                "prefix": "/cerebras",
                "upstream": "https://api.cerebras.ai",
                "headers": {"Authorization": "Bearer ${CEREBRAS_API_KEY}"},
            },
            {
                "prefix": "/anthropic",
                "upstream": "https://api.anthropic.com",
                "format": "anthropic",
                "headers": {"x-api-key": "${ANTHROPIC_API_KEY}"},
            },
        ],
    },
    "secrets": {
        "providerKeys": {
            "existingSecret": "llm-provider-keys",
            "env": [
                {"name": "ANTHROPIC_API_KEY", "secretName": "anthropic", "secretKey": "api-key"}
            ],
        },
        "resumeBindingKey": {"existingSecret": "streamhop-resume"},
        "redisUrl": {"existingSecret": "streamhop-redis"},
    },
    "image": {"registry": "registry.example.com", "repository": "platform/streamhop"},
}
"""Every optional part of the gateway switched on."""

SIDECAR: Mapping[str, Any] = {
    "mode": "sidecar",
    "podMonitor": {"enabled": True, "selector": {"app.kubernetes.io/name": "chat"}},
    "prometheusRule": {"enabled": True},
    "dashboards": {"enabled": True},
}


@dataclass(frozen=True)
class Rendered:
    """One ``helm template``: every object, and the raw files by template path."""

    files: Mapping[str, str]
    objects: list[dict[str, Any]]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def one(self, kind: str) -> dict[str, Any]:
        found = self.of_kind(kind)
        assert len(found) == 1, (kind, [o["metadata"]["name"] for o in found])
        return found[0]

    def config_map(self) -> dict[str, Any]:
        """The ConfigMap holding ``streamhop.toml``."""
        return next(o for o in self.of_kind("ConfigMap") if "streamhop.toml" in o["data"])

    @property
    def toml_text(self) -> str:
        text: str = self.config_map()["data"]["streamhop.toml"]
        return text

    @property
    def config(self) -> dict[str, Any]:
        return tomllib.loads(self.toml_text)

    @property
    def notes(self) -> str:
        return next(v for k, v in self.files.items() if k.endswith("NOTES.txt"))


def deep_merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """``extra`` over ``base``, maps merged key by key (as Helm merges ``--values`` files)."""
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def documents(files: Mapping[str, str]) -> Iterator[dict[str, Any]]:
    for name, text in sorted(files.items()):
        if not name.endswith((".yaml", ".yml")):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                yield doc


def render(
    values: Mapping[str, Any] | None = None,
    chart: Path = CHART,
    *,
    kube_version: str | None = None,
) -> Rendered:
    """``helm template streamhop <chart> --namespace llm [--kube-version V]`` with ``values``.

    Args:
        kube_version: ``.Capabilities.KubeVersion`` (e.g. ``"1.25.0"``); ``None``: Helm's
            default (its client library's version).

    Raises:
        helm_python.HelmError: a template failed or the values broke values.schema.json.
    """
    with helm.Chart.load(chart) as loaded:
        if kube_version is None:
            files = loaded.render(
                dict(values or {}), name=RELEASE, namespace=NAMESPACE, is_install=True
            )
        else:
            files = _render_for(loaded, values, kube_version)
    return Rendered(files, list(documents(files)))


def _render_for(
    loaded: helm.Chart, values: Mapping[str, Any] | None, kube_version: str
) -> dict[str, str]:
    """``Chart.render`` with ``--kube-version``: helm-python-sdk 0.2 does not expose the option
    its native ``helm_render`` takes (``kube_version`` in its JSON options), so call that."""
    from helm_python import _native
    from helm_python.chart import _dumps

    opts = {
        "name": RELEASE,
        "namespace": NAMESPACE,
        "is_install": True,
        "kube_version": f"v{kube_version.removeprefix('v')}",
    }
    raw = loaded._raw()  # the one handle the native call needs
    text = _native.call_string("helm_render", raw, _dumps(dict(values or {})), json.dumps(opts))
    files: dict[str, str] = json.loads(text)
    return files


# --- the example app chart and the manifest for people without Helm ------------------------------

PLAIN_MANIFEST = EXAMPLES / "sidecar-plain.yaml"
PLAIN_VALUES: Mapping[str, Any] = {
    "streamhop": {
        "podMonitor": {"enabled": False},
        "prometheusRule": {"enabled": False},
        "dashboards": {"enabled": False},
    }
}
"""The plain manifest leaves out the objects that need the prometheus-operator CRDs."""
_HELM_ONLY_LABELS = ("helm.sh/chart", "app.kubernetes.io/managed-by")


def example_chart(workdir: Path) -> Path:
    """The example app chart with streamhop vendored in its charts/ (``helm dependency build``)."""
    import shutil

    target = workdir / "chat"
    shutil.copytree(EXAMPLES / "chat-with-sidecar", target)
    shutil.copytree(CHART, target / "charts" / "streamhop")
    return target


def render_example(
    workdir: Path, values: Mapping[str, Any] | None = None, *, kube_version: str | None = None
) -> Rendered:
    return render(values, chart=example_chart(workdir), kube_version=kube_version)


APP_DEPLOYMENT = """\
{{- /* An app chart as docs/kubernetes.md shows it: the context carries .Capabilities, so the
sidecar is native on Kubernetes >= 1.29 and a plain container before. */}}
{{- $streamhop := dict "Values" .Values.streamhop "Release" .Release "Capabilities" .Capabilities }}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ .Release.Name }}-app
spec:
  selector:
    matchLabels: {app: app}
  template:
    metadata:
      labels: {app: app}
    spec:
      securityContext:
        runAsNonRoot: true
        seccompProfile: {type: RuntimeDefault}
      {{- with include "streamhop.sidecarInitContainers" $streamhop | trim }}
      initContainers:
        {{- . | nindent 8 }}
      {{- end }}
      containers:
        - name: app
          image: registry.example.com/app:1
          env:
            - name: OPENAI_BASE_URL
              value: "http://127.0.0.1:{{ .Values.streamhop.ports.proxy }}/v1"
        {{- include "streamhop.sidecarContainers" $streamhop | trim | nindent 8 }}
      volumes:
        {{- include "streamhop.sidecarVolumes" $streamhop | trim | nindent 8 }}
"""
"""The pod template of an app chart that follows docs/kubernetes.md (the version-aware way)."""


def app_chart(workdir: Path) -> Path:
    """The example app chart with its Deployment replaced by :data:`APP_DEPLOYMENT`."""
    chart = example_chart(workdir)
    for old in (chart / "templates").glob("*.yaml"):
        if "streamhop.sidecar" in old.read_text():
            old.unlink()
    (chart / "templates" / "app.yaml").write_text(APP_DEPLOYMENT)
    return chart


def render_app(
    workdir: Path, values: Mapping[str, Any] | None = None, *, kube_version: str | None = None
) -> Rendered:
    return render(values, chart=app_chart(workdir), kube_version=kube_version)


def plain_objects(rendered: Rendered) -> list[dict[str, Any]]:
    """The example's objects as the plain manifest holds them: without Helm's own labels."""
    out = []
    for obj in rendered.objects:
        labels = obj["metadata"].get("labels", {})
        for name in _HELM_ONLY_LABELS:
            labels.pop(name, None)
        out.append(obj)
    return out


def write_plain_manifest(workdir: Path) -> None:
    header = (
        "# streamhop as a native sidecar (Kubernetes >= 1.29), without Helm: the config\n"
        "# ConfigMap and an example app Deployment. Generated from\n"
        "# examples/kubernetes/chat-with-sidecar (release chat, namespace default) by\n"
        "#   .venv/bin/python -m tests.kubernetes.chart\n"
        "# and checked against it by tests/kubernetes/test_examples.py. Edit names, the image,\n"
        "# the routes in streamhop.toml and the Secret name, then: kubectl apply -f this file.\n"
        "# Before it: kubectl create secret generic llm-provider-keys \\\n"
        "#   --from-literal=CEREBRAS_API_KEY=...\n"
    )
    objects = plain_objects(render_plain_example(workdir))
    PLAIN_MANIFEST.write_text(header + "".join("---\n" + _dump(o) for o in objects))


def render_plain_example(workdir: Path) -> Rendered:
    """The example chart as release ``chat`` in ``default``, monitoring objects off."""
    with helm.Chart.load(example_chart(workdir)) as loaded:
        files = loaded.render(dict(PLAIN_VALUES), name="chat", namespace="default", is_install=True)
    return Rendered(files, list(documents(files)))


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the TOML) as literal blocks, so the manifest reads like the file."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def _dump(obj: Mapping[str, Any]) -> str:
    return yaml.dump(obj, Dumper=_Dumper, sort_keys=False, width=100)


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        write_plain_manifest(Path(tmp))
    print(f"wrote {PLAIN_MANIFEST}")
