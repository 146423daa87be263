"""How `validate`, `repair`, `adopt`, `drift` and `lint` look: plain lines, one finding each."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from ophelia_db.cli.render import out, plural, renders

if TYPE_CHECKING:
    from ophelia_db.fleet.catalog import Difference
    from ophelia_db.trust import AdoptionPlan, DriftReport, RepairPlan, Resolution, ValidationReport
    from ophelia_db.trust.fleet_stats import FleetStats
    from ophelia_db.trust.lint import LintReport


def differences(found: Iterable[Difference], indent: str = "    ") -> None:
    for difference in found:
        out(f"{indent}{difference.describe()}")


@renders("ValidationReport")
def render_validation(report: ValidationReport) -> None:
    for row in report.instances:
        at = f" (at {row.current or 'base'})" if row.state not in ("unreachable", "error") else ""
        out(f"{row.name} {row.role} {row.state}{at}" + (f": {row.error}" if row.error else ""))
        for finding in row.findings:
            out(f"    {finding.kind}: {finding.message}")
    failed = [row.name for row in report.instances if row.exit_code]
    out(f"{len(report.instances) - len(failed)} valid, {len(failed)} failed (head {report.head or '-'})")


def render_repair_plan(plan: RepairPlan) -> None:
    if not plan.steps:
        out(f"{plan.instance}: nothing to change")
    else:
        out(f"{plan.instance} (at {plan.current or 'base'}): the repair will")
        for step in plan.steps:
            change = f" [{step.before or '-'} -> {step.after or '-'}]" if (step.before or step.after) else ""
            out(f"  - {step.description}{change}")
    if plan.remaining:
        out("still wrong afterwards (not covered by this repair):")
        for finding in plan.remaining:
            out(f"    {finding.kind}: {finding.message}")


@renders("RepairPlan")
def render_repair(plan: RepairPlan) -> None:
    """After the plan was shown: what was done."""
    if plan.applied:
        out(
            f"repaired {plan.instance}: {len(plan.steps)} change(s), recorded in ophelia_repairs "
            f"by {plan.performed_by}"
        )


@renders("AdoptionPlan")
def render_adoption(plan: AdoptionPlan) -> None:
    out(f"{plan.instance}:")
    for line in plan.evidence:
        out(f"  {line}")
    if plan.differences:
        count = plural(len(plan.differences), "difference")
        out(f"  differences from the reference of {plan.revision or 'base'} ({count}):")
        differences(plan.differences)
    if plan.stamped:
        out(
            f"stamped {plan.instance} at {plan.revision} "
            f"(baseline rows: {', '.join(plan.add_rows) or 'none'}); "
            f"next: ophelia-db upgrade --instance {plan.instance}"
        )


@renders("DriftReport")
def render_drift(report: DriftReport) -> None:
    for row in report.instances:
        short = f", {row.fingerprint[:19]}…" if row.fingerprint else ""
        at = row.revision or "unversioned"
        if row.state == "identical":
            out(f"{row.name}: identical to the reference of {at}{short}")
        elif row.state == "drifted":
            hint = "; adopt it first" if row.revision is None else ""
            ways = plural(len(row.differences), "way")
            out(f"{row.name}: differs from the reference of {at} in {ways}{hint}{short}")
            differences(row.differences)
        else:
            out(f"{row.name}: {row.state}: {row.error}")
    groups = report.groups
    if len(groups) > 1:
        out("schemas by fingerprint:")
        for group in groups:
            label = "identical to its reference" if group.identical else "differs"
            out(
                f"  {group.fingerprint[:19]}… {group.revision or 'unversioned'} ({label}): "
                + ", ".join(group.instances)
            )
    out(report.summary)


@renders("LintReport")
def render_lint(report: LintReport) -> None:
    for finding in report.findings:
        out(f"{finding.revision} ({finding.file}) [{finding.source}: {finding.rule}] {finding.message}")
        out(f"    > {finding.statement}")
    linted = ", ".join(report.revisions) or "none"
    out(f"{len(report.findings)} finding(s) in revisions {linted} ({report.squawk})")
    if report.fleet is not None:
        render_fleet_stats(report.fleet)


def _size(count: int | None, unit: str) -> str:
    return "-" if count is None else f"{count:,} {unit}"


def render_fleet_stats(stats: FleetStats) -> None:
    """Where each flagged table is large, then each instance's figures."""
    for risk in stats.risks:
        what = ", ".join(risk.rules)
        pending = [row for row in risk.instances if row.pending]
        if risk.large:
            out(
                f"{risk.revision} [{what}] on {risk.table}: {len(risk.large)} instance(s) with > "
                f"{risk.large_rows:,} rows: {', '.join(risk.large)}"
            )
        else:
            nowhere = f"no pending instance with > {risk.large_rows:,} rows"
            out(f"{risk.revision} [{what}] on {risk.table}: {nowhere}")
        for row in pending:
            expected = "no history yet" if row.expected_ms is None else f"expected ~{row.expected_ms:,} ms"
            out(f"    {row.instance}: {_size(row.rows, 'rows')}, {_size(row.bytes, 'bytes')}, {expected}")
    if stats.unreachable:
        out(f"not read (unreachable): {', '.join(stats.unreachable)}")


@renders("Resolution")
def render_resolution(done: Resolution) -> None:
    dropped = f"; dropped invalid index(es) {', '.join(done.dropped_indexes)}" if done.dropped_indexes else ""
    then = "runs it again" if done.decision == "retry" else "goes on from it"
    out(
        f"{done.instance}: revision {done.revision} resolved as {done.decision}{dropped}; recorded in "
        f"ophelia_repairs by {done.performed_by}. "
        f"next: ophelia-db upgrade --instance {done.instance} ({then})"
    )
