"""A run's journal as it goes: what ``upgrade``/``downgrade`` tell ``fleet.journal`` and when.

This module turns a run's plan and results into journal operations: the
header and the shard's start before the first instance, every planned
instance (across all shards, so that ``runs show`` sees the shards that never
started), an instance's ``running`` line when it starts and its final line
when its result is known, and the shard's end. The hub reporter sends them in
order.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ophelia_db.fleet import journal
from ophelia_db.fleet.config import Fleet, Target
from ophelia_db.fleet.hub_writer import HubReporter
from ophelia_db.fleet.journal import LocalJournal, RunHeader
from ophelia_db.results import InstanceResult, RunReport
from ophelia_db.run.selection import RunPlan


@dataclass(frozen=True)
class RunIdentity:
    """How a run is named in the journal: its id, its shard, the run it resumes."""

    run_id: str
    shard: int = 1
    shard_count: int = 1
    resumes: str | None = None


def identify(run_id: str | None, shard: tuple[int, int] | None, resumes: str | None = None) -> RunIdentity:
    """The run's id: given, else the CI's (shards only: they must share one), else a new one.

    A shard with no shared id (none given, not in CI) cannot meet its sibling
    shards in the journal: it is journalled as a run of its own.
    """
    chosen = journal.check_run_id(run_id) if run_id else (journal.ci_run_id() if shard else None)
    if chosen is None:
        return RunIdentity(journal.new_run_id(), 1, 1, resumes)
    index, count = shard or (1, 1)
    return RunIdentity(chosen, index, count, resumes)


def reporter_for(fleet: Fleet, identity: RunIdentity, started: HubReporter | None = None) -> HubReporter:
    """The run's hub reporter (``started``: one already reading ahead), its journal kept locally
    under the run's id while the hub cannot take it."""
    reporter = started or HubReporter(fleet.hub)
    reporter.keep_locally(LocalJournal(fleet.path, identity.run_id))
    return reporter


def begun_journal(
    reporter: HubReporter | None,
    identity: RunIdentity,
    plan: RunPlan,
    target: str,
    selection: Mapping[str, object],
) -> RunJournal | None:
    """An upgrade's journal, its start recorded; none without reports (a dry run)."""
    if reporter is None:
        return None
    journal = RunJournal(reporter, identity, plan.shard_of, plan.wave_of)
    journal.begin("upgrade", target, selection)
    return journal


@dataclass
class RunJournal:
    """The journal lines of one run (one shard of it), handed to the hub reporter in order."""

    reporter: HubReporter
    identity: RunIdentity
    shard_of: Mapping[str, int]
    wave_of: Mapping[str, int]

    def begin(self, command: str, target: str, selection: Mapping[str, object]) -> None:
        sha, url = journal.ci_context()
        identity = self.identity
        header = RunHeader(
            run_id=identity.run_id,
            command=command,
            target=target,
            selection=selection,
            shard_count=identity.shard_count,
            resumes=identity.resumes,
            git_sha=sha,
            ci_job_url=url,
        )
        # One write: the run's header, its shard, and every planned instance, with what comes next.
        self.reporter.record_with_next(
            header.operation(),
            journal.shard_started(identity.run_id, identity.shard),
            *(
                journal.planned(identity.run_id, name, shard, self.wave_of.get(name, 1))
                for name, shard in self.shard_of.items()
            ),
        )

    def started(self, target: Target) -> None:
        self.reporter.record(self._entry(target.name, "running"))

    def finished(self, result: InstanceResult) -> None:
        self.reporter.record(
            self._entry(
                result.name,
                result.result,
                from_revision=result.from_revision,
                to_revision=result.to_revision,
                applied=result.applied or result.reverted,
                duration_ms=result.duration_ms,
                exit_code=int(result.exit_code),
                error=result.error,
            )
        )

    def end(self, report: RunReport) -> None:
        code = report.exit_code
        outcome = "ok" if code == 0 else ("interrupted" if report.interrupted else "failed")
        self.reporter.record(journal.shard_finished(self.identity.run_id, self.identity.shard, outcome, code))

    def _entry(self, name: str, state: str, **fields: object) -> journal.Operation:
        return journal.entry(
            self.identity.run_id,
            name,
            shard=self.shard_of.get(name, self.identity.shard),
            wave=self.wave_of.get(name, 1),
            state=state,
            **fields,  # type: ignore[arg-type]
        )
