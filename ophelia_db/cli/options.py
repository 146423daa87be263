"""What every command shares: option types, global options, and errors turned into exit codes.

The one place where library errors become ``error: ...`` on stderr plus
their exit code (docs/design.md §3), so that no command prints a traceback
for a user's mistake. An error that is not an ``OpheliaError`` is a bug of
ours: it becomes one line and exit 70, or its traceback with ``--debug``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

from ophelia_db._lazy import lazy_module
from ophelia_db.cli.render import shortened
from ophelia_db.errors import ExitCode, OpheliaError
from ophelia_db.redaction import redact

if TYPE_CHECKING:
    from ophelia_db.fleet.config import Fleet

# Loaded on first use: `ophelia-db --help` needs neither (see ophelia_db/_lazy.py).
config = lazy_module("ophelia_db.fleet.config")
interrupts = lazy_module("ophelia_db.run.interrupts")

FleetOpt = Annotated[
    Path | None,
    typer.Option("--fleet", metavar="PATH", help="Fleet file (default: $OPHELIA_FLEET, then ./fleet.toml)."),
]
InstanceOpt = Annotated[
    list[str] | None, typer.Option("--instance", "-i", metavar="NAME", help="Instance name (repeatable).")
]
OneInstanceOpt = Annotated[str, typer.Option("--instance", "-i", metavar="NAME", help="Instance name.")]
AllOpt = Annotated[bool, typer.Option("--all", help="Every instance of the fleet, hub first.")]
TagOpt = Annotated[
    list[str] | None, typer.Option("--tag", metavar="TAG", help="Instances carrying this tag (repeatable).")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print only a JSON document on stdout.")]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do it without asking for confirmation.")]
ReasonOpt = Annotated[
    str | None, typer.Option("--reason", metavar="TEXT", help="Why; stored in the repair log.")
]


@dataclass
class GlobalOptions:
    """Options given before the subcommand (``ophelia-db --fleet F status``)."""

    fleet: Path | None = None
    debug: bool = False


GLOBAL = GlobalOptions()


# An error is one line a person reads: a value pasted by mistake (a whole file as
# an instance name, say) is not echoed back in full.
ERROR_LIMIT = 1000


def fail(message: str, code: int) -> NoReturn:
    sys.stderr.write(f"error: {shortened(message, ERROR_LIMIT)}\n")
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
        raise typer.Exit(interrupts.exit_code_of(exc)) from None
    except (typer.Exit, typer.Abort):
        raise
    except Exception as exc:
        if GLOBAL.debug:
            raise
        fail(
            f"internal error (a bug in ophelia-db): {type(exc).__name__}: {redact(str(exc))}; "
            "run it again with --debug for the traceback, and please report it",
            ExitCode.INTERNAL,
        )


def fleet_at(path: Path | None) -> Fleet:
    """The fleet named by the command's ``--fleet``, else the global one, else the default."""
    fleet: Fleet = config.load_fleet(path or GLOBAL.fleet)
    return fleet


def confirmed(question: str, *, yes: bool, refuse: str, ask: bool = True) -> None:
    """Go on when ``--yes`` was given or the answer to ``question`` is yes; else exit 2 with ``refuse``.

    Every destructive command asks the same way (on stderr, the answer read
    from stdin) and refuses with the same code and wording. ``ask=False``
    (JSON mode) refuses without asking.
    """
    if yes:
        return
    if ask:
        try:
            if typer.confirm(question, err=True):
                return
        except typer.Abort:
            sys.stderr.write("\n")
    fail(f"not confirmed (pass --yes); {refuse}", ExitCode.USAGE)
