"""The layout states the design: areas with a docstring each, small modules and functions,
no import cycle, no function-level import without a comment saying why. No database."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import ophelia_db
from tests.helpers import ROOT

PACKAGE = Path(ophelia_db.__file__).resolve().parent
MODULES = sorted(PACKAGE.rglob("*.py"))
AREAS = sorted(p.parent.name for p in PACKAGE.glob("*/__init__.py") if p.parent.name != "render")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@pytest.mark.parametrize("area", AREAS)
def test_every_area_says_what_it_owns_and_is_in_the_readme(area: str) -> None:
    init = PACKAGE / area / "__init__.py"
    assert ast.get_docstring(ast.parse(init.read_text(encoding="utf-8"))), f"{init} has no docstring"
    where = (ROOT / "README.md").read_text(encoding="utf-8").split("## Where things are", 1)[1]
    assert f"`{area}/`" in where, f"README's 'Where things are' does not list {area}/"


@pytest.mark.parametrize("path", MODULES, ids=[module_name(p) for p in MODULES])
def test_modules_and_functions_stay_small(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 400, f"{path.name} has more than 400 lines"
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            assert length <= 60, f"{path.name}:{node.lineno} {node.name} has {length} lines"


@pytest.mark.parametrize("path", MODULES, ids=[module_name(p) for p in MODULES])
def test_function_level_imports_say_why(path: Path) -> None:
    lines = path.read_text(encoding="utf-8").splitlines()
    tree = ast.parse("\n".join(lines))
    for function in (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)):
        for node in ast.walk(function):
            if isinstance(node, ast.Import | ast.ImportFrom):
                nearby = lines[max(0, node.lineno - 4) : node.lineno]
                module_docstring = ast.get_docstring(tree) or ""
                assert any("#" in line for line in nearby) or "imported inside" in module_docstring.lower(), (
                    f"{path.name}:{node.lineno}: a function-level import without a comment saying why"
                )


def imports_of(path: Path, known: set[str]) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ophelia_db"):
            for alias in node.names:
                name = f"{node.module}.{alias.name}"
                found.add(name if name in known else node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("ophelia_db"))
    return found & known


def test_no_import_cycle() -> None:
    known = {module_name(p) for p in MODULES}
    graph = {module_name(p): imports_of(p, known) - {module_name(p)} for p in MODULES}
    visiting: list[str] = []
    done: set[str] = set()

    def visit(name: str) -> None:
        if name in done:
            return
        assert name not in visiting, "import cycle: " + " -> ".join([*visiting[visiting.index(name) :], name])
        visiting.append(name)
        for target in sorted(graph[name]):
            visit(target)
        visiting.pop()
        done.add(name)

    for name in sorted(graph):
        visit(name)
