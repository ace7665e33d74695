"""The import graph between ``sidecar/`` packages has no cycle, and the engine never imports
the sidecar.

Read from the sources' ``import`` statements (``ast``; lazy imports inside functions and
``TYPE_CHECKING`` imports count: they are arrows of the design too). A node is a package of
``sidecar/`` (``http``, ``upstream``, …) or one of its top-level modules (``app.py``,
``asgi.py``, …). docs/architecture.md draws the same layers.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SIDECAR = ROOT / "sidecar"


def _module_name(path: Path, folder: Path, package: str) -> list[str]:
    parts = [*package.split("."), *path.relative_to(folder).with_suffix("").parts]
    return parts[:-1] if parts[-1] == "__init__" else parts


def _imports(path: Path, folder: Path, package: str) -> Iterator[list[str]]:
    """Every module ``path`` imports, as dotted parts (relative imports resolved)."""
    here = _module_name(path, folder, package)
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name.split(".")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here if is_package else here[:-1]
                base = base[: len(base) - node.level + 1]
                module = [*base, *(node.module.split(".") if node.module else [])]
            else:
                module = (node.module or "").split(".")
            yield module
            for alias in node.names:  # `from pkg import module`
                yield [*module, alias.name]


def _node(parts: list[str]) -> str | None:
    """The graph node of a ``streamhop.sidecar`` module: its package, or ``name.py``."""
    if parts[:2] != ["streamhop", "sidecar"] or len(parts) < 3:
        return None
    if (SIDECAR / parts[2]).is_dir():
        return parts[2]
    if (SIDECAR / f"{parts[2]}.py").is_file():
        return f"{parts[2]}.py"
    return None


def sidecar_graph() -> dict[str, set[str]]:
    """Node → the other nodes it imports."""
    graph: dict[str, set[str]] = {}
    for path in SIDECAR.rglob("*.py"):
        own = path.relative_to(SIDECAR).parts[0]  # a package's folder, or a top-level file
        targets = graph.setdefault(own, set())
        for module in _imports(path, SIDECAR, "streamhop.sidecar"):
            node = _node(module)
            if node is not None and node != own:
                targets.add(node)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path ``[a, b, …, a]``, or ``None``."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target)) is not None:
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)) is not None:
            return cycle
    return None


def test_find_cycle_finds_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_graph_is_read() -> None:
    graph = sidecar_graph()
    assert "upstream" in graph["http"]
    assert "asgi.py" in graph["websocket"]
    assert graph["config"] == set()


def test_no_import_cycle_between_sidecar_packages() -> None:
    cycle = find_cycle(sidecar_graph())
    assert cycle is None, " → ".join(cycle or ())


def test_the_engine_does_not_import_the_sidecar() -> None:
    folder = ROOT / "middleware"
    offenders = [
        f"{path.relative_to(ROOT)}: {'.'.join(module)}"
        for path in folder.rglob("*.py")
        for module in _imports(path, folder, "streamhop.middleware")
        if module[:2] == ["streamhop", "sidecar"]
    ]
    assert not offenders
