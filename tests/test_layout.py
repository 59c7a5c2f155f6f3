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
