"""Both builds of the engine: compiled with mypyc (what ``pip install`` builds) and pure Python
(what runs without a compiler, or with ``STREAMHOP_PURE_PYTHON=1``).

The suite itself runs against the installed build; the last test runs the engine's own tests a
second time in a child pytest with ``STREAMHOP_PURE_PYTHON=1``, so that both builds pass them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

import pytest

import streamhop.middleware
from streamhop.middleware.engine_build import PURE_PYTHON_ENV, engine_build, pure_python_requested

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = Path(streamhop.middleware.__file__).parent
ENGINE_TESTS = (
    "tests/middleware/sse",
    "tests/middleware/rechunk",
    "tests/middleware/test_pump.py",
    "tests/conformance",
)
"""The tests of the compiled modules and of the pump over them."""


def _compiled_files() -> list[Path]:
    return [p for p in PACKAGE.rglob("*") if p.name.endswith(tuple(EXTENSION_SUFFIXES))]


def test_the_installed_build_is_the_one_that_runs() -> None:
    import streamhop.middleware.rechunk.coalescer as coalescer
    import streamhop.middleware.sse.decoder as decoder

    if pure_python_requested():
        assert engine_build() == "pure-python"
        assert decoder.__file__ is not None and decoder.__file__.endswith(".py")
        assert coalescer.__file__ is not None and coalescer.__file__.endswith(".py")
        return
    compiler = (sysconfig.get_config_var("CC") or "").split()
    if not _compiled_files() and (not compiler or shutil.which(compiler[0]) is None):
        pytest.skip("no C compiler: installed as pure Python")
    # A compiler is here: a pure install means the build fell back (setup.py warns why) or
    # was asked for (STREAMHOP_PURE_PYTHON at install; unset it and reinstall).
    assert engine_build() == "compiled"
    assert coalescer.__file__ is not None
    assert coalescer.__file__.endswith(tuple(EXTENSION_SUFFIXES))


def test_compiled_modules_are_not_older_than_their_sources() -> None:
    """An editable install compiles once: a source edited later would silently not run."""
    stale = []
    for ext in _compiled_files():
        source = ext.with_name(ext.name.split(".", 1)[0] + ".py")
        if source.exists() and source.stat().st_mtime > ext.stat().st_mtime + 1.0:
            stale.append(str(source.relative_to(PACKAGE)))
    assert not stale, (
        f"edited after the compiled build: {stale}; run `pip install -e .` again "
        f"(or set {PURE_PYTHON_ENV}=1 to run from source)"
    )


@pytest.mark.timeout(600)
def test_the_engine_tests_pass_in_pure_python_too() -> None:
    if pure_python_requested():
        pytest.skip("this run is the pure-Python one")
    if not _compiled_files():
        pytest.skip("nothing compiled: the whole suite already ran in pure Python")
    env = {**os.environ, PURE_PYTHON_ENV: "1"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *ENGINE_TESTS],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout
