"""The two wheels ``setup.py`` can build, from a copy of the sources, checked file by file.

- the default build: every module of ``ENGINE`` compiled (a platform-tagged wheel that imports
  and runs compiled), or, where this machine has no C compiler, a pure wheel;
- ``STREAMHOP_PURE_PYTHON=1``: a ``py3-none-any`` wheel with no compiled file.

Never a mix: a wheel either has every engine module compiled or none. Built with
``python -m build --no-isolation`` (the test environment has the build requirements; no
network), from a copy so the checkout is not written to.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "setup.py", "README.md", "LICENSE", "middleware", "sidecar")
"""What a build reads (an sdist holds the same)."""


def _engine() -> tuple[str, ...]:
    """``ENGINE`` from setup.py, read without running it (running it builds)."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "ENGINE":
            value = ast.literal_eval(node.value)
            assert isinstance(value, tuple)
            return value
    raise AssertionError("setup.py has no ENGINE")


ENGINE = _engine()


def _compiler_here() -> bool:
    compiler = (sysconfig.get_config_var("CC") or "").split()
    headers = Path(sysconfig.get_paths()["include"]) / "Python.h"
    return bool(compiler) and shutil.which(compiler[0]) is not None and headers.exists()


def _build(tmp: Path, *, pure: bool) -> Path:
    source = tmp / "src"
    ignore = shutil.ignore_patterns("__pycache__", *(f"*{s}" for s in EXTENSION_SUFFIXES))
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=ignore)
        else:
            source.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, source / name)
    env = {k: v for k, v in os.environ.items() if k != "STREAMHOP_PURE_PYTHON"}
    if pure:
        env["STREAMHOP_PURE_PYTHON"] = "1"
    out = tmp / "dist"
    result = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--skip-dependency-check",
         "--outdir", str(out), str(source)],
        cwd=tmp,
        env=env,
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (wheel,) = out.glob("*.whl")
    return wheel


def _names(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as archive:
        return set(archive.namelist())


def _sources(wheel: Path) -> set[str]:
    """Every ``.py`` and ``py.typed`` of the two packages built, as the wheel names them."""
    source = wheel.parent.parent / "src"
    names = set()
    for folder in ("middleware", "sidecar"):
        for path in (source / folder).rglob("*"):
            wanted = path.suffix == ".py" or path.name == "py.typed"
            if wanted and "__pycache__" not in path.parts:
                names.add(f"streamhop/{path.relative_to(source).as_posix()}")
    return names


def _compiled(names: set[str]) -> set[str]:
    return {name for name in names if name.endswith(tuple(EXTENSION_SUFFIXES))}


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_the_pure_wheel_has_every_source_and_nothing_compiled(tmp_path: Path) -> None:
    wheel = _build(tmp_path, pure=True)
    assert wheel.name.endswith("-py3-none-any.whl"), wheel.name
    names = _names(wheel)
    assert not _compiled(names)
    missing = _sources(wheel) - names
    assert not missing, sorted(missing)


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_the_default_wheel_compiles_the_whole_engine_and_runs_it(tmp_path: Path) -> None:
    wheel = _build(tmp_path, pure=False)
    names = _names(wheel)
    if not _compiler_here():
        assert wheel.name.endswith("-py3-none-any.whl") and not _compiled(names)
        pytest.skip("no C compiler or Python headers: a pure wheel, as documented")
    assert not wheel.name.endswith("-none-any.whl"), wheel.name
    missing = _sources(wheel) - names
    assert not missing, sorted(missing)
    compiled = _compiled(names)
    for module in ENGINE:
        stem = f"streamhop/middleware/{module.removesuffix('.py')}."
        assert any(name.startswith(stem) for name in compiled), f"{module} not compiled"
    assert any(name.startswith("streamhop_engine__mypyc.") for name in compiled)
    assert len(compiled) == len(ENGINE) + 1, sorted(compiled)

    # Installed on its own, the wheel runs its compiled modules.
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index",
         "--target", str(site), str(wheel)],
        check=True,
        timeout=120,
    )
    check = (
        "import streamhop.middleware.rechunk.coalescer as c;"
        "from streamhop.middleware.engine_build import engine_build;"
        "print(engine_build(), c.__file__)"
    )
    result = subprocess.run(
        [sys.executable, "-c", check],
        cwd=tmp_path,
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    build, where = result.stdout.split()
    assert build == "compiled"
    assert where.startswith(str(site))
