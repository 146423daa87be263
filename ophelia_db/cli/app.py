"""The ``ophelia-db`` command line: parse, call one library function, render, exit.

This module owns the typer application and the one place where library
errors become ``error: ...`` on stderr plus their exit code. It holds no
SQL and no Alembic calls.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from ophelia_db import run as runner
from ophelia_db._version import __version__
from ophelia_db.cli.options import (
    AllOpt,
    FleetOpt,
    InstanceOpt,
    JsonOpt,
    TagOpt,
    errors,
    fleet_at,
    hub_warning,
)
from ophelia_db.cli.render import (
    emit_json,
    progress_display,
    render_history,
    render_run,
    render_status,
    render_sync,
)
from ophelia_db.errors import ConfigError
from ophelia_db.fleet.config import Fleet
from ophelia_db.local import commands as local
from ophelia_db.run.interrupts import raising_on_signals

app = typer.Typer(
    name="ophelia-db",
    help="One Alembic revision chain across a fleet of PostgreSQL databases.",
    no_args_is_help=True,
    # A traceback must never print a password held in a local variable.
    pretty_exceptions_show_locals=False,
    add_completion=False,
)
local_app = typer.Typer(help="Manage the embedded local PostgreSQL cluster.", no_args_is_help=True)
app.add_typer(local_app, name="local")


def _show_version(value: bool) -> None:
    if value:
        sys.stdout.write(f"ophelia-db {__version__}\n")
        raise typer.Exit(0)


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_show_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """One Alembic revision chain across a fleet of PostgreSQL databases."""


@app.command()
def status(
    instance: InstanceOpt = None,
    all_: AllOpt = False,
    tag: TagOpt = None,
    json_: JsonOpt = False,
    check: Annotated[bool, typer.Option("--check", help="Exit 1 unless every instance is at head.")] = False,
    fleet: FleetOpt = None,
) -> None:
    """Show which instances are up to date, behind, unversioned, ahead or unreachable.

    Example: ophelia-db status --check
    """
    with errors():
        loaded = fleet_at(fleet)
        targets = loaded.select(instance or (), all_=all_, tags=tag or (), default_all=True)
        report = runner.status(loaded, targets)
    if json_:
        emit_json(report.as_record())
    else:
        render_status(report)
    if any(row.state == "unreachable" for row in report.instances):
        _local_hint(loaded)
    raise typer.Exit(report.exit_code(check=check))


def _local_hint(fleet: Fleet) -> None:
    hint = local.down_hint(fleet)
    if hint:
        sys.stderr.write(f"hint: {hint}\n")


@app.command()
def upgrade(
    instance: InstanceOpt = None,
    all_: AllOpt = False,
    tag: TagOpt = None,
    to: Annotated[str, typer.Option("--to", help="Target revision (default head).")] = "head",
    jobs: Annotated[
        int | None, typer.Option("--jobs", "-j", min=1, help="Instances migrated at once.")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show the plan; change nothing, lock nothing.")
    ] = False,
    canary: Annotated[
        str | None, typer.Option("--canary", help="Run instances with this tag first; stop if one fails.")
    ] = None,
    max_failures: Annotated[
        int | None, typer.Option("--max-failures", min=1, help="Stop starting instances after K failures.")
    ] = None,
    shard: Annotated[
        str | None,
        typer.Option("--shard", help="Only shard K/N of the selection (hub excluded), for CI matrices."),
    ] = None,
    json_: JsonOpt = False,
    fleet: FleetOpt = None,
) -> None:
    """Upgrade the selected instances (the hub first with --all), each under its own lock.

    Example: ophelia-db upgrade --all --canary canary --max-failures 3
    """
    with errors():
        loaded = fleet_at(fleet)
        targets = loaded.select(instance or (), all_=all_, tags=tag or ())
        skipped: list[str] = []
        if all_:
            targets, skipped = runner.skip_inactive(loaded, targets)
        if shard:
            targets = runner.shard(targets, shard)
        with progress_display(len(targets), enabled=not json_) as progress, raising_on_signals():
            report = runner.upgrade(
                loaded,
                targets,
                to=to,
                jobs=jobs,
                dry_run=dry_run,
                canary=canary,
                max_failures=max_failures,
                on_start=progress.started,
                on_result=progress.finished,
            )
    if json_:
        emit_json(report.as_record())
        hub_warning(report.hub_report, report.hub_error)
    else:
        if skipped:
            sys.stderr.write(f"skipped (archived or suspended in the hub): {', '.join(skipped)}\n")
        render_run(report, streamed=progress.streamed)
    if any(row.result == "unreachable" for row in report.instances):
        _local_hint(loaded)
    raise typer.Exit(report.exit_code)


@app.command()
def downgrade(
    instance: Annotated[str, typer.Option("--instance", "-i", help="The one instance to downgrade.")],
    to: Annotated[str, typer.Option("--to", help="Revision to go down to (or 'base').")],
    json_: JsonOpt = False,
    fleet: FleetOpt = None,
) -> None:
    """Revert one instance down to a revision, removing the reverted history rows.

    Example: ophelia-db downgrade --instance corte --to 0003
    """
    with errors():
        loaded = fleet_at(fleet)
        target = loaded.select([instance])[0]
        report = runner.downgrade(loaded, target, to=to)
    if json_:
        emit_json(report.as_record())
        hub_warning(report.hub_report, report.hub_error)
    else:
        render_run(report)
    raise typer.Exit(report.exit_code)


@app.command()
def history(
    instance: Annotated[str, typer.Option("--instance", "-i", help="Instance name.")],
    json_: JsonOpt = False,
    fleet: FleetOpt = None,
) -> None:
    """List an instance's applied revisions (with checksums and timings) and pending ones.

    Example: ophelia-db history --instance corte
    """
    with errors():
        loaded = fleet_at(fleet)
        report = runner.history(loaded.select([instance])[0])
    if json_:
        emit_json(report.as_record())
    else:
        render_history(report)


@app.command()
def sql(
    instance: Annotated[str, typer.Option("--instance", "-i", help="Instance name.")],
    from_: Annotated[
        str | None, typer.Option("--from", help="Start revision (default: the instance's current).")
    ] = None,
    to: Annotated[str, typer.Option("--to", help="Last revision (default head).")] = "head",
    fleet: FleetOpt = None,
) -> None:
    """Print the offline SQL (with register_migration calls) to paste by hand.

    Example: ophelia-db sql --instance corte > corte.sql
    """
    with errors():
        loaded = fleet_at(fleet)
        target = loaded.get(instance)
        text = runner.offline_sql(target, start=from_, to=to, from_database=from_ is None)
    sys.stdout.write(text)


@app.command()
def sync(
    instance: InstanceOpt = None,
    all_: AllOpt = False,
    json_: JsonOpt = False,
    fleet: FleetOpt = None,
) -> None:
    """Re-read each instance's version and push it to the hub registry.

    Example: ophelia-db sync --all
    """
    with errors():
        loaded = fleet_at(fleet)
        targets = loaded.select(instance or (), all_=all_)
        report = runner.sync(loaded, targets)
    if json_:
        emit_json(report.as_record())
        hub_warning(report.hub_report, report.hub_error)
    else:
        render_sync(report)
    raise typer.Exit(report.exit_code)


@local_app.command("start")
def local_start(fleet: FleetOpt = None) -> None:
    """Start the embedded cluster (creating it and the fleet's databases if needed).

    Example: ophelia-db local start
    """
    with errors():
        message = local.start(fleet_at(fleet))
    sys.stdout.write(message + "\n")


@local_app.command("stop")
def local_stop(fleet: FleetOpt = None) -> None:
    """Stop the embedded cluster."""
    with errors():
        message = local.stop(fleet_at(fleet))
    sys.stdout.write(message + "\n")


@local_app.command("status")
def local_status(fleet: FleetOpt = None) -> None:
    """Say whether the embedded cluster exists and runs, and where."""
    with errors():
        message, running = local.describe(fleet_at(fleet))
    sys.stdout.write(message + "\n")
    raise typer.Exit(0 if running else 1)


@local_app.command("destroy")
def local_destroy(
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
    fleet: FleetOpt = None,
) -> None:
    """Stop the embedded cluster and delete its data."""
    with errors():
        loaded = fleet_at(fleet)
        if not yes and not typer.confirm("Delete the embedded cluster and all its data?"):
            raise ConfigError("not confirmed; nothing deleted")
        message = local.destroy(loaded)
    sys.stdout.write(message + "\n")


def _register_areas() -> None:
    # Provisioning and trust commands live in their own modules to keep this one small.
    from ophelia_db.cli import provision as cli_provision
    from ophelia_db.cli import trust as cli_trust

    cli_provision.register(app)
    cli_trust.register(app)


_register_areas()


def main() -> None:
    """Entry point of the ``ophelia-db`` script."""
    app()
