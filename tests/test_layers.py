"""The package's layers: every module imports only from layers below its own (module-level
or inside a function alike), and no two modules import each other, directly or around a
circle.  A new module joins a layer in :data:`LAYERS`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import ctpress

ROOT = Path(ctpress.__file__).parent

#: Top-level modules and sub-packages of ``ctpress``, from the bottom layer up.
LAYERS: tuple[frozenset[str], ...] = tuple(
    frozenset(names.split())
    for names in (
        "errors _version _compact _progress _torch_threads frames",
        "scan noise metrics bdrate",
        "rate io sim",
        "recon",
        "learned",  # the torch engine: imports no codec (its sparse-view training: recon)
        "codecs",
        "container zarr_codecs",
        "api restore",
        "convert bench batch",
        "report",
        "demo",
        "cli",
        "__main__ __init__",
    )
)


def _module_name(path: Path) -> str:
    """Dotted name of ``path`` below ``ctpress`` (``codecs.base``, ``__init__``)."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def _imports(path: Path) -> set[str]:
    """The ``ctpress`` modules ``path`` imports (dotted, below ``ctpress``), wherever the
    import statement is, except under ``if TYPE_CHECKING:``."""
    package = list(path.relative_to(ROOT).parent.parts)
    tree = ast.parse(path.read_text())
    typing_only = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and _is_type_checking(node)
        for inner in ast.walk(node)
    }
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                stem = package[: len(package) - node.level + 1]
                if node.module:
                    found.add(".".join([*stem, *node.module.split(".")]))
                else:  # from . import a, b: modules of the package (or its names)
                    found.update(".".join([*stem, alias.name]) for alias in node.names)
            elif node.module and node.module.startswith("ctpress."):
                found.add(node.module.removeprefix("ctpress."))
        elif isinstance(node, ast.Import):
            found.update(
                alias.name.removeprefix("ctpress.")
                for alias in node.names
                if alias.name.startswith("ctpress.")
            )
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for imported in _imports(path):
            # an import of a package's name (from . import residual) is that module
            while imported and imported not in modules:
                imported = imported.rpartition(".")[0]
            if imported and imported != name:
                targets.add(imported)
        graph[name] = targets
    return graph


def _layer(module: str) -> int:
    top = module.split(".")[0]
    for index, names in enumerate(LAYERS):
        if top in names:
            return index
    raise AssertionError(f"module ctpress.{module} is in no layer of LAYERS")


def test_every_import_runs_down_the_layers() -> None:
    upward = [
        f"ctpress.{source} (layer {_layer(source)}) imports ctpress.{target} "
        f"(layer {_layer(target)})"
        for source, targets in _graph().items()
        for target in targets
        if source.split(".")[0] != target.split(".")[0] and _layer(target) >= _layer(source)
    ]
    assert not upward, "\n".join(upward)


def test_no_import_circles_between_modules() -> None:
    graph = _graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    assert not circles, circles
