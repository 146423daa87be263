"""The ``ophelia-db`` application: global options, and each command area registered on it.

The commands live by area: ``run`` (status, upgrade, downgrade, history,
sql, sync), ``local``, ``trust`` (validate, repair, adopt, drift, lint),
``provision`` and ``instances`` (config, archive/suspend/activate,
instances, doctor).
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Annotated

import typer

from ophelia_db._version import __version__
from ophelia_db.cli import instances, journal, local, provision, run, serve, trust
from ophelia_db.cli.options import GLOBAL
from ophelia_db.cli.words import command_name

app = typer.Typer(
    name="ophelia-db",
    help="One Alembic revision chain across a fleet of PostgreSQL databases.",
    no_args_is_help=True,
    # A traceback must never print a password held in a local variable.
    pretty_exceptions_show_locals=False,
    add_completion=False,
    # Plain help: rich's panels name Python types (<bool>, <list[str]>) where people want words.
    rich_markup_mode=None,
)


def _show_version(value: bool) -> None:
    if value:
        sys.stdout.write(f"ophelia-db {__version__}\n")
        raise typer.Exit(0)


@app.callback()
def _main(
    fleet: Annotated[
        Path | None,
        typer.Option(
            "--fleet",
            metavar="PATH",
            help="Fleet file for every command (default: $OPHELIA_FLEET, ./fleet.toml).",
        ),
    ] = None,
    debug: Annotated[
        bool, typer.Option("--debug", help="Show the traceback of an internal error (a bug).")
    ] = False,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_show_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """One Alembic revision chain across a fleet of PostgreSQL databases."""
    GLOBAL.fleet = fleet
    GLOBAL.debug = debug


for area in (run, journal, local, trust, provision, instances, serve):
    area.register(app)


def main() -> None:
    """Entry point of the ``ophelia-db`` script."""
    app_for(sys.argv[1:])()


def app_for(args: list[str]) -> typer.Typer:
    """``app`` with only the command ``args`` name, when they name one; else the whole ``app``.

    typer builds every command of an app before it parses a word (≈ 20 ms of a
    0.4 s `status`). Behind the same callback, the one command parses the same
    arguments the same way. No command, ``--help`` before it, or a name that is
    not a command (which deserves typer's suggestion) gets the whole app.
    """
    name = command_name(args)
    commands = [
        c
        for c in app.registered_commands
        if (c.name or (c.callback and typer.main.get_command_name(c.callback.__name__))) == name
    ]
    groups = [g for g in app.registered_groups if g.name == name]
    if not commands and not groups:
        return app
    one = copy.copy(app)
    one.registered_commands, one.registered_groups = commands, groups
    return one
