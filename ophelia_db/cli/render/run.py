"""How `status`, `upgrade`/`downgrade`, `sync` and `history` look, and the live progress of a run.

A rich table on a terminal, one plain line per instance otherwise.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TextIO

from ophelia_db.cli.render import is_tty, print_table, renders, styled
from ophelia_db.results import (
    HistoryReport,
    InstanceResult,
    InstanceStatus,
    RunReport,
    StatusReport,
    SyncReport,
)

if TYPE_CHECKING:
    from rich.progress import Progress

    from ophelia_db.fleet.config import Target


@renders("StatusReport")
def render_status(report: StatusReport, stream: TextIO | None = None) -> None:
    stream = stream or sys.stdout
    if is_tty(stream):
        headers = ["instance", "role", "state", "current", "pending", "migrations", "detail"]
        rows = [
            [
                row.name,
                row.role,
                styled(row.state) if not row.registry_status else f"{row.state} ({row.registry_status})",
                row.current or "-",
                ", ".join(row.pending) or "-",
                "-" if row.migrations_count is None else str(row.migrations_count),
                "; ".join(filter(None, [row.error, _registry_note(row)])),
            ]
            for row in report.instances
        ]
        print_table(f"ophelia-db status (head {report.head or '-'})", headers, rows, stream)
        return
    stream.write(f"head {report.head or '-'}\n")
    for row in report.instances:
        extra = f" [{row.registry_status}]" if row.registry_status else ""
        pending = f" pending={','.join(row.pending)}" if row.pending else ""
        error = f" error={row.error}" if row.error else ""
        registry = f" registry={row.registry_version}" if row.registry_disagrees else ""
        current = f"current={row.current or '-'}{registry}"
        stream.write(f"{row.name} {row.role} {row.state}{extra} {current}{pending}{error}\n")
    disagreeing = [row.name for row in report.instances if row.registry_disagrees]
    if disagreeing:
        stream.write(f"the hub registry disagrees on {', '.join(disagreeing)}: `ophelia-db sync` fixes it\n")


def _registry_note(row: InstanceStatus) -> str | None:
    if not row.registry_disagrees:
        return None
    return f"registry says {row.registry_version}: `ophelia-db sync --instance {row.name}` fixes it"


def result_line(result: InstanceResult) -> str:
    """One plain line for a finished instance (also used for live progress)."""
    moved = (
        "-"
        if result.migrations_count is None and not result.from_revision
        else f"{result.from_revision or 'base'} -> {result.to_revision or 'base'}"
    )
    done = result.applied or result.reverted
    applied = f" [{', '.join(done)}]" if done else ""
    error = f": {result.error}" if result.error else ""
    return f"{result.name} {result.result} {moved}{applied} {result.duration_ms}ms{error}"


@renders("RunReport")
def render_run(
    report: RunReport, stream: TextIO | None = None, err: TextIO | None = None, *, streamed: bool = False
) -> None:
    """Show a run; ``streamed`` means each instance's line was already printed as it finished."""
    stream = stream or sys.stdout
    err = err or sys.stderr
    if report.inactive:
        err.write(f"skipped (archived or suspended in the hub): {', '.join(report.inactive)}\n")
    if is_tty(stream):
        headers = ["instance", "role", "result", "from", "to", "applied", "ms", "error"]
        rows = [
            [
                row.name,
                row.role,
                styled(row.result),
                row.from_revision or "-",
                row.to_revision or "-",
                ", ".join(row.applied or row.reverted) or "-",
                str(row.duration_ms),
                row.error or "",
            ]
            for row in report.instances
        ]
        print_table(f"ophelia-db run {report.run_id} → {report.target}", headers, rows, stream)
    elif not streamed:
        for row in report.instances:
            stream.write(result_line(row) + "\n")
    counts: dict[str, int] = {}
    for row in report.instances:
        counts[row.result] = counts.get(row.result, 0) + 1
    summary = ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items())) or "nothing to do"
    hub = "not sent (dry run)" if report.dry_run else report.hub_report
    run = "" if report.dry_run or not report.instances else f"; run {report.run_id}"
    stream.write(f"{len(report.instances)} instance(s): {summary}; hub report {hub}{run}\n")
    if report.hub_error:
        err.write(f"warning: hub report {report.hub_report}: {report.hub_error}\n")
    if report.journal_local:
        err.write(
            f"note: run {report.run_id}'s journal is kept in {report.journal_local}; "
            "`ophelia-db sync --all` pushes it to the hub\n"
        )


@renders("SyncReport")
def render_sync(report: SyncReport, stream: TextIO | None = None, err: TextIO | None = None) -> None:
    stream = stream or sys.stdout
    err = err or sys.stderr
    for row in report.instances:
        error = f" error={row.error}" if row.error else ""
        stream.write(f"{row.name} {row.state} current={row.current or '-'}{error}\n")
    stream.write(f"hub report {report.hub_report}\n")
    if report.journals_pushed:
        stream.write(f"run journal(s) pushed to the hub: {', '.join(report.journals_pushed)}\n")
    if report.hub_error:
        err.write(f"error: {report.hub_error}\n")


@renders("HistoryReport")
def render_history(report: HistoryReport, stream: TextIO | None = None) -> None:
    stream = stream or sys.stdout
    if is_tty(stream):
        headers = ["version", "name", "state", "applied at", "ms", "checksum", "applied by"]
        rows = [
            [
                entry.version,
                entry.name,
                styled("ok" if entry.state == "applied" else entry.state),
                entry.applied_at.isoformat(timespec="seconds") if entry.applied_at else "-",
                "-" if entry.execution_time_ms is None else str(entry.execution_time_ms),
                (entry.checksum or "-")[:19],
                entry.applied_by or "-",
            ]
            for entry in report.entries
        ]
        title = f"{report.name}: at {report.current or 'base'} (head {report.head or '-'})"
        print_table(title, headers, rows, stream)
        return
    stream.write(f"{report.name} current={report.current or '-'} head={report.head or '-'}\n")
    for entry in report.entries:
        when = entry.applied_at.isoformat(timespec="seconds") if entry.applied_at else "-"
        took = "-" if entry.execution_time_ms is None else f"{entry.execution_time_ms}ms"
        checksum = (entry.checksum or "-")[:19]
        stream.write(
            f"{entry.version} {entry.state} {when} {took} {checksum} {entry.applied_by or '-'} {entry.name}\n"
        )


class RunProgress:
    """Live progress of a run: a rich bar on a terminal, one line per instance otherwise."""

    def __init__(self, total: int, stream: TextIO, enabled: bool) -> None:
        self.stream = stream
        self.enabled = enabled
        self.tty = is_tty(stream)
        self.streamed = enabled and not self.tty
        self.failures = 0
        self.current: set[str] = set()
        self._bar: Progress | None = None
        self._task: Any = None
        self.total = total

    def _describe(self) -> str:
        now = ", ".join(sorted(self.current)[:4]) + (" ..." if len(self.current) > 4 else "")
        failed = f"[red]{self.failures} failed[/red] " if self.failures else ""
        return f"{failed}{now}"

    def planned(self, targets: list[Target]) -> None:
        """The library's final selection (archived instances and other shards left out)."""
        self.total = len(targets)
        if self._bar is not None:
            self._bar.update(self._task, total=self.total)

    def started(self, target: Target) -> None:
        self.current.add(target.name)
        if self._bar is not None:
            self._bar.update(self._task, description=self._describe())

    def finished(self, result: InstanceResult) -> None:
        self.current.discard(result.name)
        if result.result not in ("ok", "noop", "planned", "skipped"):
            self.failures += 1
        if self._bar is not None:
            self._bar.update(self._task, advance=1, description=self._describe())
        elif self.streamed:
            self.stream.write(result_line(result) + "\n")
            self.stream.flush()


@contextmanager
def progress_display(
    total: int, *, enabled: bool = True, stream: TextIO | None = None
) -> Iterator[RunProgress]:
    """Show progress while the block runs (on stderr when it is a terminal)."""
    out = stream or sys.stdout
    progress = RunProgress(total, out, enabled)
    if enabled and progress.tty and total > 1:
        # rich is imported for a terminal only (≈ 30 ms of every command otherwise).
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        bar = Progress(
            TextColumn("upgrading"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.description}"),
            console=Console(file=sys.stderr),
            transient=True,
        )
        progress._bar = bar
        progress._task = bar.add_task("", total=total)
        with bar:
            yield progress
        return
    yield progress
