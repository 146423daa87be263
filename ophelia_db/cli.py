"""The ``ophelia-db`` command line: parse, call one library function, render, exit.

This module owns the typer application and the one place where library
errors become ``error: ...`` on stderr plus their exit code. It holds no
SQL and no Alembic calls.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from ophelia_db import local, runner
from ophelia_db.errors import ConfigError, OpheliaError
from ophelia_db.fleet import Fleet, load_fleet
from ophelia_db.interrupts import exit_code_of, raising_on_signals
from ophelia_db.render import (
    emit_json,
    progress_display,
    render_history,
    render_run,
    render_status,
    render_sync,
)

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

FleetOpt = Annotated[
    Path | None, typer.Option("--fleet", help="Fleet file (default: $OPHELIA_FLEET, then ./fleet.toml).")
]
InstanceOpt = Annotated[
    list[str] | None, typer.Option("--instance", "-i", help="Instance name (repeatable).")
]
AllOpt = Annotated[bool, typer.Option("--all", help="Every instance of the fleet, hub first.")]
TagOpt = Annotated[list[str] | None, typer.Option("--tag", help="Instances carrying this tag (repeatable).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print only a JSON document on stdout.")]


def _fail(message: str, code: int) -> NoReturn:
    sys.stderr.write(f"error: {message}\n")
    raise typer.Exit(code)


@contextmanager
def _errors() -> Iterator[None]:
    """Turn expected library errors into one stderr line and their exit code."""
    try:
        yield
    except OpheliaError as exc:
        _fail(exc.message, exc.exit_code)
    except KeyboardInterrupt as exc:
        sys.stderr.write("interrupted before any change\n")
        raise typer.Exit(exit_code_of(exc)) from None


def _hub_warning(state: str, error: str | None) -> None:
    """With --json the document says it too, but diagnostics belong on stderr (DESIGN §3)."""
    if error:
        sys.stderr.write(f"warning: hub report {state}: {error}\n")


def _fleet(path: Path | None) -> Fleet:
    return load_fleet(path)


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
    with _errors():
        loaded = _fleet(fleet)
        targets = loaded.select(instance or (), all_=all_, tags=tag or (), default_all=True)
        report = runner.status(loaded, targets)
    if json_:
        emit_json(report.as_record())
    else:
        render_status(report)
    raise typer.Exit(report.exit_code(check=check))


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
    with _errors():
        loaded = _fleet(fleet)
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
    else:
        if skipped:
            sys.stderr.write(f"skipped (archived or suspended in the hub): {', '.join(skipped)}\n")
        render_run(report, streamed=progress.streamed)
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
    with _errors():
        loaded = _fleet(fleet)
        target = loaded.select([instance])[0]
        report = runner.downgrade(loaded, target, to=to)
    if json_:
        emit_json(report.as_record())
        _hub_warning(report.hub_report, report.hub_error)
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
    with _errors():
        loaded = _fleet(fleet)
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
    with _errors():
        loaded = _fleet(fleet)
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
    with _errors():
        loaded = _fleet(fleet)
        targets = loaded.select(instance or (), all_=all_)
        report = runner.sync(loaded, targets)
    if json_:
        emit_json(report.as_record())
        _hub_warning(report.hub_report, report.hub_error)
    else:
        render_sync(report)
    raise typer.Exit(report.exit_code)


@local_app.command("start")
def local_start(fleet: FleetOpt = None) -> None:
    """Start the embedded cluster (creating it and the fleet's databases if needed).

    Example: ophelia-db local start
    """
    with _errors():
        message = local.start(_fleet(fleet))
    sys.stdout.write(message + "\n")


@local_app.command("stop")
def local_stop(fleet: FleetOpt = None) -> None:
    """Stop the embedded cluster."""
    with _errors():
        message = local.stop(_fleet(fleet))
    sys.stdout.write(message + "\n")


@local_app.command("status")
def local_status(fleet: FleetOpt = None) -> None:
    """Say whether the embedded cluster exists and runs, and where."""
    with _errors():
        message, running = local.describe(_fleet(fleet))
    sys.stdout.write(message + "\n")
    raise typer.Exit(0 if running else 1)


@local_app.command("destroy")
def local_destroy(
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
    fleet: FleetOpt = None,
) -> None:
    """Stop the embedded cluster and delete its data."""
    with _errors():
        loaded = _fleet(fleet)
        if not yes and not typer.confirm("Delete the embedded cluster and all its data?"):
            raise ConfigError("not confirmed; nothing deleted")
        message = local.destroy(loaded)
    sys.stdout.write(message + "\n")


def main() -> None:
    """Entry point of the ``ophelia-db`` script."""
    app()
