"""How `runs`, `runs show` and `gate` look."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from ophelia_db.cli.render import err, out, renders, styled, table

if TYPE_CHECKING:
    from ophelia_db.results import JournalRun, RunDetail, RunsReport
    from ophelia_db.run.gate import GateReport


def _when(moment: datetime | None) -> str:
    return moment.isoformat(timespec="seconds") if moment else "-"


def _counts(run: JournalRun) -> str:
    return ", ".join(f"{n} {state}" for state, n in sorted((run.counts or {}).items())) or "no instance"


@renders("RunsReport")
def render_runs(report: RunsReport) -> None:
    rows = [
        [
            run.run_id,
            run.command,
            run.target,
            styled(run.outcome),
            _when(run.started_at),
            _counts(run),
            f"resumes {run.resumes}" if run.resumes else "",
        ]
        for run in report.runs
    ]
    table("ophelia-db runs", ["run", "command", "target", "outcome", "started", "instances", ""], rows)
    if not report.runs:
        out("no run in the hub's journal yet")
    if report.local:
        err(
            f"note: kept locally, not in the hub yet: {', '.join(report.local)} "
            "(`ophelia-db sync --all` pushes them)"
        )


@renders("RunDetail")
def render_run_detail(detail: RunDetail) -> None:
    run = detail.run
    out(f"run {run.run_id}: {run.command} to {run.target}, {run.outcome} ({_counts(run)})")
    out(f"started {_when(run.started_at)} by {run.started_by or '-'}; finished {_when(run.finished_at)}")
    for label, value in (("git", run.git_sha), ("ci", run.ci_job_url), ("resumes", run.resumes)):
        if value:
            out(f"{label} {value}")
    if run.source == "local":
        out("(kept locally: the hub has not got this journal yet)")
    if run.shard_count > 1:
        for shard in detail.shards:
            who = f" by {shard.started_by}" if shard.started_by else ""
            out(f"shard {shard.shard}/{run.shard_count}: {shard.state}{who}")
    rows = [
        [
            entry.instance,
            styled(entry.state),
            entry.from_revision or "-",
            entry.to_revision or "-",
            ", ".join(entry.applied) or "-",
            "-" if entry.duration_ms is None else f"{entry.duration_ms}ms",
            entry.error or "",
        ]
        for entry in detail.instances
    ]
    table(None, ["instance", "state", "from", "to", "applied", "duration", "error"], rows)
    unfinished = [e.instance for e in detail.instances if e.state not in ("ok", "noop")]
    if unfinished and run.command == "upgrade":
        out(f"not finished: {', '.join(unfinished)}; `ophelia-db upgrade --resume {run.run_id}` redoes them")


@renders("GateReport")
def render_gate(report: GateReport) -> None:
    below = [i for i in report.instances if not i.passed]
    wanted = report.revision or "base"
    for instance in below:
        out(f"{instance.name}: {instance.reason}")
    source = "the hub registry" if report.source == "registry" else "the live instances"
    if below:
        out(f"gate closed: {len(below)} of {len(report.instances)} instance(s) below {wanted} ({source})")
    else:
        out(f"gate open: all {len(report.instances)} instance(s) at or past {wanted} ({source})")
