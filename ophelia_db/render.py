"""Rendering results for people and programs.

This module owns how results look: a rich table on a terminal, one plain
line per instance otherwise, and JSON (stdout carries only the document;
diagnostics go to stderr). It reads result objects and never touches a
database.
"""

from __future__ import annotations

import json
import sys
from typing import Any, TextIO

from rich.console import Console
from rich.table import Table

from ophelia_db.results import (
    HistoryReport,
    InstanceResult,
    RunReport,
    StatusReport,
    SyncReport,
)

_STATE_STYLE = {
    "up-to-date": "green",
    "ok": "green",
    "noop": "green",
    "planned": "cyan",
    "outdated": "yellow",
    "unversioned": "yellow",
    "skipped": "yellow",
    "locked": "magenta",
}


def _console(stream: TextIO) -> Console:
    return Console(file=stream, highlight=False, soft_wrap=False)


def _is_tty(stream: TextIO) -> bool:
    return hasattr(stream, "isatty") and stream.isatty()


def emit_json(record: Any, stream: TextIO | None = None) -> None:
    stream = stream or sys.stdout
    stream.write(json.dumps(record, ensure_ascii=False, indent=2, default=str) + "\n")


def _styled(value: str) -> str:
    style = _STATE_STYLE.get(value, "red")
    return f"[{style}]{value}[/{style}]"


def render_status(report: StatusReport, stream: TextIO | None = None) -> None:
    stream = stream or sys.stdout
    if _is_tty(stream):
        table = Table(title=f"ophelia-db status (head {report.head or '-'})")
        for column in ("instance", "role", "state", "current", "pending", "migrations", "detail"):
            table.add_column(column)
        for row in report.instances:
            state = row.state + (f" ({row.registry_status})" if row.registry_status else "")
            table.add_row(
                row.name,
                row.role,
                _styled(row.state) if not row.registry_status else state,
                row.current or "-",
                ", ".join(row.pending) or "-",
                "-" if row.migrations_count is None else str(row.migrations_count),
                row.error or "",
            )
        _console(stream).print(table)
        return
    stream.write(f"head {report.head or '-'}\n")
    for row in report.instances:
        extra = f" [{row.registry_status}]" if row.registry_status else ""
        pending = f" pending={','.join(row.pending)}" if row.pending else ""
        error = f" error={row.error}" if row.error else ""
        stream.write(
            f"{row.name} {row.role} {row.state}{extra} current={row.current or '-'}{pending}{error}\n"
        )


def result_line(result: InstanceResult) -> str:
    """One plain line for a finished instance (also used for live progress)."""
    moved = (
        "-"
        if result.result in ("skipped", "unreachable") and not result.from_revision
        else f"{result.from_revision or 'base'} -> {result.to_revision or 'base'}"
    )
    done = result.applied or result.reverted
    applied = f" [{', '.join(done)}]" if done else ""
    error = f": {result.error}" if result.error else ""
    return f"{result.name} {result.result} {moved}{applied} {result.duration_ms}ms{error}"


def render_run(
    report: RunReport, stream: TextIO | None = None, err: TextIO | None = None, *, streamed: bool = False
) -> None:
    """Show a run; ``streamed`` means each instance's line was already printed as it finished."""
    stream = stream or sys.stdout
    err = err or sys.stderr
    if _is_tty(stream):
        table = Table(title=f"ophelia-db run {report.run_id} → {report.target}")
        for column in ("instance", "role", "result", "from", "to", "applied", "ms", "error"):
            table.add_column(column)
        for row in report.instances:
            table.add_row(
                row.name,
                row.role,
                _styled(row.result),
                row.from_revision or "-",
                row.to_revision or "-",
                ", ".join(row.applied or row.reverted) or "-",
                str(row.duration_ms),
                row.error or "",
            )
        _console(stream).print(table)
    elif not streamed:
        for row in report.instances:
            stream.write(result_line(row) + "\n")
    counts: dict[str, int] = {}
    for row in report.instances:
        counts[row.result] = counts.get(row.result, 0) + 1
    summary = ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items()))
    stream.write(f"{len(report.instances)} instance(s): {summary}; hub report {report.hub_report}\n")
    if report.hub_error:
        err.write(f"warning: hub report {report.hub_report}: {report.hub_error}\n")


def render_sync(report: SyncReport, stream: TextIO | None = None, err: TextIO | None = None) -> None:
    stream = stream or sys.stdout
    err = err or sys.stderr
    for row in report.instances:
        stream.write(f"{row.name} {row.state} current={row.current or '-'}\n")
    stream.write(f"hub report {report.hub_report}\n")
    if report.hub_error:
        err.write(f"error: {report.hub_error}\n")


def render_history(report: HistoryReport, stream: TextIO | None = None) -> None:
    stream = stream or sys.stdout
    if _is_tty(stream):
        table = Table(title=f"{report.name}: at {report.current or 'base'} (head {report.head or '-'})")
        for column in ("version", "name", "state", "applied at", "ms", "applied by"):
            table.add_column(column)
        for entry in report.entries:
            table.add_row(
                entry.version,
                entry.name,
                _styled("ok" if entry.state == "applied" else entry.state),
                entry.applied_at.isoformat(timespec="seconds") if entry.applied_at else "-",
                "-" if entry.execution_time_ms is None else str(entry.execution_time_ms),
                entry.applied_by or "-",
            )
        _console(stream).print(table)
        return
    stream.write(f"{report.name} current={report.current or '-'} head={report.head or '-'}\n")
    for entry in report.entries:
        when = entry.applied_at.isoformat(timespec="seconds") if entry.applied_at else "-"
        stream.write(f"{entry.version} {entry.state} {when} {entry.name}\n")
