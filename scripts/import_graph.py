"""Draw the package's import graph from the source (ast only: nothing is imported) and check it.

    python3 scripts/import_graph.py            # subpackage graph, one line per edge
    python3 scripts/import_graph.py --modules  # module graph
    python3 scripts/import_graph.py --check    # exit 1 on any import cycle, modules or subpackages

Every import counts, including those inside functions and under TYPE_CHECKING: a cycle hidden
in a function is still a cycle a reader has to untangle. The folders are read as pyproject maps
them (`collectors/` is `kata_debug.collectors`, `forwarder/` is `kata_debug.forwarder`).
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FOLDERS = {
    "kata_debug": REPO / "kata_debug",
    "kata_debug.collectors": REPO / "collectors",
    "kata_debug.forwarder": REPO / "forwarder",
}


def modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for prefix, folder in FOLDERS.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([prefix, *parts])] = path
    return found


def imports(name: str, path: Path, known: set[str]) -> Iterator[str]:
    is_pkg = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                yield target


def package_of(module: str, packages: set[str]) -> str:
    """The subpackage a module belongs to (`kata_debug.errors` is its own)."""
    parts = module.split(".")
    if len(parts) >= 2 and ".".join(parts[:2]) in packages:
        return ".".join(parts[:2])
    return module


def graph(level: str) -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        edges[name].update(imports(name, path, known))
    # Importing a submodule runs its package's __init__: not an edge of interest on its own.
    for name in edges:
        edges[name] = {t for t in edges[name] if not name.startswith(t + ".") and t != "kata_debug"}
    if level == "modules":
        return edges
    packages = {m for m, p in mods.items() if p.name == "__init__.py" and m.count(".") == 1}
    pkg_edges: dict[str, set[str]] = {}
    for src, targets in edges.items():
        if src == "kata_debug":
            continue
        s = package_of(src, packages)
        pkg_edges.setdefault(s, set())
        pkg_edges[s].update(package_of(t, packages) for t in targets if package_of(t, packages) != s)
    return pkg_edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--modules", action="store_true", help="module graph instead of subpackages")
    ap.add_argument("--check", action="store_true", help="exit 1 if modules or subpackages import in a cycle")
    args = ap.parse_args()
    if args.check:
        bad = [("module", c) for c in cycles(graph("modules"))] + [("subpackage", c) for c in cycles(graph("packages"))]
        for kind, comp in bad:
            print(f"import cycle between {kind}s: {' <-> '.join(comp)}", file=sys.stderr)
        if not bad:
            print("import graph: no cycles")
        return 1 if bad else 0
    edges = graph("modules" if args.modules else "packages")
    short = lambda m: m.removeprefix("kata_debug.")  # noqa: E731
    for src in sorted(edges):
        print(f"{short(src)} -> {', '.join(sorted(map(short, edges[src]))) or '(nothing)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
