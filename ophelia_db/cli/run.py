"""The commands that run the chain: `status`, `upgrade`, `downgrade`, `history`, `sql`, `sync`.

Each parses its options, calls one function of ``ophelia_db.run``, renders
the report through ``render.emit`` and exits with the report's code.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated

import typer

import ophelia_db
from ophelia_db._lazy import lazy_module
from ophelia_db.cli.options import (
    AllOpt,
    FleetOpt,
    InstanceOpt,
    JsonOpt,
    OneInstanceOpt,
    TagOpt,
    YesOpt,
    confirmed,
    errors,
    fleet_at,
)
from ophelia_db.cli.render import emit, err
from ophelia_db.cli.render.run import progress_display
from ophelia_db.errors import ConfigError

if TYPE_CHECKING:
    from ophelia_db.fleet.config import Fleet
    from ophelia_db.fleet.hub_writer import HubReporter

# The library, loaded by the command that runs (`--help` loads none of it):
# ``ophelia_db``'s public functions load on first use too.
run = lazy_module("ophelia_db.run")
local = lazy_module("ophelia_db.local.commands")
interrupts = lazy_module("ophelia_db.run.interrupts")
selection = lazy_module("ophelia_db.run.selection")
upgrading = lazy_module("ophelia_db.run.upgrade")
hub_writer = lazy_module("ophelia_db.fleet.hub_writer")


def _local_hint(fleet: Fleet) -> None:
    hint = local.down_hint(fleet)
    if hint:
        err(f"hint: {hint}")


def _hub_warning(as_json: bool, state: str, error: str | None) -> None:
    """With --json the document says it too, but diagnostics belong on stderr (docs/design.md §3)."""
    if as_json and error:
        err(f"warning: hub report {state}: {error}")


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
        report = ophelia_db.status(loaded, targets)
    if any(row.state == "unreachable" for row in report.instances):
        _local_hint(loaded)
    emit(report, as_json=json_, code=report.exit_code(check=check))


# The options of `upgrade` that no other command takes.
ToOpt = Annotated[str, typer.Option("--to", metavar="REV", help="Target revision.", show_default=True)]
JobsOpt = Annotated[
    int | None, typer.Option("--jobs", "-j", metavar="K", min=1, help="Instances migrated at once.")
]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="Show the plan; change nothing, lock nothing.")]
CanaryOpt = Annotated[
    str | None,
    typer.Option("--canary", metavar="TAG", help="Run instances with this tag first; stop if one fails."),
]
WaveOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--wave",
        metavar="TAG|P%|rest",
        help="Run in waves, in this order (repeatable); a wave starts only within the failure budget.",
    ),
]
MaxFailuresOpt = Annotated[
    int | None,
    typer.Option("--max-failures", metavar="K", min=1, help="Stop starting instances after K failures."),
]
MaxFailureRateOpt = Annotated[
    str | None,
    typer.Option("--max-failure-rate", metavar="P", help="Start no further wave above this failure rate."),
]
ShardOpt = Annotated[
    str | None,
    typer.Option(
        "--shard",
        metavar="K/N",
        help="Only shard K/N of the selection (hub excluded), for CI matrices; auto/N in a k8s Job.",
    ),
]
RunIdOpt = Annotated[
    str | None,
    typer.Option(
        "--run-id",
        metavar="ID",
        envvar="OPHELIA_RUN_ID",
        help="Journal the run under this id (shards share one; default: the CI's run id, else new).",
    ),
]
ResumeOpt = Annotated[
    str | None,
    typer.Option("--resume", metavar="RUN", help="Redo only what run RUN did not finish, with its target."),
]


@contextmanager
def _hub_read_ahead(loaded: Fleet, wanted: bool) -> Iterator[HubReporter | None]:
    """The run's hub reporter, its round trips (start-up, registry read) going on while the run loads."""
    if not wanted:
        yield None
        return
    ahead = hub_writer.HubReporter(loaded.hub)
    ahead.read_ahead()
    try:
        yield ahead
    finally:
        ahead.close()


def upgrade(
    instance: InstanceOpt = None,
    all_: AllOpt = False,
    tag: TagOpt = None,
    to: ToOpt = "head",
    jobs: JobsOpt = None,
    dry_run: DryRunOpt = False,
    canary: CanaryOpt = None,
    wave: WaveOpt = None,
    max_failures: MaxFailuresOpt = None,
    max_failure_rate: MaxFailureRateOpt = None,
    shard: ShardOpt = None,
    run_id: RunIdOpt = None,
    resume: ResumeOpt = None,
    json_: JsonOpt = False,
    fleet: FleetOpt = None,
) -> None:
    """Upgrade the selected instances (the hub first with --all), each under its own lock.

    Example: ophelia-db upgrade --all --wave canary --wave 10% --wave rest --max-failures 3
    """
    with errors():
        loaded = fleet_at(fleet)
        if resume and (instance or all_ or tag or to != "head" or dry_run or wave or canary):
            raise ConfigError("--resume RUN takes the run's own selection and target: give it alone")
        targets = [] if resume else loaded.select(instance or (), all_=all_, tags=tag or ())
        with (
            # The hub's round trips go on while the rest of the run loads.
            _hub_read_ahead(loaded, not (resume or dry_run)) as ahead,
            progress_display(len(targets), enabled=not json_) as progress,
            interrupts.raising_on_signals(),
        ):
            watch = upgrading.Progress(
                on_plan=progress.planned, on_start=progress.started, on_result=progress.finished
            )
            if resume:
                report = ophelia_db.resume(loaded, resume, jobs=jobs, shard=shard, progress=watch)
            else:
                report = ophelia_db.upgrade(
                    loaded,
                    targets,
                    to=to,
                    jobs=jobs,
                    dry_run=dry_run,
                    canary=canary,
                    waves=wave or (),
                    max_failures=max_failures,
                    max_failure_rate=selection.parse_rate(max_failure_rate) if max_failure_rate else None,
                    # Archived and suspended instances are left alone by --all, not when named.
                    skip_inactive=all_,
                    shard=shard,
                    run_id=run_id,
                    progress=watch,
                    hub_reporter=ahead,
                )
    _hub_warning(json_, report.hub_report, report.hub_error)
    if any(row.result == "unreachable" for row in report.instances):
        _local_hint(loaded)
    emit(report, as_json=json_, streamed=progress.streamed)


def downgrade(
    instance: Annotated[
        str, typer.Option("--instance", "-i", metavar="NAME", help="The one instance to downgrade.")
    ],
    to: Annotated[str, typer.Option("--to", metavar="REV", help="Revision to go down to (or 'base').")],
    yes: YesOpt = False,
    json_: JsonOpt = False,
    fleet: FleetOpt = None,
) -> None:
    """Revert one instance down to a revision, removing the reverted history rows.

    Shows what the reverted revisions drop (with row counts) and asks first on a
    terminal; elsewhere dropping rows needs --yes (exit 2 without it).

    Example: ophelia-db downgrade --instance corte --to 0003
    """
    with errors():
        loaded = fleet_at(fleet)
        target = loaded.select([instance])[0]
        plan = run.plan_downgrade(target, to=to)
        if plan.drops:
            err(f"{plan.instance}: going down from {plan.current} to {plan.goal or 'base'} drops:")
            for drop in plan.drops:
                err(f"  - {drop.describe()}")
            if plan.loses_registry and target.role == "hub":
                err("  the hub's registry of the whole fleet goes with it")
            if not yes and sys.stdin.isatty() and not json_:
                confirmed(f"Downgrade {instance}?", yes=False, refuse="nothing was changed")
                yes = True
        report = ophelia_db.downgrade(loaded, target, to=to, yes=yes)
    _hub_warning(json_, report.hub_report, report.hub_error)
    emit(report, as_json=json_)


def history(instance: OneInstanceOpt, json_: JsonOpt = False, fleet: FleetOpt = None) -> None:
    """List an instance's applied revisions (with checksums and timings) and pending ones.

    Example: ophelia-db history --instance corte
    """
    with errors():
        loaded = fleet_at(fleet)
        report = ophelia_db.history(loaded.select([instance])[0])
    emit(report, as_json=json_, code=0)


def sql(
    instance: OneInstanceOpt,
    from_: Annotated[
        str | None,
        typer.Option("--from", metavar="REV", help="Start revision (default: the instance's current)."),
    ] = None,
    to: Annotated[
        str, typer.Option("--to", metavar="REV", help="Last revision.", show_default=True)
    ] = "head",
    fleet: FleetOpt = None,
) -> None:
    """Print the offline SQL (with register_migration calls) to paste by hand.

    Example: ophelia-db sql --instance corte > corte.sql
    """
    with errors():
        loaded = fleet_at(fleet)
        target = loaded.get(instance)
        text = ophelia_db.offline_sql(target, start=from_, to=to, from_database=from_ is None)
    sys.stdout.write(text)


def sync(
    instance: InstanceOpt = None,
    all_: AllOpt = False,
    tag: TagOpt = None,
    json_: JsonOpt = False,
    fleet: FleetOpt = None,
) -> None:
    """Re-read each instance's version and push it to the hub registry.

    Example: ophelia-db sync --all
    """
    with errors():
        loaded = fleet_at(fleet)
        targets = loaded.select(instance or (), all_=all_, tags=tag or ())
        report = ophelia_db.sync(loaded, targets)
    _hub_warning(json_, report.hub_report, report.hub_error)
    emit(report, as_json=json_)


def register(app: typer.Typer) -> None:
    """Add this area's commands to ``app``."""
    for command in (status, upgrade, downgrade, history, sql, sync):
        app.command()(command)
