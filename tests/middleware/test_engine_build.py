"""Which build of the engine runs: an editable install runs the sources (an edit takes effect
without reinstalling); a wheel runs its compiled modules.

``.ci/run`` runs this file twice: in the README's editable install, and with the engine's tests
against the compiled wheel ``python -m build`` makes (``tests/test_wheels.py`` checks both
wheels' contents).
"""

from __future__ import annotations

import importlib
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

import pytest

import streamhop.middleware
from streamhop.middleware.engine_build import engine_build

from ..test_wheels import ENGINE

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = Path(streamhop.middleware.__file__).resolve().parent
EDITABLE = PACKAGE == ROOT / "middleware"  # a wheel installs it elsewhere (site-packages)


def _compiled_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(tuple(EXTENSION_SUFFIXES))]


def test_an_editable_install_runs_the_sources() -> None:
    if not EDITABLE:
        pytest.skip("installed from a wheel")
    assert engine_build() == "pure-python"
    # A compiled file beside a source would shadow it: edits would silently not run.
    assert not _compiled_files(PACKAGE)
    assert not list(ROOT.glob("streamhop_engine__mypyc*"))


def test_a_wheel_runs_every_engine_module_compiled() -> None:
    if EDITABLE:
        pytest.skip("an editable install runs the sources")
    if not _compiled_files(PACKAGE):
        pytest.skip("a pure wheel (built without a compiler or with STREAMHOP_PURE_PYTHON=1)")
    assert engine_build() == "compiled"
    for module in ENGINE:
        name = "streamhop.middleware." + module.removesuffix(".py").replace("/", ".")
        origin = importlib.import_module(name).__file__ or ""
        assert origin.endswith(tuple(EXTENSION_SUFFIXES)), name
