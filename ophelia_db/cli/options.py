"""What every command module shares: option types and the error-to-exit-code translation.

The one place where library errors become ``error: ...`` on stderr plus
their exit code (DESIGN §3), so that no command prints a traceback for a
user's mistake.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from ophelia_db.errors import OpheliaError
from ophelia_db.fleet.config import Fleet, load_fleet
from ophelia_db.run.interrupts import exit_code_of

FleetOpt = Annotated[
    Path | None, typer.Option("--fleet", help="Fleet file (default: $OPHELIA_FLEET, then ./fleet.toml).")
]
InstanceOpt = Annotated[
    list[str] | None, typer.Option("--instance", "-i", help="Instance name (repeatable).")
]
AllOpt = Annotated[bool, typer.Option("--all", help="Every instance of the fleet, hub first.")]
TagOpt = Annotated[list[str] | None, typer.Option("--tag", help="Instances carrying this tag (repeatable).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print only a JSON document on stdout.")]


def fail(message: str, code: int) -> NoReturn:
    sys.stderr.write(f"error: {message}\n")
    raise typer.Exit(code)


@contextmanager
def errors() -> Iterator[None]:
    """Turn expected library errors into one stderr line and their exit code."""
    try:
        yield
    except OpheliaError as exc:
        fail(exc.message, exc.exit_code)
    except KeyboardInterrupt as exc:
        sys.stderr.write("interrupted\n")
        raise typer.Exit(exit_code_of(exc)) from None


def hub_warning(state: str, error: str | None) -> None:
    """With --json the document says it too, but diagnostics belong on stderr (DESIGN §3)."""
    if error:
        sys.stderr.write(f"warning: hub report {state}: {error}\n")


def fleet_at(path: Path | None) -> Fleet:
    return load_fleet(path)
