"""The import graph of qwenpt and data_pipeline, read from the source with ``ast`` (nothing is imported):
no circle among a package's modules, no module taking another's private (underscore) names, and
data_pipeline's library never importing its command line. Imports inside functions count: they are
how a circle hides."""

from __future__ import annotations

import ast
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("qwenpt", "data_pipeline")


@dataclass(frozen=True)
class Import:
    """One project module named by an import statement of another (or the same) module."""

    importer: str  # dotted module name
    module: str  # the project module the statement names (a package's __init__ when a name is taken from it)
    name: str | None  # the name taken from ``module`` (``from module import name``); None: the module itself
    file: str  # the importer's file, from the project root
    line: int

    def where(self) -> str:
        return f"{self.file}:{self.line}"


def package_modules(root: Path, packages: tuple[str, ...]) -> dict[str, Path]:
    """Every module of ``packages`` under ``root``: dotted name -> file (a package is its __init__.py)."""
    found = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def project_imports(root: Path, packages: tuple[str, ...] = PACKAGES) -> list[Import]:
    """Every import of a module of ``packages`` made anywhere in them: at module level, inside functions,
    under ``if`` (TYPE_CHECKING too); ``import a.b``, ``from a import b`` (b a module or a name),
    ``from a.b import c`` and relative imports."""
    modules = package_modules(root, packages)
    found = []
    for importer, path in modules.items():
        is_package, file = path.name == "__init__.py", path.relative_to(root).as_posix()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if (target := _known(alias.name, modules)) is not None:
                        found.append(Import(importer, target, None, file, node.lineno))
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the importer's package, one level up per extra dot
                    package = importer.split(".") if is_package else importer.split(".")[:-1]
                    package = package[: len(package) - (node.level - 1)]
                    base = ".".join([*package, base] if base else package)
                for alias in node.names:
                    if f"{base}.{alias.name}" in modules:  # from package import submodule
                        found.append(Import(importer, f"{base}.{alias.name}", None, file, node.lineno))
                    elif base in modules:
                        found.append(Import(importer, base, alias.name, file, node.lineno))
    return found


def _known(name: str, modules: dict[str, Path]) -> str | None:
    """``import a.b.c`` names a.b.c; when that is no module of ours, the longest prefix that is."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in modules:
            return ".".join(parts[:n])
    return None


def circles(imports: list[Import], package: str) -> list[str]:
    """Each circle of imports among ``package``'s modules, as a readable chain: for every strongly
    connected group of modules, its members, then the shortest circle from each member back to it."""
    inside = [i for i in imports if _in(i.importer, package) and _in(i.module, package)]
    edges: dict[str, dict[str, Import]] = {}
    for i in sorted(inside, key=lambda i: (i.importer, i.module, i.line)):
        edges.setdefault(i.importer, {}).setdefault(i.module, i)
    report = []
    for group in _strongly_connected(edges):
        if len(group) == 1 and group[0] not in edges.get(group[0], {}):
            continue
        chains = sorted({_chain(_shortest_circle(edges, start, set(group)), edges) for start in group})
        report.append(f"{len(group)} modules in a circle: {', '.join(group)}\n" + "\n".join(f"  {c}" for c in chains))
    return report


def _in(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _strongly_connected(edges: dict[str, dict[str, Import]]) -> list[list[str]]:
    """Tarjan's strongly connected components, each sorted, in sorted order (iterative: no recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups = []
    nodes = sorted(set(edges) | {m for targets in edges.values() for m in targets})
    for root in nodes:
        if root in index:
            continue
        work = [(root, iter(sorted(edges.get(root, {}))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, {})))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                groups.append(sorted(group))
    return sorted(groups)


def _shortest_circle(edges: dict[str, dict[str, Import]], start: str, group: set[str]) -> list[str]:
    """The shortest path of imports from ``start`` back to itself, within ``group`` (breadth first)."""
    came_from: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for child in sorted(edges.get(node, {})):
            if child not in group:
                continue
            if child == start:
                path = [node]
                while path[-1] != start:
                    path.append(came_from[path[-1]])
                return [start, *reversed(path[:-1]), start]
            if child not in came_from:
                came_from[child] = node
                queue.append(child)
    raise AssertionError(f"{start} is in a circle but no path leads back to it")


def _chain(path: list[str], edges: dict[str, dict[str, Import]]) -> str:
    """``a (a.py:3) -> b (b.py:10) -> a``, rotated to start at its smallest name, so each circle reads once."""
    path = path[:-1]
    k = path.index(min(path))
    path = path[k:] + path[:k] + [path[k]]
    return " -> ".join(f"{a} ({edges[a][b].where()})" for a, b in zip(path, path[1:])) + f" -> {path[-1]}"


def private_imports(imports: list[Import], package: str) -> list[str]:
    """Each ``from module import _name`` by a module of ``package`` from another module of the project."""
    return sorted(
        f"{i.where()}: {i.importer} imports {i.name} from {i.module}"
        for i in imports
        if _in(i.importer, package) and i.module != i.importer and i.name is not None
        and i.name.startswith("_") and not (i.name.startswith("__") and i.name.endswith("__"))
    )


@pytest.fixture(scope="module")
def imports() -> list[Import]:
    return project_imports(ROOT)


def test_the_import_reader_sees_every_kind_of_import_and_names_each_circle(tmp_path):
    """The checks below can fail: a made-up package with a circle through imports inside a function,
    under ``if``, relative and absolute, and a private name taken."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("import os\nfrom pkg import b\n\n\ndef f():\n    from pkg.sub.c import _hidden\n")
    (pkg / "b.py").write_text("import typing\nif typing.TYPE_CHECKING:\n    import pkg.sub.c\n")
    (pkg / "sub" / "__init__.py").write_text("from . import c\nfrom .c import __version__\n")
    (pkg / "sub" / "c.py").write_text("def g():\n    from ..a import f\n    from pkg import a as also\n"
                                      "__version__ = '1'\n_hidden = 1\n")
    (pkg / "d.py").write_text("from pkg.d import x\nx = 1\n")  # a module importing itself: a circle of one
    found = project_imports(tmp_path, ("pkg",))
    assert sorted(((i.importer, i.module, i.name, i.line) for i in found), key=str) == sorted([
        ("pkg.a", "pkg.b", None, 2),
        ("pkg.a", "pkg.sub.c", "_hidden", 6),
        ("pkg.b", "pkg.sub.c", None, 3),
        ("pkg.d", "pkg.d", "x", 1),
        ("pkg.sub", "pkg.sub.c", None, 1),
        ("pkg.sub", "pkg.sub.c", "__version__", 2),
        ("pkg.sub.c", "pkg.a", None, 3),
        ("pkg.sub.c", "pkg.a", "f", 2),
    ], key=str)
    assert circles(found, "pkg") == [
        "3 modules in a circle: pkg.a, pkg.b, pkg.sub.c\n"
        "  pkg.a (pkg/a.py:2) -> pkg.b (pkg/b.py:3) -> pkg.sub.c (pkg/sub/c.py:2) -> pkg.a\n"
        "  pkg.a (pkg/a.py:6) -> pkg.sub.c (pkg/sub/c.py:2) -> pkg.a",
        "1 modules in a circle: pkg.d\n  pkg.d (pkg/d.py:1) -> pkg.d",
    ]
    assert circles(found, "pkg.sub") == []  # pkg.sub.c's circle runs through modules outside pkg.sub
    assert private_imports(found, "pkg") == ["pkg/a.py:6: pkg.a imports _hidden from pkg.sub.c"]


def test_data_pipeline_has_no_import_circle(imports):
    assert circles(imports, "data_pipeline") == []


def test_data_pipeline_takes_no_private_name_of_another_module(imports):
    assert private_imports(imports, "data_pipeline") == []


def test_data_pipeline_library_never_imports_its_command_line(imports):
    """The CLI (``python -m data_pipeline``) calls the library, never the reverse."""
    assert sorted({f"{i.where()}: {i.importer}" for i in imports if i.module == "data_pipeline.__main__"}) == []
    # the CLI does import the library (so the check above looks at real edges)
    assert {"data_pipeline.prepare", "data_pipeline.tasks"} <= {
        i.module for i in imports if i.importer == "data_pipeline.__main__"
    }


def test_qwenpt_has_no_import_circle(imports):
    assert circles(imports, "qwenpt") == []


def test_qwenpt_takes_no_private_name_of_another_module(imports):
    assert private_imports(imports, "qwenpt") == []
