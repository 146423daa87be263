"""How `provision`, `config`, `archive`/`suspend`/`activate`, `instances` and `doctor` look."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ophelia_db.cli.render import err, out, renders, shortened, table

if TYPE_CHECKING:
    from ophelia_db.instances import DoctorReport, InstancesReport, Outputs, StatusChange
    from ophelia_db.instances.apply import Step
    from ophelia_db.instances.vault import ConfigEntry


def render_outputs(outputs: Outputs) -> None:
    for path in (outputs.answers_file, outputs.vault_sql, outputs.registry_sql, outputs.schema_file):
        out(f"{'wrote' if path in outputs.changed else 'unchanged'} {path}")
    render_output_warnings(outputs)


def render_output_warnings(outputs: Outputs) -> None:
    """On stderr, with --json too: files that hold secrets, secrets left out, variables unset."""
    for path in outputs.secret_files:
        err(f"warning: {path} holds secrets (mode 0600): never commit, share or paste it in a ticket")
    if outputs.left_out:
        err(f"note: secrets left out as placeholders: {', '.join(outputs.left_out)} (--include-secrets)")
    if outputs.unset:
        err(f"warning: environment variable(s) not set: {', '.join(outputs.unset)}")


def step_line(step: Step) -> str:
    mark = "[x]" if step.ticked else "[ ]"
    detail = f": {step.detail}" if step.detail else ""
    state = "" if step.ticked else f" ({step.state})"
    return f"{mark} {step.name}{state}{detail}"


# On a terminal a table cell stays readable; `config get KEY` prints a value whole.
TERMINAL_CELL = 120


def entry_row(entry: ConfigEntry, limit: int | None = None) -> list[str]:
    flags = "secret" if entry.is_secret else "public" if entry.is_public else "private"
    shown = shortened(entry.shown, limit) if limit else entry.shown
    return [entry.key, shown, entry.category, flags, f"v{entry.version}"]


@renders("StatusChange")
def render_status_change(change: StatusChange) -> None:
    if change.changed:
        out(f"{change.name}: {change.previous or 'not registered'} -> {change.status}")
    else:
        out(f"{change.name}: already {change.status}")


@renders("InstancesReport")
def render_instances(report: InstancesReport) -> None:
    rows = [
        [
            m.name,
            m.role,
            m.community_name or "-",
            m.community_type or "-",
            m.status or "-",
            m.schema_version or "-",
            m.flag or "",
        ]
        for m in report.members
    ]
    table(
        f"instances (hub {report.hub})",
        ["name", "role", "community", "type", "status", "version", "flag"],
        rows,
    )


@renders("DoctorReport")
def render_doctor(report: DoctorReport) -> None:
    for check in report.checks:
        out(f"{'ok  ' if check.ok else 'FAIL'}  {check.name}: {check.detail}")
