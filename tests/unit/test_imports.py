"""The package's import graph: no cycle, and no module reaching into another's privates.

Imports are read with ``ast`` (nothing is imported), at module level and inside
functions alike, because a function-level import closes a cycle as surely as a
top-level one, only later. Imports under ``if TYPE_CHECKING:`` never run, so
they do not count for cycles, but they do count as reaching into privates.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Edge:
    source: str  # importing module
    target: str  # imported module of the package
    line: int
    runtime: bool  # False under `if TYPE_CHECKING:`


def package_modules(src: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py under the package folder ``src``."""
    mods = {}
    for path in sorted(src.rglob("*.py")):
        parts = path.relative_to(src.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """ids of the nodes inside `if TYPE_CHECKING:` blocks."""
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for stmt in node.body:
                inside.update(id(n) for n in ast.walk(stmt))
    return inside


def _dotted(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def scan(src: Path) -> tuple[list[Edge], list[str]]:
    """Every import edge between the package's modules, and every use of another module's private name."""
    mods = package_modules(src)
    edges: list[Edge] = []
    privates: list[str] = []
    for name, path in mods.items():
        _scan_module(name, path, mods, edges, privates, shown=path.relative_to(src.parent))
    return edges, privates


def _origin(node: ast.ImportFrom, name: str, is_pkg: bool) -> str:
    """The module a `from ... import` reads, relative imports resolved against this module's package."""
    if not node.level:
        return node.module or ""
    base = name.split(".") if is_pkg else name.split(".")[:-1]
    base = base[: len(base) - node.level + 1]
    return ".".join([*base, node.module] if node.module else base)


def _scan_module(name: str, path: Path, mods: dict[str, Path], edges: list[Edge], privates: list[str],
                 shown: Path) -> None:
    tree = ast.parse(path.read_text(), str(path))
    type_only = _type_checking_nodes(tree)
    aliases: dict[str, str] = {}  # local name -> the package module it is bound to
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name in mods:
                    edges.append(Edge(name, a.name, node.lineno, id(node) not in type_only))
                    aliases[a.asname or a.name] = a.name
        elif isinstance(node, ast.ImportFrom):
            origin = _origin(node, name, path.name == "__init__.py")
            if origin not in mods:
                continue
            for a in node.names:
                sub = f"{origin}.{a.name}"
                if sub in mods:  # `from pkg import module`
                    aliases[a.asname or a.name] = sub
                edges.append(Edge(name, sub if sub in mods else origin, node.lineno, id(node) not in type_only))
                if _private(a.name) and origin != name:
                    privates.append(f"{shown}:{node.lineno}: imports {a.name} from {origin}")
    for node in ast.walk(tree):  # `module._name` through an imported module
        if isinstance(node, ast.Attribute) and _private(node.attr):
            base = _dotted(node.value) or ""
            target = aliases.get(base, base if base in mods else None)
            if target and target != name:
                privates.append(f"{shown}:{node.lineno}: uses {target}.{node.attr}")


def cycles(edges: list[Edge]) -> list[list[str]]:
    """Strongly connected components with more than one module (or a self-import): Tarjan's algorithm."""
    graph: dict[str, set[str]] = {}
    for e in edges:
        if e.runtime:
            graph.setdefault(e.source, set()).add(e.target)
            graph.setdefault(e.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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
            if len(comp) > 1 or v in graph[v]:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _describe(comp: list[str], edges: list[Edge]) -> str:
    inner = [f"{e.source}:{e.line} -> {e.target}" for e in edges
             if e.runtime and e.source in comp and e.target in comp]
    return " | ".join(sorted(set(inner)))


def test_package_has_no_import_cycle() -> None:
    edges, _ = scan(ROOT / "sms_services")
    assert len({e.source for e in edges}) > 20, "the scan found too few importing modules: is the path right?"
    found = cycles(edges)
    assert not found, "import cycles: " + "; ".join(_describe(c, edges) for c in found)


def test_no_module_uses_another_modules_privates() -> None:
    _, privates = scan(ROOT / "sms_services")
    assert not privates, "private names used across modules:\n" + "\n".join(privates)


def test_cli_nouns_import_only_common() -> None:
    """The noun modules share code through cli.common only; main alone knows every noun."""
    edges, _ = scan(ROOT / "sms_services")
    cli = {e.source for e in edges if e.source.startswith("sms_services.cli.")}
    nouns = cli - {"sms_services.cli.main", "sms_services.cli.common"}
    assert nouns, "no noun modules found under sms_services/cli"
    crossing = [f"{e.source}:{e.line} -> {e.target}" for e in edges
                if e.source in nouns and e.target.startswith("sms_services.cli")
                and e.target != "sms_services.cli.common"]
    assert not crossing, crossing


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root / "pkg"


def test_checker_finds_a_function_level_cycle_and_private_uses(tmp_path: Path) -> None:
    """The checks above can fail: the old cli main <-> upgrade shape is caught."""
    src = _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/cli/__init__.py": "",
        "pkg/cli/main.py": "def build():\n    from pkg.cli.upgrade import add\n    return add\n",
        "pkg/cli/upgrade.py": "def add():\n    from pkg.cli.main import _project\n    return _project\n",
        "pkg/a.py": "import pkg.b as bee\nx = bee._hidden\n",
        "pkg/b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.a import x\n_hidden = 1\n",
        "pkg/c.py": "from . import b\nfrom .b import _hidden\n",
    })
    edges, privates = scan(src)
    assert cycles(edges) == [["pkg.cli.main", "pkg.cli.upgrade"]]  # a <-> b only under TYPE_CHECKING
    assert sorted(p.split(": ", 1)[1] for p in privates) == [
        "imports _hidden from pkg.b", "imports _project from pkg.cli.main", "uses pkg.b._hidden"]
