"""The chart's ``record`` values: a volume mounted where the rendered ``[record] dir`` points, an
emptyDir with a size limit or an existing claim, valid for Kubernetes and accepted by streamhop;
off by default; ``dir`` is the chart's own."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

from streamhop.sidecar.config import config_from_dict
from tests.kubernetes.chart import (
    OLDEST_KUBERNETES,
    SIDECAR,
    Rendered,
    deep_merge,
    render,
    render_app,
)
from tests.kubernetes.test_chart import KUBERNETES_VALIDATE, assert_serves, serve_rendered

RECORD_DIR = "/var/lib/streamhop/recordings"
ON: dict[str, Any] = {
    "record": {"enabled": True},
    "config": {
        "record": {"sample": 0.25, "routes": ["/"], "max_bytes": 536870912},
        "routes": [{"prefix": "/", "upstream": "https://api.cerebras.ai", "client_record": True}],
    },
}


def _pod(rendered: Rendered) -> dict[str, Any]:
    spec: dict[str, Any] = rendered.one("Deployment")["spec"]["template"]["spec"]
    return spec


def _recordings_volume(pod: dict[str, Any]) -> dict[str, Any] | None:
    return next((v for v in pod["volumes"] if v["name"] == "streamhop-recordings"), None)


def test_off_by_default_no_dir_no_volume() -> None:
    rendered = render({})
    assert "dir" not in rendered.config["record"]
    assert config_from_dict(rendered.config).record.enabled is False
    pod = _pod(rendered)
    assert _recordings_volume(pod) is None
    assert all(m["name"] != "streamhop-recordings" for m in pod["containers"][0]["volumeMounts"])


def test_enabled_mounts_an_empty_dir_where_the_config_points() -> None:
    rendered = render(ON)
    record = config_from_dict(rendered.config).record
    assert record.dir == RECORD_DIR and record.sample == 0.25 and record.routes == ("/",)
    assert record.max_bytes == 536870912
    assert config_from_dict(rendered.config).routes[0].client_record is True
    pod = _pod(rendered)
    assert _recordings_volume(pod) == {
        "name": "streamhop-recordings",
        "emptyDir": {"sizeLimit": "2Gi"},
    }
    (container,) = pod["containers"]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "streamhop-recordings")
    assert mount == {"name": "streamhop-recordings", "mountPath": RECORD_DIR}  # writable


def test_an_existing_claim_instead() -> None:
    values = deep_merge(ON, {"record": {"volume": {"claimName": "streamhop-recordings"}}})
    assert _recordings_volume(_pod(render(values))) == {
        "name": "streamhop-recordings",
        "persistentVolumeClaim": {"claimName": "streamhop-recordings"},
    }


def test_the_sidecar_mounts_it_too(tmp_path: Path) -> None:
    rendered = render_app(tmp_path, {"streamhop": {**SIDECAR, **ON}})
    pod = rendered.one("Deployment")["spec"]["template"]["spec"]
    assert _recordings_volume(pod) == {
        "name": "streamhop-recordings",
        "emptyDir": {"sizeLimit": "2Gi"},
    }
    sidecar = next(
        c for c in [*pod.get("initContainers", []), *pod["containers"]] if c["name"] == "streamhop"
    )
    assert {"name": "streamhop-recordings", "mountPath": RECORD_DIR} in sidecar["volumeMounts"]


@pytest.mark.parametrize(
    "values",
    [
        {"config": {"record": {"dir": "/somewhere"}}},  # the chart's own
        {"config": {"record": {"sample": 2}}},
        {"config": {"record": {"routes": ["v1"]}}},
        {"record": {"volume": {"sizeLimit": "lots"}}},
        {"record": {"volume": {"claimName": "Not_A_Name"}}},
        {"record": {"persist": True}},
    ],
)
def test_wrong_record_values_are_refused_at_install(values: dict[str, Any]) -> None:
    with pytest.raises(helm.HelmError, match="values don't meet the specifications"):
        render(values)


def test_the_objects_pass_kubernetes_validate_strict(tmp_path: Path) -> None:
    claim = deep_merge(ON, {"record": {"volume": {"claimName": "recordings"}}})
    objects = [
        obj
        for values in (ON, claim)
        for obj in render(values).objects
        if obj["kind"] in ("Deployment", "ConfigMap")
    ]
    manifest = tmp_path / "record.yaml"
    manifest.write_text(yaml.safe_dump_all(objects))
    argv = [KUBERNETES_VALIDATE, "--strict", "-k", OLDEST_KUBERNETES, manifest]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert result.stdout.count("INFO") == len(objects) == 4, result.stdout


@pytest.mark.integration
def test_streamhop_serve_starts_from_the_rendered_record_config(tmp_path: Path) -> None:
    recordings = tmp_path / "recordings"
    text = render(ON).toml_text.replace(RECORD_DIR, str(recordings))
    assert_serves(serve_rendered(text, tmp_path))
    assert recordings.is_dir()
