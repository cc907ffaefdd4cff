"""List the package's public module-level names that nothing else uses.

A name without a leading underscore should be used by another module, a test, a benchmark, a tool
or the docs, or be a type a user meets (an exception, a returned record, a data-folder schema
row). This prints each public name that no other file mentions, so a maintainer can make it
private or say why it is public:

    python tools/public_names.py
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "mteb_midlayer"


def _public_names(path: Path) -> list[str]:
    """Module-level functions, classes and assigned names not starting with an underscore."""
    names = []
    for node in ast.parse(path.read_text("utf-8")).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.append(node.name)
        elif isinstance(node, ast.Assign):
            names += [t.id for t in node.targets if isinstance(t, ast.Name)]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.append(node.target.id)
    return [n for n in names if not n.startswith("_")]


def _corpus() -> dict[Path, str]:
    """Every file a name can be used from: the package, tests, benchmarks, tools, docs."""
    files = [*PACKAGE.rglob("*.py"), REPO / "README.md"]
    for folder, pattern in (("tests", "*.py"), ("benchmarks", "*.py"), ("tools", "*.py")):
        files += (REPO / folder).rglob(pattern)
    files += (REPO / "docs").rglob("*.md")
    return {path: path.read_text("utf-8") for path in files if path.is_file()}


def unused_public_names() -> tuple[int, list[tuple[str, str]]]:
    """(number of public names, [(module path, name) used by no other file])."""
    corpus, total, unused = _corpus(), 0, []
    for module in sorted(PACKAGE.rglob("*.py")):
        for name in _public_names(module):
            total += 1
            word = re.compile(rf"\b{re.escape(name)}\b")
            if not any(word.search(text) for path, text in corpus.items() if path != module):
                unused.append((str(module.relative_to(REPO)), name))
    return total, unused


def main() -> None:
    total, unused = unused_public_names()
    print(f"{total} public module-level names; {len(unused)} used by no other file:")
    for module, name in unused:
        print(f"  {module}: {name}")


if __name__ == "__main__":
    main()
