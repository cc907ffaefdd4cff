"""The package's import graph, and the rules the design holds it to.

Counts every import, also those inside functions; imports under ``if TYPE_CHECKING:`` do not run
and are left out. Reports:

- cycles between modules (strongly connected components of more than one module);
- a module importing from a later row of `LAYERS` (the pipeline's order, bottom first: data
  flows one way);
- a module importing another module's private (underscore) name, or a script under
  `benchmarks/` or `tools/` importing one of the package's;
- functions longer than 80 lines or with more than 12 parameters (``__init__`` excepted).

Run: ``python tools/import_graph.py`` (exit 1 when a rule is broken; ``--dot`` prints the graph).
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass, field
from pathlib import Path

PACKAGE = "mteb_midlayer"
MAX_LINES = 80
MAX_PARAMS = 12

#: The pipeline from the bottom up (docs/layout.md): a module imports only from its own row or
#: rows before it. A module is placed by the longest prefix that names it.
LAYERS: list[list[str]] = [
    ["spec", "options", "pooling", "layers", "batching", "tempfiles", "devices", "inert", "fusion"],
    ["model", "store"],
    ["encoder", "replay", "search", "st_modules"],
    ["tasks"],
    ["scoring", "results", "checkpoints", "frames"]
    + [f"metrics.{m}" for m in ("functional", "augment", "corpus", "eigen", "sampling", "compute")],
    ["plan"],
    ["executors"],
    ["sweep", "metrics", "series"],
    ["select", "leaderboard", "export"],
    ["cli"],
]


def layer_of(module: str) -> int | None:
    """The row of `LAYERS` that holds `module` (None for the package itself or an unplaced one)."""
    name = module.removeprefix(PACKAGE + ".")
    best: tuple[int, int] | None = None
    for row, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            named = name == prefix or name.startswith(prefix + ".")
            if named and (best is None or len(prefix) > best[0]):
                best = (len(prefix), row)
    return None if best is None else best[1]


@dataclass
class Report:
    edges: dict[str, set[str]] = field(default_factory=dict)
    private: list[str] = field(default_factory=list)
    long_functions: list[str] = field(default_factory=list)
    cycles: list[list[str]] = field(default_factory=list)
    upward: list[str] = field(default_factory=list)
    unplaced: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (
            self.private or self.long_functions or self.cycles or self.upward or self.unplaced
        )


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST):
    """Every import node that runs, skipping ``if TYPE_CHECKING:`` bodies."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def analyse(root: Path) -> Report:
    files = sorted((root / PACKAGE).rglob("*.py"))
    modules = {module_name(f, root): f for f in files}
    report = Report()
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        is_package = path.name == "__init__.py"
        targets: set[str] = set()
        for node in _imports(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith(PACKAGE):
                        targets.add(alias.name)
                continue
            source = _resolve(name, is_package, node)
            if not source.startswith(PACKAGE):
                continue
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                if sub in modules:
                    targets.add(sub)
                    continue
                targets.add(source)
                if _private(alias.name) and source != name:
                    report.private.append(f"{name}: from {source} import {alias.name}")
        targets.discard(name)
        report.edges[name] = {t for t in targets if t in modules}
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            lines = fn.end_lineno - fn.lineno + 1
            args = fn.args
            params = [*args.posonlyargs, *args.args, *args.kwonlyargs]
            params = [a for a in params if a.arg not in ("self", "cls")]
            n_params = len(params) + bool(args.vararg) + bool(args.kwarg)
            where = f"{name}.{fn.name} (line {fn.lineno})"
            if lines > MAX_LINES:
                report.long_functions.append(f"{where}: {lines} lines")
            if n_params > MAX_PARAMS and fn.name != "__init__":
                report.long_functions.append(f"{where}: {n_params} parameters")
    report.cycles = _cycles(report.edges)
    for a, targets in sorted(report.edges.items()):
        row = layer_of(a)
        if row is None:
            if a != PACKAGE:
                report.unplaced.append(a)
            continue
        for b in sorted(targets):
            if b != PACKAGE and (layer_of(b) or 0) > row:
                report.upward.append(f"{a} -> {b}")
    for path in sorted([*root.glob("benchmarks/*.py"), *root.glob("tools/*.py")]):  # users' code
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in _imports(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(PACKAGE):
                for alias in node.names:
                    if _private(alias.name):
                        where = path.relative_to(root)
                        report.private.append(f"{where}: from {node.module} import {alias.name}")
    return report


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    root = Path(__file__).resolve().parents[1]
    report = analyse(root)
    if "--dot" in argv:
        print("digraph imports {")
        for a, bs in sorted(report.edges.items()):
            for b in sorted(bs):
                print(f'  "{a}" -> "{b}";')
        print("}")
        return 0
    for cycle in report.cycles:
        print("cycle:", " <-> ".join(cycle))
    for line in report.private:
        print("private import:", line)
    for line in report.upward:
        print("imports from a later layer:", line)
    for name in report.unplaced:
        print("module in no layer (add it to LAYERS):", name)
    for line in report.long_functions:
        print("too long:", line)
    n_edges = sum(len(v) for v in report.edges.values())
    print(
        f"{len(report.edges)} modules, {n_edges} imports; "
        f"{len(report.cycles)} cycles, {len(report.private)} private imports, "
        f"{len(report.upward)} upward imports, "
        f"{len(report.long_functions)} functions too long or too wide"
    )
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
