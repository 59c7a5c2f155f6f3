"""The package's shape: short functions, and no module reaching into another module's private names."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "gsanet"
MAX_FUNCTION_LINES = 100
LONG_ALLOWED = {"train_one_epoch"}  # the training-epoch loop reads best in one piece


def _modules() -> list[tuple[Path, ast.Module]]:
    return [(path, ast.parse(path.read_text())) for path in sorted(PACKAGE.rglob("*.py"))]


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def test_no_function_is_longer_than_about_a_screen() -> None:
    long = [
        f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for path, tree in _modules()
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
        and node.name not in LONG_ALLOWED
    ]
    assert not long, "split these functions into named steps: " + "; ".join(long)


def test_no_module_imports_another_modules_private_name() -> None:
    found = []
    for path, tree in _modules():
        where = path.relative_to(PACKAGE.parent)
        imported = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.level > 0 or (node.module or "").startswith("gsanet")):
                for alias in node.names:
                    imported.add(alias.asname or alias.name)
                    if _private(alias.name):
                        found.append(f"{where}:{node.lineno} imports {alias.name} from {node.module or '.'}")
            elif isinstance(node, ast.Import):
                imported |= {a.asname or a.name.split(".")[0] for a in node.names if a.name.startswith("gsanet")}
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in imported:
                if _private(node.attr):
                    found.append(f"{where}:{node.lineno} reads {node.value.id}.{node.attr}")
    assert not found, "make these names public (documented) or move the code: " + "; ".join(found)


LAYERS = [
    {"errors", "datasets", "tables"},  # facts and error types: import nothing of gsanet
    {"config", "files"},  # config loading and the write probe
    {"commands"},  # what every command shares
    {"layers"},
    {"models", "runtime"},
    {"__init__"},  # ``import gsanet`` registers the models
    {"train"},
    {"experiments", "bench", "visualize"},
    {"cli"},  # the dispatcher (it loads the commands by name)
    {"__main__"},
]
"""The package's layers, bottom first: a module imports from its own layer's component or from lower layers only."""


def _component(module: str) -> str:
    parts = module.split(".")
    return "__init__" if len(parts) == 1 else parts[1]


def _imports(path: Path, tree: ast.Module) -> list[tuple[int, str]]:
    """``(line, module)`` of every gsanet import of a file, at module level or inside functions (lazy imports)."""
    package = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = package[:-1] if path.name != "__init__.py" else package[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                found.append((node.lineno, ".".join(base + ([node.module] if node.module else []))))
            elif (node.module or "").startswith("gsanet"):
                found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("gsanet")]
    return found


def test_modules_import_only_downward() -> None:
    """No cycle and no inversion: errors/config < commands < layers < models < train < experiments and the commands."""
    rank = {component: i for i, layer in enumerate(LAYERS) for component in layer}
    upward = []
    for path, tree in _modules():
        here = _component(".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts))
        assert here in rank, f"{path}: add its component {here!r} to LAYERS"
        for line, module in _imports(path, tree):
            there = _component(module)
            if there != here and rank[there] >= rank[here]:
                upward.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {module}")
    assert not upward, "move the code down a layer or the import up: " + "; ".join(upward)
