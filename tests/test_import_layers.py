"""Every import inside jobtable/ points down: no import cycles among its modules.

The checker reads the source with ``ast`` (nothing is imported), so an
import that only runs inside a function counts as much as one at the top of
a module: it still ties the two modules together, and moving it into a
function only hides the cycle until the function runs.  Imports under
``if TYPE_CHECKING:`` do not count: they never run.

How an import becomes an edge (module -> module):

- ``import a.b.c`` and ``from a.b.c import name`` import ``a.b.c``;
- ``from a.b import c`` imports the submodule ``a.b.c`` when there is one,
  else ``a.b`` (its ``__init__``), which defines ``c``;
- relative imports are resolved against the importing module's package;
- parent packages are not edges of their own: Python initialises them
  first, so they cannot take part in a cycle that the child closes (and
  counting them would tie every module to its package's ``__init__``);
- ``importlib.import_module`` / ``__import__`` calls are not followed.

Cycles are the strongly connected components of that graph (Tarjan).
"""

from __future__ import annotations

import ast
import textwrap
from collections.abc import Iterable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "jobtable"



# -- reading the modules -------------------------------------------------------


def module_files(root: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the package."""
    out: dict[str, Path] = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def _runtime_imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement that can run, at any depth (functions, classes,
    try blocks), skipping the body of ``if TYPE_CHECKING:`` (its ``else:``
    runs, so it counts)."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
            continue
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def _resolve_from(module: str, is_package: bool, node: ast.ImportFrom) -> str | None:
    """The absolute name ``from <...> import`` reads from."""
    if node.level == 0:
        return node.module
    # The package a relative import starts from: the module itself for an
    # __init__, else the package holding the module.
    base = module.split(".") if is_package else module.split(".")[:-1]
    up = node.level - 1
    if up > len(base) - 1:
        return None  # beyond the top-level package: not ours
    base = base[: len(base) - up]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(module: str, path: Path, known: Iterable[str]) -> set[str]:
    """The modules of ``known`` that ``module`` imports at run time."""
    known = set(known)
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: set[str] = set()
    for node in _runtime_imports(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.add(alias.name)
            continue
        source = _resolve_from(module, is_package, node)
        if source is None:
            continue
        for alias in node.names:
            submodule = f"{source}.{alias.name}"
            # from pkg import name: the submodule if there is one, else the
            # package's __init__ that defines the name.
            found.add(submodule if submodule in known else source)
    found.discard(module)
    return {name for name in found if name in known}


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    files = module_files(root, package)
    return {module: imports_of(module, path, files) for module, path in files.items()}


# -- cycles --------------------------------------------------------------------


def cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components of more than one module (Tarjan's
    algorithm, iterative so that a deep import chain cannot hit the
    recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[frozenset[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component: set[str] = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    out.append(frozenset(component))
    return sorted(out, key=sorted)


def describe(cycle: frozenset[str], graph: dict[str, set[str]]) -> str:
    """One cycle, with the imports that tie it, for the failure message."""
    members = sorted(cycle)
    lines = [f"cycle of {len(members)} modules: {', '.join(members)}"]
    for module in members:
        inside = sorted(graph[module] & cycle)
        lines.append(f"    {module} -> {', '.join(inside)}")
    return "\n".join(lines)


# -- the tests -----------------------------------------------------------------


def test_no_import_cycles_inside_jobtable() -> None:
    graph = import_graph(ROOT, PACKAGE)
    assert "jobtable.jobs" in graph and "jobtable.shim.app" in graph  # the checker saw the package
    found = cycles(graph)
    assert not found, "import cycles inside jobtable/:\n" + "\n".join(describe(c, graph) for c in found)


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")


def test_checker_finds_a_cycle_through_a_function_level_import(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "pkg/__init__.py": "",
            # a -> b at the top, b -> a inside a function: a cycle.
            "pkg/a.py": "from . import b\n",
            "pkg/b.py": """
                def late():
                    from .a import thing
                    return thing
            """,
            # c -> d only under TYPE_CHECKING: not a cycle.
            "pkg/c.py": """
                from typing import TYPE_CHECKING
                if TYPE_CHECKING:
                    from .d import D
                else:
                    import json
            """,
            "pkg/d.py": "from pkg.c import something\n",
            # sub/__init__ imports its submodule e, e imports the package: a cycle
            # through the package's __init__, across two levels of relative import.
            "pkg/sub/__init__.py": "from .e import E\n",
            "pkg/sub/e.py": "from ..sub import helper\nfrom .. import a\n",
        },
    )
    graph = import_graph(tmp_path, "pkg")
    assert graph["pkg.b"] == {"pkg.a"}
    assert graph["pkg.c"] == set()
    assert graph["pkg.d"] == {"pkg.c"}
    assert graph["pkg.sub.e"] == {"pkg.sub", "pkg.a"}
    assert cycles(graph) == [frozenset({"pkg.a", "pkg.b"}), frozenset({"pkg.sub", "pkg.sub.e"})]
    assert "pkg.b -> pkg.a" in describe(frozenset({"pkg.a", "pkg.b"}), graph)


def test_checker_accepts_a_layered_package(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "pkg/__init__.py": "from .top import run\n",
            "pkg/top.py": "from .mid import m\nimport pkg.low\n",
            "pkg/mid.py": "def m():\n    from .low import x\n    return x\n",
            "pkg/low.py": "import typing\nif typing.TYPE_CHECKING:\n    from .top import run\nx = 1\n",
        },
    )
    graph = import_graph(tmp_path, "pkg")
    assert graph["pkg"] == {"pkg.top"}
    assert graph["pkg.top"] == {"pkg.mid", "pkg.low"}
    assert graph["pkg.low"] == set()
    assert cycles(graph) == []
