"""The trust commands: `validate`, `repair`, `adopt`, `drift`, `lint`.

Each parses its options, calls ``ophelia_db.trust``, renders the report
through ``render.emit`` (renderers in ``render/trust.py``) and exits with
the code docs/design.md §3 gives it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from ophelia_db._lazy import lazy_module
from ophelia_db.cli.options import (
    AllOpt,
    FleetOpt,
    InstanceOpt,
    JsonOpt,
    OneInstanceOpt,
    ReasonOpt,
    TagOpt,
    YesOpt,
    confirmed,
    errors,
    fail,
    fleet_at,
)
from ophelia_db.cli.render import emit, emit_json, err, show
from ophelia_db.cli.render.trust import render_repair_plan
from ophelia_db.errors import ExitCode

if TYPE_CHECKING:
    from ophelia_db.fleet.config import Fleet
    from ophelia_db.trust.reference import References

# The library, loaded by the command that runs (`--help` loads none of it).
trust = lazy_module("ophelia_db.trust")
chains = lazy_module("ophelia_db.run.chain")
reference = lazy_module("ophelia_db.trust.reference")
# lint --fleet-stats: rows that make a table large (trust/fleet_stats.py's default).
LARGE_ROWS = 1_000_000

ScratchOpt = Annotated[
    str | None,
    typer.Option(
        "--scratch-url",
        metavar="URL",
        envvar="OPHELIA_SCRATCH_URL",
        help="Server on which to build reference schemas in a temporary database "
        "(default: the fleet's embedded local cluster; or $OPHELIA_SCRATCH_URL).",
        show_envvar=False,
    ),
]


def validate(
    instance: InstanceOpt = None,
    all_: AllOpt = False,
    tag: TagOpt = None,
    json_: JsonOpt = False,
    fleet: FleetOpt = None,
) -> None:
    """Check each instance's history against the code: checksums, known revision, mirror.

    Exit 0 when every instance is valid, 4 when any fails an integrity check
    (8 when the failures are unreachable instances, 7 when they differ).
    With no selection, every instance is checked.

    Example: ophelia-db validate --all
    """
    with errors():
        loaded = fleet_at(fleet)
        targets = loaded.select(instance or (), all_=all_, tags=tag or (), default_all=True)
        report = trust.validate(loaded, targets)
    emit(report, as_json=json_)


def repair(
    instance: Annotated[
        str, typer.Option("--instance", "-i", metavar="NAME", help="The one instance to repair.")
    ],
    accept_checksum: Annotated[
        list[str] | None,
        typer.Option(
            "--accept-checksum",
            metavar="REV",
            help="Record the current checksum of this applied revision's file (repeatable).",
        ),
    ] = None,
    rebuild_mirror: Annotated[
        bool,
        typer.Option(
            "--rebuild-mirror", help="Rewrite schema_migrations/schema_version from alembic_version."
        ),
    ] = False,
    reason: ReasonOpt = None,
    yes: YesOpt = False,
    json_: JsonOpt = False,
    fleet: FleetOpt = None,
) -> None:
    """Fix an instance's recorded history on purpose, after showing the plan; logged in ophelia_repairs.

    Exit 0 when repaired (or nothing to do), 2 when not confirmed, 4 when
    problems remain that this repair does not cover.

    Example: ophelia-db repair --instance corte --accept-checksum 0004 --reason "comment typo"
    """
    with errors():
        loaded = fleet_at(fleet)
        target = loaded.get(instance)
        request = trust.RepairRequest(
            accept_checksums=tuple(accept_checksum or ()), rebuild_mirror=rebuild_mirror, reason=reason
        )
        plan = trust.plan_repair(target, request)
    if not json_:
        render_repair_plan(plan)
    if plan.steps:
        if json_ and not yes:
            emit_json(plan.as_record())
        confirmed(f"Apply these changes to {instance}?", yes=yes, refuse="nothing was changed", ask=not json_)
        with errors():
            plan = trust.repair(target, plan, request)
    emit(plan, as_json=json_)


def _references(loaded: Fleet, scratch_url: str | None) -> References:
    return reference.build_references(chains.chain_for(), fleet=loaded, scratch_url=scratch_url)


def adopt(
    instance: Annotated[
        str, typer.Option("--instance", "-i", metavar="NAME", help="The unversioned instance to adopt.")
    ],
    at: Annotated[
        str | None,
        typer.Option(
            "--at", metavar="REV", help="Stamp this revision even if the schema differs (after showing how)."
        ),
    ] = None,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Stamp the revision (without it, only show).")
    ] = False,
    scratch_url: ScratchOpt = None,
    json_: JsonOpt = False,
    fleet: FleetOpt = None,
) -> None:
    """Find which revision a hand-migrated database is at, show the evidence, stamp it with --yes.

    Never runs a revision's DDL. Exit 0 when matched (stamped with --yes),
    4 when the schema matches no revision exactly (the differences are printed).

    Example: ophelia-db adopt --instance corte --yes
    """
    with errors():
        loaded = fleet_at(fleet)
        target = loaded.get(instance)
        references = _references(loaded, scratch_url)
        plan = trust.examine(target, references, at=at, stamp=yes)
    show(plan, as_json=json_)
    if plan.exit_code:
        fail(
            f"{instance} matches no revision exactly; nothing was stamped (see the differences)",
            plan.exit_code,
        )
    if plan.revision is not None and not plan.stamped:
        err(f"not stamped: run again with --yes to stamp {instance} at {plan.revision}")


def drift(
    instance: InstanceOpt = None,
    all_: AllOpt = False,
    tag: TagOpt = None,
    scratch_url: ScratchOpt = None,
    json_: JsonOpt = False,
    fleet: FleetOpt = None,
) -> None:
    """Compare each instance's live schema with the reference of its revision; group by fingerprint.

    Exit 0 when no instance drifts, 1 when some do (4 for a revision this
    code does not know, 8 for unreachable instances, 7 when those mix).
    With no selection, every instance is compared.

    Example: ophelia-db drift --all
    """
    with errors():
        loaded = fleet_at(fleet)
        targets = loaded.select(instance or (), all_=all_, tags=tag or (), default_all=True)
        report = trust.drift(targets, lambda: _references(loaded, scratch_url))
    emit(report, as_json=json_)


def lint(
    from_: Annotated[
        str | None,
        typer.Option(
            "--from", metavar="REV", help="Lint the revisions after this one (default: the whole chain)."
        ),
    ] = None,
    to: Annotated[
        str, typer.Option("--to", metavar="REV", help="Last revision to lint (default head).")
    ] = "head",
    no_squawk: Annotated[bool, typer.Option("--no-squawk", help="Use only ophelia-db's own rules.")] = False,
    fleet_stats: Annotated[
        bool,
        typer.Option("--fleet-stats", help="Size each flagged table on the instances where it is pending."),
    ] = False,
    large_rows: Annotated[
        int,
        typer.Option("--large-rows", metavar="N", min=0, help="With --fleet-stats: a large table's rows."),
    ] = LARGE_ROWS,
    instance: InstanceOpt = None,
    tag: TagOpt = None,
    json_: JsonOpt = False,
    fleet: FleetOpt = None,
) -> None:
    """Render revisions to SQL offline and flag operations that lock or rewrite busy tables.

    Uses squawk (squawk-cli) when installed, plus ophelia-db's rules. Needs no
    database, unless --fleet-stats reads each instance (--instance/--tag, default
    all) for the flagged tables' sizes and the durations recorded so far.
    Exit 0 when clean, 1 when there are findings.

    Example: ophelia-db lint --from 0004 --fleet-stats --large-rows 5000000
    """
    with errors():
        targets = None
        if fleet_stats:
            targets = fleet_at(fleet).select(instance or (), tags=tag or (), default_all=True)
        report = trust.lint(
            start=from_, to=to, squawk=not no_squawk, fleet_targets=targets, large_rows=large_rows
        )
    emit(report, as_json=json_)


def resolve(
    instance: OneInstanceOpt,
    revision: Annotated[
        str, typer.Argument(metavar="REV", help="The revision whose non-transactional section was cut.")
    ],
    applied: Annotated[
        bool, typer.Option("--applied", help="Its effects are all there: record it as applied.")
    ] = False,
    retry: Annotated[
        bool, typer.Option("--retry", help="Drop what it left invalid; the next upgrade runs it again.")
    ] = False,
    reason: ReasonOpt = None,
    yes: YesOpt = False,
    json_: JsonOpt = False,
    fleet: FleetOpt = None,
) -> None:
    """Decide about a revision interrupted in its non-transactional section (what exit 6 asks for).

    Logged in ophelia_repairs like repair. Exit 0 when recorded, 2 when refused or not confirmed.

    Example: ophelia-db resolve --instance corte 0007 --retry
    """
    if applied == retry:
        fail("say what to do: --retry (run it again) or --applied (record it as applied)", ExitCode.USAGE)
    decision = trust.Decision.APPLIED if applied else trust.Decision.RETRY
    with errors():
        target = fleet_at(fleet).get(instance)
        question = f"Record '{decision}' for revision {revision} on {instance}?"
        confirmed(question, yes=yes, refuse="nothing was changed", ask=not json_)
        result = trust.resolve(target, revision, decision, reason=reason)
    emit(result, as_json=json_)


def register(app: typer.Typer) -> None:
    """Add this area's commands to ``app``."""
    for command in (validate, repair, resolve, adopt, drift, lint):
        app.command()(command)
