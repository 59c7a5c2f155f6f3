"""Size figures of the package: total lines, the longest files and the longest functions.

Usage: ``python scripts/code_stats.py [package_dir] [--top N]``. Lines are physical lines of the ``.py`` files; a
function's length runs from its ``def`` (decorators excluded) to its last line.
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path


def main() -> None:
    """Print the figures as Markdown."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package", nargs="?", default="gsanet")
    parser.add_argument("--top", type=int, default=10)
    args = parser.parse_args()
    files, functions = [], []
    for path in sorted(Path(args.package).rglob("*.py")):
        text = path.read_text()
        files.append((len(text.splitlines()), str(path)))
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                functions.append((node.end_lineno - node.lineno + 1, f"{path}:{node.lineno} {node.name}"))
    print(f"total: {sum(n for n, _ in files)} lines in {len(files)} files\n")
    print("longest files:")
    for n, name in sorted(files, reverse=True)[: args.top]:
        print(f"  {n:5d} {name}")
    print("longest functions:")
    for n, name in sorted(functions, reverse=True)[: args.top]:
        print(f"  {n:5d} {name}")


if __name__ == "__main__":
    main()
