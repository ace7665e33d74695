"""The manifest for people without Helm (examples/kubernetes/sidecar-plain.yaml) is the example
chart's rendering, validates against Kubernetes 1.29 (native sidecar), and its config starts a
real ``streamhop serve``."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import httpx
import pytest
import yaml

from tests.kubernetes.chart import (
    NATIVE_SIDECAR_KUBERNETES,
    PLAIN_MANIFEST,
    plain_objects,
    render_plain_example,
)
from tests.support import start_streamhop

KUBERNETES_VALIDATE = Path(sys.executable).parent / "kubernetes-validate"


def committed() -> list[dict[str, object]]:
    return [doc for doc in yaml.safe_load_all(PLAIN_MANIFEST.read_text()) if doc]


def test_plain_manifest_is_the_example_charts_rendering(tmp_path: Path) -> None:
    expected = plain_objects(render_plain_example(tmp_path))
    assert committed() == expected, "regenerate: .venv/bin/python -m tests.kubernetes.chart"


def test_plain_manifest_passes_kubernetes_validate_strict() -> None:
    result = subprocess.run(
        [KUBERNETES_VALIDATE, "--strict", "-k", NATIVE_SIDECAR_KUBERNETES, PLAIN_MANIFEST],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.integration
def test_plain_manifests_config_starts_streamhop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config_map = next(o for o in committed() if o["kind"] == "ConfigMap")
    text = config_map["data"]["streamhop.toml"]  # type: ignore[index]
    assert tomllib.loads(text)["server"]["listen"] == "127.0.0.1:8787"
    path = tmp_path / "streamhop.toml"
    path.write_text(text)
    monkeypatch.setenv("CEREBRAS_API_KEY", "from-the-secret")
    proc = start_streamhop(
        "serve", "--config", str(path), "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"
    )
    try:
        assert proc.admin_url is not None
        assert httpx.get(proc.admin_url + "/readyz", timeout=10).status_code == 200
    finally:
        assert proc.stop() == 0, proc.stderr
