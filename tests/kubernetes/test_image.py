"""The container image: hadolint on the Dockerfile, then a real build with Debian's buildah.

No container registry is reachable here, so the base is made locally: ``mmdebstrap`` builds a
minimal Debian bookworm root with its ``python3`` (3.11) and ``python3-venv``, and buildah turns
that tree into ``localhost/streamhop-test-base``, passed as ``--build-arg BASE``. The build uses
the vfs storage driver and chroot isolation (no daemon, no overlay mounts, no user namespaces),
in a storage directory of its own that the test deletes. The test then runs the image with
``buildah run``: ``streamhop serve`` starts from a mounted config as UID 10001, ``/healthz``
answers from inside the container, nothing is written outside /tmp, and SIGTERM drains and
exits 0.

The machine's CA bundle is copied into the base, and pip inside the build is pointed at it
(``PIP_CERT``), because the package index may be reached through a TLS-inspecting proxy.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.kubernetes.chart import ROOT

HADOLINT = Path(sys.executable).parent / "hadolint"
BUILDAH = shutil.which("buildah")
MMDEBSTRAP = shutil.which("mmdebstrap")
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
BASE = "localhost/streamhop-test-base:bookworm"
IMAGE = "localhost/streamhop:test"
_READY = re.compile(r"listening on http://([0-9.]+):(\d+) \(admin http://([0-9.]+):(\d+)\)")


def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    result = subprocess.run(
        [HADOLINT, "--failure-threshold", "info", ROOT / "Dockerfile"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _why_no_build() -> str | None:
    if BUILDAH is None or MMDEBSTRAP is None:
        return "buildah and mmdebstrap (Debian packages) are not installed; .ci/run installs them"
    if os.geteuid() != 0:
        return "buildah's vfs/chroot build and mmdebstrap's root mode need root"
    if not CA_BUNDLE.exists():
        return f"no CA bundle at {CA_BUNDLE} for pip inside the build"
    return None


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    """The image, built; yields the buildah global options of its private storage."""
    reason = _why_no_build()
    if reason:
        pytest.skip(reason)
    assert BUILDAH is not None and MMDEBSTRAP is not None
    tmp = tmp_path_factory.mktemp("image")
    opts = [
        "--storage-driver",
        "vfs",
        "--root",
        str(tmp / "storage"),
        "--runroot",
        str(tmp / "run"),
    ]
    buildah = [BUILDAH, *opts]
    try:
        rootfs = tmp / "base.tar"
        subprocess.run(
            [
                MMDEBSTRAP,
                "--quiet",
                "--variant=minbase",
                "--include=python3,python3-venv,ca-certificates",
                f"--customize-hook=copy-in {CA_BUNDLE} /etc/ssl/certs",
                "bookworm",
                str(rootfs),
            ],
            check=True,
            timeout=600,
        )
        ctr = subprocess.run(
            [*buildah, "from", "--quiet", "scratch"],
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout.strip()
        subprocess.run([*buildah, "add", "--quiet", ctr, str(rootfs), "/"], check=True, timeout=300)
        subprocess.run([*buildah, "commit", "--quiet", "--rm", ctr, BASE], check=True, timeout=300)
        subprocess.run(
            [
                *buildah,
                "bud",
                "--quiet",
                "--isolation",
                "chroot",
                "--build-arg",
                f"BASE={BASE}",
                "--build-arg",
                f"PIP_CERT={CA_BUNDLE}",
                "-t",
                IMAGE,
                "-f",
                str(ROOT / "Dockerfile"),
                str(ROOT),
            ],
            check=True,
            timeout=900,
        )
        yield buildah
    finally:
        # vfs layers are plain root-owned trees: remove them with buildah's own reset.
        subprocess.run([*buildah, "rm", "--all"], capture_output=True, timeout=120)
        subprocess.run([*buildah, "rmi", "--all", "--force"], capture_output=True, timeout=300)
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.integration
def test_the_image_builds_runs_as_non_root_and_drains_on_sigterm(
    built: list[str], tmp_path: Path
) -> None:
    buildah = built
    inspected = subprocess.run(
        [*buildah, "inspect", "--type", "image", IMAGE],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    config = json.loads(inspected)["OCIv1"]["config"]
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"] == ["/opt/streamhop/bin/streamhop"]
    assert config["Cmd"] == ["serve", "--config", "/etc/streamhop/streamhop.toml"]
    assert set(config["ExposedPorts"]) == {"8787/tcp", "9464/tcp"}
    assert config["StopSignal"] == "SIGTERM"
    # No compiler in the final image.
    ctr = subprocess.run(
        [*buildah, "from", "--quiet", IMAGE], check=True, capture_output=True, text=True
    ).stdout.strip()
    mount = Path(
        subprocess.run(
            [*buildah, "mount", ctr], check=True, capture_output=True, text=True
        ).stdout.strip()
    )
    assert not list((mount / "usr" / "bin").glob("gcc*")) and not (mount / "usr/bin/cc").exists()

    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "streamhop.toml").write_text(
        '[server]\nlisten = "127.0.0.1:0"\nadmin_listen = "127.0.0.1:0"\ndrain_timeout_s = 2\n'
        '[[routes]]\nprefix = "/"\nupstream = "http://127.0.0.1:9"\n'
    )
    marker = tmp_path / "marker"
    marker.touch()
    run = subprocess.Popen(
        [
            *buildah,
            "run",
            "--isolation",
            "chroot",
            "-v",
            f"{etc}:/etc/streamhop:ro",
            ctr,
            "--",
            "streamhop",
            "serve",
            "--config",
            "/etc/streamhop/streamhop.toml",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert run.stdout is not None
        line = run.stdout.readline()  # blocks until the ready line, or EOF if it died
        match = _READY.search(line)
        assert match, (line, run.stderr.read() if run.poll() is not None else "")
        admin = f"http://127.0.0.1:{match.group(4)}"
        # /healthz from inside the container (chroot isolation shares the host's network).
        probe = subprocess.run(
            [
                *buildah,
                "run",
                "--isolation",
                "chroot",
                ctr,
                "--",
                "/opt/streamhop/bin/python",
                "-c",
                f"import urllib.request; r = urllib.request.urlopen('{admin}/healthz'); "
                "print(r.status, r.read().decode())",
            ],
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert probe.stdout.startswith("200") and '"ok"' in probe.stdout
        server = next(
            p for p in psutil.Process(run.pid).children(recursive=True) if p.name() == "streamhop"
        )
        assert server.uids().effective == 10001 and server.gids().effective == 10001
        # SIGTERM to the process (buildah does not forward signals): it drains and exits 0.
        server.send_signal(signal.SIGTERM)
        assert run.wait(timeout=30) == 0, run.stderr.read() if run.stderr else ""
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
        for pipe in (run.stdout, run.stderr):
            if pipe is not None:
                pipe.close()
    # Read-only root: the process wrote nothing outside /tmp (buildah's own files aside).
    own = {"etc/hosts", "etc/resolv.conf", "etc/hostname", "run/.containerenv"}
    newer = time.time()
    written = [
        str(path.relative_to(mount))
        for path in mount.rglob("*")
        if not path.is_symlink()
        and path.stat().st_mtime > marker.stat().st_mtime
        and path.stat().st_mtime <= newer
        and not str(path.relative_to(mount)).startswith(("tmp", "proc", "dev", "sys", "run"))
        and str(path.relative_to(mount)) not in own
        and path.is_file()
    ]
    assert written == []
