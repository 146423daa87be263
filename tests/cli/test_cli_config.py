"""The CLI refuses bad configuration and usage with exit 2 and one `error:` line, before connecting.

Every case runs the installed ``ophelia-db`` script in a subprocess; they are started together
(module fixture) so that the whole file stays fast. No database is needed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import OPHELIA_DB

# The console script pyproject.toml declares, beside this interpreter.
SCRIPT = Path(sys.executable).with_name("ophelia-db")
SECRET = "Pw-cli-S3cret9"
GOOD = """\
[defaults]
connect_timeout = "1s"

[hub]
url = "postgresql://postgres@127.0.0.1:1/hub"

[instances.corte]
community_name = "Ville de Corte"
community_type = "municipality"
url = "postgresql://postgres@127.0.0.1:1/corte"
tags = ["canary"]

[instances.universita]
community_name = "Università di Corsica"
community_type = "university"
url_env = "OPHELIA_TEST_UNSET_UNIVERSITA_URL"
"""
FLEETS = {
    "good.toml": GOOD,
    "unknown-key.toml": GOOD.replace('tags = ["canary"]', 'colour = "red"'),
    "password.toml": GOOD.replace("postgres@127.0.0.1:1/corte", f"postgres:{SECRET}@127.0.0.1:1/corte"),
    "syntax.toml": GOOD.replace('tags = ["canary"]', "tags = [canary"),
}


@dataclass(frozen=True)
class Run:
    code: int
    stdout: str
    stderr: str


def cases(fleets: Path, root: Path) -> dict[str, tuple[list[str], dict[str, str]]]:
    good = str(fleets / "good.toml")
    # $OPHELIA_FLEET names a missing file (test_fleet shows it is honoured): a run that reaches
    # the selection check proves that --fleet won.
    missing_env = {"OPHELIA_FLEET": str(root / "from-env.toml")}
    return {
        "unknown-key": (["status", "--fleet", str(fleets / "unknown-key.toml")], {}),
        "password": (["status", "--fleet", str(fleets / "password.toml"), "--json"], {}),
        "syntax": (["upgrade", "--all", "--fleet", str(fleets / "syntax.toml")], {}),
        "no-selection": (["upgrade", "--fleet", good], missing_env),
        "typo": (["upgrade", "--instance", "cortte", "--fleet", good], {}),
        "unset-env": (["upgrade", "--instance", "universita", "--fleet", good], {}),
        "missing-flag": (["status", "--fleet", str(fleets / "missing.toml")], {}),
        "downgrade-no-to": (["downgrade", "--instance", "corte", "--fleet", good], {}),
    }


@dataclass(frozen=True)
class Cli:
    fleets: Path
    runs: dict[str, Run]


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory) -> Cli:
    root = tmp_path_factory.mktemp("cli-config").resolve()  # the cwd: holds no fleet.toml
    fleets = root / "fleets"
    fleets.mkdir()
    for name, text in FLEETS.items():
        (fleets / name).write_text(text, encoding="utf-8")
    base = {k: v for k, v in os.environ.items() if not k.startswith("OPHELIA")}
    base.update({"COLUMNS": "200", "NO_COLOR": "1"})
    started = {
        name: subprocess.Popen(
            [*OPHELIA_DB, *args],
            cwd=root,
            env={**base, **extra},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, (args, extra) in cases(fleets, root).items()
    }
    runs: dict[str, Run] = {}
    for name, process in started.items():
        try:
            out, err = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            out, err = process.communicate()
        runs[name] = Run(process.returncode, out, err)
    return Cli(fleets, runs)


def refused(run: Run) -> str:
    """Assert the shape of a configuration refusal and return the message after ``error: ``."""
    assert "Traceback" not in run.stderr, run.stderr
    assert run.code == 2, run
    assert run.stdout == ""
    assert run.stderr.startswith("error: ")
    assert run.stderr.endswith("\n") and run.stderr.count("\n") == 1, run.stderr
    return run.stderr.removeprefix("error: ").rstrip("\n")


def test_script_is_installed() -> None:
    assert SCRIPT.is_file(), f"{SCRIPT} missing: pip install -e . into the venv"


def test_unknown_key(cli: Cli) -> None:
    assert refused(cli.runs["unknown-key"]) == (
        f"{cli.fleets / 'unknown-key.toml'}:11: unknown key 'colour' in [instances.corte]"
    )


def test_password_in_fleet_is_refused_without_printing_it(cli: Cli) -> None:
    run = cli.runs["password"]
    message = refused(run)  # --json does not turn a refusal into a document
    assert message.startswith(f"{cli.fleets / 'password.toml'}:10: instances.corte.url: holds a password")
    assert "url_env" in message
    assert SECRET not in run.stderr + run.stdout


def test_toml_syntax_error(cli: Cli) -> None:
    assert refused(cli.runs["syntax"]) == (
        f"{cli.fleets / 'syntax.toml'}:11: invalid TOML: Invalid value (at line 11, column 9)"
    )


def test_upgrade_needs_a_selection_and_fleet_flag_beats_environment(cli: Cli) -> None:
    assert refused(cli.runs["no-selection"]) == "select instances with --instance NAME, --all or --tag TAG"


def test_unknown_instance_suggests_the_closest(cli: Cli) -> None:
    assert refused(cli.runs["typo"]) == (
        f"unknown instance 'cortte' in {cli.fleets / 'good.toml'}; did you mean 'corte'?"
    )


def test_unset_url_env_is_named(cli: Cli) -> None:
    good = cli.fleets / "good.toml"
    assert refused(cli.runs["unset-env"]) == (
        "universita: environment variable OPHELIA_TEST_UNSET_UNIVERSITA_URL (url_env of "
        f"[instances.universita] in {good}) is not set; export it or add it to {cli.fleets / '.env'}"
    )


def test_missing_fleet_from_flag(cli: Cli) -> None:
    assert refused(cli.runs["missing-flag"]) == (
        f"fleet file {cli.fleets / 'missing.toml'} not found (--fleet); "
        "pass --fleet PATH or set OPHELIA_FLEET"
    )


def test_downgrade_without_to_is_a_usage_error(cli: Cli) -> None:
    run = cli.runs["downgrade-no-to"]
    assert run.code == 2, run
    assert run.stdout == ""
    assert "Missing option '--to'" in run.stderr
    assert "Traceback" not in run.stderr
