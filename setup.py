"""Build hook: the stream engine's hot, sans-IO modules compiled with mypyc, for wheels.

Everything else about the package is in ``pyproject.toml``. mypyc compiles ``mypy --strict``
code to C extensions (the ``.py`` stays beside them, the same program); measured in
``docs/performance.md``. This is how mypy ships its own compiled wheels (its ``setup.py`` calls
``mypyc.build.mypycify``); hatch-mypyc, black's choice, cannot see ``middleware/`` under its
installed name ``streamhop.middleware`` (``[tool.setuptools.package-dir]``).

What a build produces, never a mix:

- a **wheel** (``pip install .``, ``python -m build``): every module of ``ENGINE`` compiled, a
  platform-tagged wheel. If mypyc or the C compiler fails, the build fails and says why.
- a **pure** ``py3-none-any`` wheel with ``STREAMHOP_PURE_PYTHON=1``, or where no C compiler
  or no Python headers are found (a warning says so).
- an **editable install** (``pip install -e .``) compiles nothing: it runs the sources, so an
  edit takes effect at the next start. Compiled files left beside the sources by an older
  editable build are removed (they would shadow the sources). To measure the compiled engine
  locally, install a wheel: ``pip install --no-deps --force-reinstall .``.

Left out of ``ENGINE`` on purpose: ``rechunk/formats/base.py`` (a ``runtime_checkable``
Protocol, which mypyc cannot compile) and ``rechunk/formats/registry.py`` (its ``REGISTERED``
list is the extension point for new formats and must stay a plain module attribute).
"""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
import tempfile
import warnings
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path
from typing import Any

from setuptools import setup

ENGINE = (
    "sse/decoder.py",
    "sse/encoder.py",
    "sse/events.py",
    "rechunk/coalescer.py",
    "rechunk/boundary.py",
    "rechunk/formats/parsing.py",
    "rechunk/formats/field_group.py",
    "rechunk/formats/openai_chat.py",
    "rechunk/formats/openai_chat_group.py",
    "rechunk/formats/openai_responses.py",
    "rechunk/formats/anthropic.py",
    "rechunk/formats/plain.py",
    "pump.py",
    "write_watch.py",
    "observe/batched.py",
    "observe/bursts.py",
    "observe/metrics.py",
)
"""Modules under ``middleware/`` that are compiled (the per-event path)."""

GROUP = "streamhop_engine"
"""mypyc's shared library for the group (``streamhop_engine__mypyc.<abi>.so``)."""

PURE_PYTHON_ENV = "STREAMHOP_PURE_PYTHON"
ROOT = Path(__file__).resolve().parent
EDITABLE_COMMANDS = frozenset({"editable_wheel", "develop"})
"""setuptools' commands for ``pip install -e`` (PEP 660) and the legacy ``setup.py develop``."""
WHEEL_COMMANDS = frozenset({"bdist_wheel", "build", "build_ext", "install", "bdist"})
"""Commands that build the package's files; metadata commands (``egg_info``, ``dist_info``,
``sdist``) need no extensions and skip mypyc's minute."""


def _commands() -> set[str]:
    """The setuptools commands of this run: setuptools' PEP 517 backend runs this file with
    the command in ``sys.argv`` (``editable_wheel``, ``bdist_wheel``, ``egg_info``, …)."""
    return {word for word in sys.argv[1:] if not word.startswith("-")}


def _no_compiler() -> str | None:
    """Why no C extension can be built here, or ``None``: the compiler Python was built with
    (``sysconfig`` ``CC``) and ``Python.h`` must both be there."""
    compiler = (sysconfig.get_config_var("CC") or "").split()
    if not compiler or shutil.which(compiler[0]) is None:
        return f"no C compiler ({compiler[0] if compiler else 'CC unset'})"
    if not (Path(sysconfig.get_paths()["include"]) / "Python.h").exists():
        return "no Python headers (Python.h; Debian: python3-dev)"
    return None


def remove_stale_builds() -> list[Path]:
    """Delete compiled engine files beside the sources (left by editable builds before this
    rule): Python would load them instead of the edited ``.py``. Returns what was removed."""
    stale = [
        ROOT / "middleware" / path.replace(".py", suffix)
        for path in ENGINE
        for suffix in EXTENSION_SUFFIXES
    ]
    stale += [ROOT / f"{GROUP}__mypyc{suffix}" for suffix in EXTENSION_SUFFIXES]
    removed = [path for path in stale if path.is_file()]
    for path in removed:
        path.unlink()
    return removed


def engine_extensions() -> list[Any]:
    """The mypyc extensions for a wheel build, or ``[]`` for a pure build.

    Raises:
        SystemExit: mypyc refused a module (the message is mypy's); set
            ``STREAMHOP_PURE_PYTHON=1`` to build a pure wheel instead.
    """
    commands = _commands()
    if commands & EDITABLE_COMMANDS:
        removed = remove_stale_builds()
        if removed:
            warnings.warn(f"streamhop: removed {len(removed)} stale compiled files", stacklevel=1)
        return []
    if not commands & WHEEL_COMMANDS:
        return []
    if os.environ.get(PURE_PYTHON_ENV, "") not in ("", "0"):
        return []
    reason = _no_compiler()
    if reason is not None:
        warnings.warn(f"streamhop: {reason}: a pure-Python wheel", stacklevel=1)
        return []
    from mypyc.build import mypycify  # a build requirement (pyproject.toml)

    # mypy must see middleware/ under its installed name, streamhop.middleware: a symlinked
    # tree in a temporary folder, and MYPYPATH for this call only.
    with tempfile.TemporaryDirectory(prefix="streamhop-mypyc-") as tree:
        package = Path(tree) / "streamhop"
        package.mkdir()
        (package / "middleware").symlink_to(ROOT / "middleware", target_is_directory=True)
        previous = os.environ.get("MYPYPATH")
        os.environ["MYPYPATH"] = tree
        try:
            return list(
                mypycify(
                    [
                        "--explicit-package-bases",
                        # The build environment has mypy but not the runtime dependencies
                        # (orjson, ...): their values are Any to the compiler, as they are
                        # dynamic calls anyway.
                        "--ignore-missing-imports",
                        "--no-warn-return-any",
                        *(str(package / "middleware" / path) for path in ENGINE),
                    ],
                    group_name=GROUP,
                )
            )
        finally:
            if previous is None:
                del os.environ["MYPYPATH"]
            else:
                os.environ["MYPYPATH"] = previous


setup(ext_modules=engine_extensions())
