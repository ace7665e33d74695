"""Build hook: the stream engine's hot, sans-IO modules compiled with mypyc.

Everything else about the package is in ``pyproject.toml``. mypyc compiles ``mypy --strict``
code to one C extension per module (the ``.py`` stays beside it, the same program); measured
in ``docs/performance.md``. The build needs a C compiler and the Python headers; without them
(or with ``STREAMHOP_PURE_PYTHON=1`` in the environment) nothing is compiled and the package is
pure Python, which behaves the same (``streamhop.middleware.engine_build``).

Left out on purpose: ``rechunk/formats/base.py`` (a ``runtime_checkable`` Protocol, which mypyc
cannot compile) and ``rechunk/formats/registry.py`` (its ``REGISTERED`` list is the extension
point for new formats and must stay a plain module attribute).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

from setuptools import setup

ENGINE = (
    "sse/decoder.py",
    "sse/encoder.py",
    "sse/events.py",
    "rechunk/coalescer.py",
    "rechunk/boundary.py",
    "rechunk/formats/field_group.py",
    "rechunk/formats/openai_chat.py",
    "rechunk/formats/openai_chat_group.py",
    "rechunk/formats/openai_responses.py",
    "rechunk/formats/anthropic.py",
    "rechunk/formats/plain.py",
    "pump.py",
    "observe/batched.py",
    "observe/bursts.py",
    "observe/metrics.py",
)
"""Modules under ``middleware/`` that are compiled (the per-event path)."""


def engine_extensions() -> list[Any]:
    """The mypyc extensions, or none when ``STREAMHOP_PURE_PYTHON`` is set."""
    if os.environ.get("STREAMHOP_PURE_PYTHON", "") not in ("", "0"):
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:  # built without isolation, in an environment without mypy
        return []

    # mypy must see middleware/ under its installed name, streamhop.middleware (the same
    # symlinked tree .ci/run gives mypy).
    root = Path(__file__).resolve().parent
    tree = root / "build" / "mypyc-src" / "streamhop"
    tree.mkdir(parents=True, exist_ok=True)
    link = tree / "middleware"
    if not link.is_symlink():
        link.symlink_to(root / "middleware", target_is_directory=True)
    os.environ["MYPYPATH"] = str(tree.parent)
    try:
        extensions = mypycify(
            [
                "--explicit-package-bases",
                # The build environment has mypy but not the runtime dependencies (orjson,
                # ...): their values are Any to the compiler, as they are dynamic calls anyway.
                "--ignore-missing-imports",
                "--no-warn-return-any",
                *(str(link / path) for path in ENGINE),
            ],
            group_name="streamhop_engine",
        )
    except (Exception, SystemExit) as exc:  # mypyc refused a module: say so, stay pure
        warnings.warn(f"streamhop: engine not compiled, pure Python: {exc!r}", stacklevel=1)
        return []
    for extension in extensions:
        # No compiler or headers: install pure Python rather than fail.
        extension.optional = True
    return extensions


setup(ext_modules=engine_extensions())
