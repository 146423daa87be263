"""`ophelia-db local start|stop|status|destroy`: the embedded PostgreSQL of fleet.toml's ``[local]``."""

from __future__ import annotations

import typer

from ophelia_db._lazy import lazy_module
from ophelia_db.cli.options import FleetOpt, YesOpt, confirmed, errors, fleet_at
from ophelia_db.cli.render import out

# Loaded by the command that runs (`--help` loads none of it).
local = lazy_module("ophelia_db.local.commands")

local_app = typer.Typer(help="Manage the embedded local PostgreSQL cluster.", no_args_is_help=True)


@local_app.command("start")
def local_start(fleet: FleetOpt = None) -> None:
    """Start the embedded cluster (creating it and the fleet's databases if needed).

    Example: ophelia-db local start
    """
    with errors():
        out(local.start(fleet_at(fleet)))


@local_app.command("stop")
def local_stop(fleet: FleetOpt = None) -> None:
    """Stop the embedded cluster.

    Example: ophelia-db local stop
    """
    with errors():
        out(local.stop(fleet_at(fleet)))


@local_app.command("status")
def local_status(fleet: FleetOpt = None) -> None:
    """Say whether the embedded cluster exists and runs, and where (exit 1 when it does not run).

    Example: ophelia-db local status
    """
    with errors():
        message, running = local.describe(fleet_at(fleet))
    out(message)
    raise typer.Exit(0 if running else 1)


@local_app.command("destroy")
def local_destroy(yes: YesOpt = False, fleet: FleetOpt = None) -> None:
    """Stop the embedded cluster and delete its data.

    Example: ophelia-db local destroy --yes
    """
    with errors():
        loaded = fleet_at(fleet)
        confirmed("Delete the embedded cluster and all its data?", yes=yes, refuse="nothing was deleted")
        out(local.destroy(loaded))


def register(app: typer.Typer) -> None:
    """Add this area's commands to ``app``."""
    app.add_typer(local_app, name="local")
