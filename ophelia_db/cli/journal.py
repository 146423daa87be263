"""The commands over the run journal: `runs`, `runs show RUN`, and the release `gate`."""

from __future__ import annotations

from typing import Annotated

import typer

from ophelia_db._lazy import lazy_module
from ophelia_db.cli.options import AllOpt, FleetOpt, InstanceOpt, JsonOpt, TagOpt, errors, fleet_at
from ophelia_db.cli.render import emit
from ophelia_db.cli.render import runs as _renderers  # noqa: F401  (registers the renderers)

# The library, loaded by the command that runs (`--help` loads none of it).
gating = lazy_module("ophelia_db.run.gate")
journal = lazy_module("ophelia_db.run.runs")

runs_app = typer.Typer(help="The run journal kept in the hub: recent runs, one run per instance.")


@runs_app.callback(invoke_without_command=True)
def runs(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="How many runs, newest first.")] = 20,
    json_: JsonOpt = False,
    fleet: FleetOpt = None,
) -> None:
    """List recent upgrade/downgrade runs from the hub's journal, newest first.

    Example: ophelia-db runs --limit 5
    """
    if ctx.invoked_subcommand is not None:
        return
    with errors():
        report = journal.runs(fleet_at(fleet), limit=limit)
    emit(report, as_json=json_)


@runs_app.command("show")
def runs_show(
    run_id: Annotated[str, typer.Argument(metavar="RUN", help="The run id (`ophelia-db runs` lists them).")],
    json_: JsonOpt = False,
    fleet: FleetOpt = None,
) -> None:
    """Show one run across all its shards, per instance, and what is left to resume.

    Example: ophelia-db runs show 20261205-120000-a1b2c3
    """
    with errors():
        detail = journal.show_run(fleet_at(fleet), run_id)
    emit(detail, as_json=json_)


def gate(
    requires: Annotated[
        str, typer.Option("--requires", metavar="REV", help="The revision the app needs (or 'head').")
    ],
    instance: InstanceOpt = None,
    all_: AllOpt = False,
    tag: TagOpt = None,
    from_registry: Annotated[
        bool, typer.Option("--from-registry", help="Trust the hub registry; do not read the instances.")
    ] = False,
    json_: JsonOpt = False,
    fleet: FleetOpt = None,
) -> None:
    """Exit 0 when every active instance is at or past REV, else 1 naming those below and why.

    Example: ophelia-db gate --requires 0005 && deploy-the-app
    """
    with errors():
        loaded = fleet_at(fleet)
        targets = loaded.select(instance or (), all_=all_, tags=tag or (), default_all=True)
        report = gating.gate(loaded, targets, requires=requires, from_registry=from_registry)
    emit(report, as_json=json_)


def register(app: typer.Typer) -> None:
    """Add this area's commands to ``app``."""
    app.add_typer(runs_app, name="runs")
    app.command()(gate)
