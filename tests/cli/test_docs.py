"""Documentation and layering: every command has help and is in README.md; the library never
imports typer or rich (checked on the syntax tree, not by grep). No database."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import pytest
import typer.main

import ophelia_db
from ophelia_db.cli.app import app
from tests.helpers import ROOT

REPO = ROOT
README = REPO / "README.md"
PACKAGE = Path(ophelia_db.__file__).resolve().parent


def is_presentation(path: Path) -> bool:
    """Only the ``cli`` area may use typer/rich."""
    return path.relative_to(PACKAGE).parts[0] == "cli"


FORBIDDEN = {"typer", "rich", "click"}


def is_group(command: Any) -> bool:
    return isinstance(getattr(command, "commands", None), dict)


def commands() -> list[tuple[tuple[str, ...], Any]]:
    """Every command of the typer app, sub-apps included, as (path, click command).

    Typer may vendor click (``typer._click``), so groups are recognised by shape.
    """
    found: list[tuple[tuple[str, ...], Any]] = []

    def walk(group: Any, prefix: tuple[str, ...]) -> None:
        for name, command in group.commands.items():
            found.append(((*prefix, name), command))
            if is_group(command):
                walk(command, (*prefix, name))

    root = typer.main.get_command(app)
    assert is_group(root)
    walk(root, ())
    return found


COMMANDS = commands()
LEAVES = [(path, command) for path, command in COMMANDS if not is_group(command)]


def test_the_app_has_the_documented_commands() -> None:
    paths = {" ".join(path) for path, _ in COMMANDS}
    assert {"status", "upgrade", "downgrade", "history", "sql", "sync", "local"} <= paths
    assert {"local start", "local stop", "local status", "local destroy"} <= paths


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[" ".join(p) for p, _ in COMMANDS])
def test_every_command_has_help(path: tuple[str, ...], command: Any) -> None:
    assert (command.help or "").strip(), f"ophelia-db {' '.join(path)} has no help text"
    assert (command.get_short_help_str() or "").strip()


@pytest.mark.parametrize(("path", "command"), LEAVES, ids=[" ".join(p) for p, _ in LEAVES])
def test_every_option_has_help(path: tuple[str, ...], command: Any) -> None:
    options = [param for param in command.params if param.param_type_name == "option"]
    for param in options:
        assert (param.help or "").strip(), f"ophelia-db {' '.join(path)} {param.opts[0]} has no help"


def readme_mentions(path: tuple[str, ...], text: str) -> bool:
    """``ophelia-db upgrade`` or, for sub-commands, ``ophelia-db local start`` / ``local start|stop``."""
    *groups, name = path
    prefix = r"\s+".join(re.escape(part) for part in ("ophelia-db", *groups))
    pattern = rf"{prefix}\s+(?:[\w-]+\s*\\?\|\s*)*{re.escape(name)}(?![\w-])"
    return re.search(pattern, text) is not None


def test_readme_matcher_is_exact() -> None:
    text = "`ophelia-db local start\\|stop\\|status` and `ophelia-db upgrade --all` and ophelia-db statusx"
    assert readme_mentions(("local", "stop"), text)
    assert readme_mentions(("local", "status"), text)
    assert readme_mentions(("upgrade",), text)
    assert not readme_mentions(("status",), text)
    assert not readme_mentions(("local", "destroy"), text)
    assert not readme_mentions(("sync",), text)


@pytest.mark.xfail(not README.exists(), reason="README.md is not written yet", strict=False)
@pytest.mark.parametrize("path", [p for p, _ in COMMANDS], ids=[" ".join(p) for p, _ in COMMANDS])
def test_every_command_is_in_the_readme(path: tuple[str, ...]) -> None:
    text = README.read_text(encoding="utf-8")
    assert readme_mentions(path, text), f"README.md never shows `ophelia-db {' '.join(path)}`"


def imported_roots(source: Path) -> set[str]:
    """Top-level package names imported anywhere in ``source`` (functions and TYPE_CHECKING too)."""
    roots: set[str] = set()
    for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"), filename=str(source))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute | ast.Name)
            and (node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id)
            in {"import_module", "__import__"}
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            roots.add(node.args[0].value.split(".")[0])
    return roots


LIBRARY = sorted(p for p in PACKAGE.rglob("*.py") if not is_presentation(p))


def test_library_modules_are_found() -> None:
    names = {p.relative_to(PACKAGE).as_posix() for p in LIBRARY}
    assert {"fleet/config.py", "fleet/urls.py", "redaction.py", "errors.py", "results.py"} <= names
    assert {"run/upgrade.py", "trust/validate.py", "instances/vault.py", "local/cluster.py"} <= names
    assert not any(name.startswith("cli/") for name in names)


@pytest.mark.parametrize("module", LIBRARY, ids=[p.relative_to(PACKAGE).as_posix() for p in LIBRARY])
def test_library_never_imports_typer_or_rich(module: Path) -> None:
    assert not imported_roots(module) & FORBIDDEN


def test_import_checker_sees_every_form(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import os, rich.console\n"
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from typer import Typer\n"
        "def f():\n    import click\n    return importlib.import_module('rich.table')\n"
        "from . import sibling\n",
        encoding="utf-8",
    )
    assert imported_roots(sample) == {"os", "rich", "typing", "typer", "click"}


@pytest.mark.parametrize("path", [p for p, _ in LEAVES], ids=[" ".join(p) for p, _ in LEAVES])
def test_help_names_values_in_words_not_python_types(path: tuple[str, ...]) -> None:
    from typer.testing import CliRunner

    shown = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "200"})
    assert shown.exit_code == 0
    for python_type in ("<bool>", "<list[", "<int range>", "[default: head]."):
        assert python_type not in shown.stdout, (python_type, shown.stdout)
    assert "Example: ophelia-db " in shown.stdout or path[0] == "local"


def test_version_answers_without_loading_the_command_line() -> None:
    import subprocess
    import sys

    probe = (
        "import sys; from ophelia_db.cli import main; sys.argv = ['ophelia-db', '--version']; main(); "
        "print(sorted(m for m in ('typer', 'rich', 'pydantic', 'psycopg', 'sqlalchemy') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout == f"ophelia-db {ophelia_db.__version__}\n[]\n"
    assert callable(ophelia_db.upgrade) and ophelia_db.load_fleet.__module__ == "ophelia_db.fleet.config"


def test_help_loads_no_library_module() -> None:
    """`ophelia-db --help` and a command's --help load the command line only (issue 11: < 0.15 s)."""
    import subprocess
    import sys

    # (typer itself loads pydantic for a command's options; ours load nothing of the library)
    heavy = ("pydantic_settings", "psycopg", "sqlalchemy", "alembic", "ophelia_db.run",
             "ophelia_db.fleet.config", "ophelia_db.instances", "ophelia_db.trust", "starlette")  # fmt: skip
    for args in (["--help"], ["upgrade", "--help"], ["lint", "--help"]):
        probe = (
            "import sys; from ophelia_db.cli.app import app\n"
            f"try:\n    app({args!r})\nexcept SystemExit:\n    pass\n"
            f"print(sorted(m for m in {heavy!r} if m in sys.modules))"
        )
        done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
        assert done.stdout.splitlines()[-1] == "[]", (args, done.stdout.splitlines()[-1])


def test_the_cli_default_of_large_rows_is_the_librarys() -> None:
    from ophelia_db.cli.trust import LARGE_ROWS
    from ophelia_db.trust.fleet_stats import DEFAULT_LARGE_ROWS

    assert LARGE_ROWS == DEFAULT_LARGE_ROWS
