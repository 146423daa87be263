"""Command-line commands for the trust features: validate, repair, adopt, drift, lint.

Registered on the main app by cli.py. Each command parses its options, calls
the library (``integrity``, ``reference``/``adopt``, ``lint``), renders the
result as plain lines or JSON, and exits with the code DESIGN §3 gives it;
library errors become one ``error: ...`` line on stderr through
``cli_common.errors()``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Annotated

import typer

from ophelia_db import trust
from ophelia_db.cli.options import AllOpt, FleetOpt, InstanceOpt, JsonOpt, TagOpt, errors, fail, fleet_at
from ophelia_db.cli.render import emit_json
from ophelia_db.errors import ExitCode
from ophelia_db.fleet.catalog import Difference
from ophelia_db.fleet.config import Fleet
from ophelia_db.run.chain import chain_for
from ophelia_db.trust.reference import References, build_references

YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do it without asking for confirmation.")]
ScratchOpt = Annotated[
    str | None,
    typer.Option(
        "--scratch-url",
        envvar="OPHELIA_SCRATCH_URL",
        help="Server on which to build reference schemas in a temporary database "
        "(default: the fleet's embedded local cluster; or $OPHELIA_SCRATCH_URL).",
        show_envvar=False,
    ),
]


def _out(line: str = "") -> None:
    sys.stdout.write(line + "\n")


def _differences(differences: Iterable[Difference], indent: str = "    ") -> None:
    for difference in differences:
        _out(f"{indent}{difference.describe()}")


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
    if json_:
        emit_json(report.as_record())
        raise typer.Exit(report.exit_code)
    for row in report.instances:
        at = f" (at {row.current or 'base'})" if row.state not in ("unreachable", "error") else ""
        _out(f"{row.name} {row.role} {row.state}{at}" + (f": {row.error}" if row.error else ""))
        for finding in row.findings:
            _out(f"    {finding.kind}: {finding.message}")
    failed = [row.name for row in report.instances if row.exit_code]
    _out(f"{len(report.instances) - len(failed)} valid, {len(failed)} failed (head {report.head or '-'})")
    raise typer.Exit(report.exit_code)


def repair(
    instance: Annotated[str, typer.Option("--instance", "-i", help="The one instance to repair.")],
    accept_checksum: Annotated[
        list[str] | None,
        typer.Option(
            "--accept-checksum",
            help="Record the current checksum of this applied revision's file (repeatable).",
        ),
    ] = None,
    rebuild_mirror: Annotated[
        bool,
        typer.Option(
            "--rebuild-mirror", help="Rewrite schema_migrations/schema_version from alembic_version."
        ),
    ] = False,
    reason: Annotated[str | None, typer.Option("--reason", help="Why; stored in the repair log.")] = None,
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
        _show_repair_plan(plan)
    if plan.steps:
        if not yes and (json_ or not _confirmed(f"Apply these changes to {instance}?")):
            if json_:
                emit_json(plan.as_record())
            fail("not confirmed (pass --yes); nothing was changed", ExitCode.USAGE)
        with errors():
            plan = trust.repair(target, plan, request)
    if json_:
        emit_json(plan.as_record())
    elif plan.applied:
        _out(
            f"repaired {instance}: {len(plan.steps)} change(s), recorded in ophelia_repairs "
            f"by {plan.performed_by}"
        )
    raise typer.Exit(ExitCode.INTEGRITY if plan.remaining else ExitCode.OK)


def _confirmed(question: str) -> bool:
    try:
        return bool(typer.confirm(question, err=True))
    except typer.Abort:
        sys.stderr.write("\n")
        return False


def _show_repair_plan(plan: trust.RepairPlan) -> None:
    if not plan.steps:
        _out(f"{plan.instance}: nothing to change")
    else:
        _out(f"{plan.instance} (at {plan.current or 'base'}): the repair will")
        for step in plan.steps:
            change = f" [{step.before or '-'} -> {step.after or '-'}]" if (step.before or step.after) else ""
            _out(f"  - {step.description}{change}")
    if plan.remaining:
        _out("still wrong afterwards (not covered by this repair):")
        for finding in plan.remaining:
            _out(f"    {finding.kind}: {finding.message}")


def _references(loaded: Fleet, scratch_url: str | None) -> References:
    return build_references(chain_for(), fleet=loaded, scratch_url=scratch_url)


def adopt(
    instance: Annotated[str, typer.Option("--instance", "-i", help="The unversioned instance to adopt.")],
    at: Annotated[
        str | None,
        typer.Option("--at", help="Stamp this revision even if the schema differs (after showing how)."),
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
        plan = trust.plan_adoption(target, references, at=at)
        if yes and plan.revision is not None and (plan.matched or plan.forced):
            plan = trust.adopt(target, plan, references)
    if json_:
        emit_json(plan.as_record())
    else:
        _out(f"{instance}:")
        for line in plan.evidence:
            _out(f"  {line}")
        if plan.differences:
            _out(f"  differences from the reference of {plan.revision or 'base'} ({len(plan.differences)}):")
            _differences(plan.differences)
        if plan.stamped:
            _out(
                f"stamped {instance} at {plan.revision} "
                f"(baseline rows: {', '.join(plan.add_rows) or 'none'}); "
                f"next: ophelia-db upgrade --instance {instance}"
            )
    if plan.exit_code:
        fail(
            f"{instance} matches no revision exactly; nothing was stamped (see the differences)",
            plan.exit_code,
        )
    if plan.revision is not None and not plan.stamped:
        sys.stderr.write(f"not stamped: run again with --yes to stamp {instance} at {plan.revision}\n")


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
    if json_:
        emit_json(report.as_record())
        raise typer.Exit(report.exit_code)
    for row in report.instances:
        short = f", {row.fingerprint[:19]}…" if row.fingerprint else ""
        at = row.revision or "unversioned"
        if row.state == "identical":
            _out(f"{row.name}: identical to the reference of {at}{short}")
        elif row.state == "drifted":
            hint = "; adopt it first" if row.revision is None else ""
            _out(
                f"{row.name}: differs from the reference of {at} in {len(row.differences)} ways{hint}{short}"
            )
            _differences(row.differences)
        else:
            _out(f"{row.name}: {row.state}: {row.error}")
    groups = report.groups
    if len(groups) > 1:
        _out("schemas by fingerprint:")
        for group in groups:
            label = "identical to its reference" if group.identical else "differs"
            _out(
                f"  {group.fingerprint[:19]}… {group.revision or 'unversioned'} ({label}): "
                + ", ".join(group.instances)
            )
    _out(report.summary)
    raise typer.Exit(report.exit_code)


def lint(
    from_: Annotated[
        str | None,
        typer.Option("--from", help="Lint the revisions after this one (default: the whole chain)."),
    ] = None,
    to: Annotated[str, typer.Option("--to", help="Last revision to lint (default head).")] = "head",
    no_squawk: Annotated[bool, typer.Option("--no-squawk", help="Use only ophelia-db's own rules.")] = False,
    json_: JsonOpt = False,
) -> None:
    """Render revisions to SQL offline and flag operations that lock or rewrite busy tables.

    Uses squawk (squawk-cli) when installed, plus ophelia-db's rules. Needs no
    database. Exit 0 when clean, 1 when there are findings.

    Example: ophelia-db lint --from 0004
    """
    with errors():
        report = trust.lint(start=from_, to=to, squawk=not no_squawk)
    if json_:
        emit_json(report.as_record())
        raise typer.Exit(report.exit_code)
    for finding in report.findings:
        _out(f"{finding.revision} ({finding.file}) [{finding.source}: {finding.rule}] {finding.message}")
        _out(f"    > {finding.statement}")
    linted = ", ".join(report.revisions) or "none"
    _out(f"{len(report.findings)} finding(s) in revisions {linted} ({report.squawk})")
    raise typer.Exit(report.exit_code)


def register(app: typer.Typer) -> None:
    """Add this area's commands to ``app``."""
    for command in (validate, repair, adopt, drift, lint):
        app.command()(command)
