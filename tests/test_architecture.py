"""The package's import graph (docs/architecture.md): no cycles, counting imports inside functions too."""

import ast
from pathlib import Path

import spatialbench

ROOT = Path(spatialbench.__file__).parent


def modules(root: Path) -> dict[str, Path]:
    def name(path: Path) -> str:
        parts = path.relative_to(root.parent).with_suffix("").parts
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

    return {name(p): p for p in root.rglob("*.py")}


def _type_checking_only(node: ast.AST, parents: dict) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that importing `name` runs: every import statement in it (at any depth), and
    the packages above each target that are not above `name` itself (their __init__ runs first)."""
    tree = ast.parse(path.read_text())
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(tree):
        if _type_checking_only(node, parents):
            continue
        if isinstance(node, ast.Import):
            targets |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets.add(base)
            targets |= {f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in known}
    out = set()
    for target in targets:
        while target and target not in known:  # `import a.b.c` of a name inside a module
            target = target.rpartition(".")[0]
        if not target.startswith("spatialbench"):
            continue
        parts = target.split(".")
        for i in range(1, len(parts) + 1):
            above = ".".join(parts[:i])
            if above in known and not (name == above or name.startswith(above + ".")):
                out.add(above)
    return out - {name}


def graph(root: Path = ROOT) -> dict[str, set[str]]:
    found = modules(root)
    return {name: imports_of(name, path, set(found)) for name, path in found.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each strongly connected part of the graph that has one (Tarjan)."""
    index, low, stack, on_stack, parts = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            part = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                part.append(w)
                if w == v:
                    break
            if len(part) > 1:
                parts.append(sorted(part))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return parts


def test_the_package_has_no_import_cycle():
    found = cycles(graph())
    assert not found, "import cycles (each a set of modules that import one another):\n" + "\n".join(
        " <-> ".join(c) for c in found)


def rooms(edges: dict[str, set[str]]) -> dict[str, set[str]]:
    """The graph between the package's rooms (its folders and top-level modules)."""
    room = lambda module: module.split(".")[1] if "." in module else module  # noqa: E731
    out: dict[str, set[str]] = {}
    for a, targets in edges.items():
        out.setdefault(room(a), set()).update(room(b) for b in targets if room(b) != room(a))
    return out


def test_no_room_imports_a_room_that_imports_it_back():
    """docs/architecture.md's arrows only point down: e.g. adapters may use the testbed's builds, so the testbed
    may not use adapters."""
    found = cycles(rooms(graph()))
    assert not found, "rooms that import one another:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_the_cycle_finder_sees_a_cycle_through_a_lazy_import(tmp_path):
    package = tmp_path / "spatialbench"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from . import b\n")
    (package / "b.py").write_text("def f():\n    from .c import g\n")
    (package / "c.py").write_text("from .a import x\n")
    (package / "d.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import x\n")
    assert cycles(graph(package)) == [["spatialbench.a", "spatialbench.b", "spatialbench.c"]]
