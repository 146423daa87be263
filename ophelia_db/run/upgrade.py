"""`upgrade` over a fleet selection: shards, waves, triage, fan-out, hub reports and journal.

This module owns orchestration: deciding from one concurrent read which
instances need work, leaving archived/suspended instances and other shards
out, running the hub first and the waves next within their error budget,
handing the work to ``fanout``, and reporting each finished instance to the
hub registry and the run journal. It never prints and never exits.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field, replace

from ophelia_db.errors import ConfigError, ExitCode, OpheliaError
from ophelia_db.fleet.config import Fleet, Target
from ophelia_db.fleet.hub import RegistryRow, RegistryUpdate, registry_rows
from ophelia_db.fleet.hub_writer import HubReporter
from ophelia_db.results import (
    InstanceResult,
    Outcome,
    RunReport,
    state_exit_code,
)
from ophelia_db.run import batch, fanout
from ophelia_db.run.chain import Chain, chain_for
from ophelia_db.run.fanout import Halt
from ophelia_db.run.instance import state_fields
from ophelia_db.run.journal import RunJournal, begun_journal, identify, reporter_for
from ophelia_db.run.looks import FirstLooks
from ophelia_db.run.selection import Budget, RunPlan, WavePlan, parse_shard, plan_run
from ophelia_db.run.state import REFUSED_STATES, InstanceState, below_current, classify
from ophelia_db.run.status import in_daemon

ProgressCallback = Callable[[InstanceResult], None]


def _drop_inactive(registry: dict[str, str] | None, targets: list[Target]) -> tuple[list[Target], list[str]]:
    """Drop archived and suspended instances (per the hub registry) from an ``--all`` run."""
    if not registry:
        return targets, []
    kept, skipped = [], []
    for target in targets:
        if target.role == "instance" and registry.get(target.name) in ("archived", "suspended"):
            skipped.append(target.name)
        else:
            kept.append(target)
    return kept, skipped


def _statuses(rows: dict[str, RegistryRow] | None) -> dict[str, str] | None:
    return None if rows is None else {name: row.status for name, row in rows.items()}


def registry_update(result: InstanceResult, target: Target) -> RegistryUpdate:
    # Only a result that read the instance's state carries its version (a
    # locked, unreachable or skipped one did not): the hub keeps what it knew.
    return RegistryUpdate(
        target=target,
        run_status=result.result,
        version_known=result.migrations_count is not None,
        schema_version=result.to_revision,
        schema_updated_at=result.updated_at,
        migrations_count=result.migrations_count,
        error=result.error,
        schema_fingerprint=result.schema_fingerprint,
    )


@dataclass(frozen=True)
class Progress:
    """Who hears about a run as it goes: the final selection, then each instance's start and result."""

    on_plan: Callable[[list[Target]], None] | None = None
    on_start: Callable[[Target], None] | None = None
    on_result: ProgressCallback | None = None


@dataclass(frozen=True)
class Resumption:
    """A run being resumed: its id, and the revision it last recorded for each instance it left.

    An instance whose first look finds it elsewhere has moved since (someone
    else ran it, or changed it by hand): it is reported, not forced.
    """

    run_id: str
    recorded: Mapping[str, str | None] = field(default_factory=dict)

    def moved(self, target: Target, state: InstanceState | OpheliaError) -> InstanceResult | None:
        recorded = self.recorded.get(target.name)
        if recorded is None or not isinstance(state, InstanceState) or state.revision == recorded:
            return None
        why = (
            f"{target.name}: moved since run {self.run_id} (recorded at {recorded}, now at "
            f"{state.revision or 'base'}); not forced: run `ophelia-db upgrade --instance {target.name}` "
            "if it should go on"
        )
        return replace(
            InstanceResult.skipped(target, why), from_revision=state.revision, to_revision=state.revision
        )


def upgrade(
    fleet: Fleet,
    targets: list[Target],
    *,
    to: str = "head",
    jobs: int | None = None,
    dry_run: bool = False,
    canary: str | None = None,
    waves: Sequence[str] = (),
    max_failures: int | None = None,
    max_failure_rate: float | None = None,
    skip_inactive: bool = True,
    shard: str | None = None,
    run_id: str | None = None,
    resuming: Resumption | None = None,
    chain: Chain | None = None,
    progress: Progress | None = None,
    hub_reporter: HubReporter | None = None,
) -> RunReport:
    """Upgrade the selected instances to ``to``: the hub first, then the waves; journal the run.

    ``skip_inactive`` leaves out archived and suspended instances; ``shard`` (``K/N``, ``auto/N``)
    keeps one shard, journalled under ``run_id``. Each wave (``waves``: tags, ``10%``, ``rest``;
    ``canary``: one tag) starts only while the failures are within ``max_failures``/``max_failure_rate``
    (none by default). ``hub_reporter``: one the caller started (``HubReporter.read_ahead``).
    """
    chain = chain or chain_for()
    goal = chain.resolve(to)
    if canary and waves:
        raise ConfigError("--canary TAG is the first wave of --wave TAG ...: give one or the other")
    wave_specs = list(waves) or ([canary] if canary else [])
    budget = Budget(max_failures, max_failure_rate) if waves else Budget()
    shard_spec = parse_shard(shard) if shard else None
    identity = identify(run_id, shard_spec, resuming.run_id if resuming else None)
    inactive: list[str] = []
    reporter = None if dry_run else reporter_for(fleet, identity, hub_reporter)
    run = _FleetRun(chain, goal, jobs or fleet.defaults.jobs, Halt(max_failures), reporter, None, resuming)
    try:
        # Only a whole run looks before the registry read (a shard's selection depends on it).
        run.begin(fleet.defaults.per_host, targets if shard_spec is None else [], dry_run)
        if skip_inactive:
            # Read on the connection the reports will go through, when there are reports.
            registry = reporter.registry_statuses() if reporter else _statuses(registry_rows(fleet.hub))
            targets, inactive = _drop_inactive(registry, targets)
        plan = plan_run(fleet, targets, wave_specs, shard_spec, shared=identity.shard_count > 1)
        selection = {"instances": [t.name for t in targets], "waves": wave_specs, "inactive": inactive}
        run.journal = begun_journal(reporter, identity, plan, to, selection)
        progress = progress or Progress()
        if progress.on_plan:
            progress.on_plan(plan.targets)
        run.on_start, run.on_result = progress.on_start, progress.on_result
        run.run_waves(plan, budget, dry_run)
        report = run.report(identity.run_id, to, inactive, dry_run)
        if run.journal:
            run.journal.end(report)
    finally:
        run.close()
        if reporter is not None:
            reporter.close()
    return with_hub_state(report, reporter)


def with_hub_state(report: RunReport, reporter: HubReporter | None) -> RunReport:
    """The report once the hub writes are over: how they went, and where the journal is if not there."""
    if reporter is None:
        return report
    kept = reporter.kept_locally
    return replace(
        report, hub_report=reporter.state, hub_error=reporter.error, journal_local=str(kept) if kept else None
    )


@dataclass
class _FleetRun:
    """One ``upgrade`` over a selection: its waves, its halt, its results as they come."""

    chain: Chain
    goal: str | None
    jobs: int
    halt: Halt
    reporter: HubReporter | None
    journal: RunJournal | None
    resuming: Resumption | None
    on_start: Callable[[Target], None] | None = None
    on_result: ProgressCallback | None = None
    results: dict[str, InstanceResult] = field(default_factory=dict)
    # The first looks (``begin``), with the connections kept for their migrations.
    looks: FirstLooks | None = None
    prepare: batch.RenderAhead | None = None

    @property
    def states(self) -> dict[str, InstanceState | OpheliaError]:
        assert self.looks is not None, "begin() first"
        return self.looks.states

    def started(self, target: Target) -> None:
        if self.journal:
            self.journal.started(target)
        if self.on_start:
            self.on_start(target)

    def finish(self, target: Target, result: InstanceResult) -> None:
        probed = self.states.get(target.name)
        if result.migrations_count is None and isinstance(probed, InstanceState):
            # Say what is known (the revision this run read first), not "base".
            result = replace(result, from_revision=probed.revision, to_revision=probed.revision)
        self.results[target.name] = result
        if self.reporter is not None and result.result != "skipped":
            self.reporter.report(registry_update(result, target))
        if self.journal:
            self.journal.finished(result)
        if self.on_result:
            self.on_result(result)

    def begin(self, per_host: int, targets: list[Target], dry_run: bool) -> None:
        """Start looking at ``targets`` now, the hub on its own: its migration waits only on its own
        first look, not on the run's loading, the registry read or the instances' looks."""
        self.prepare = None if dry_run else batch.RenderAhead(self.chain, self.goal)
        has_work = None if dry_run else self.has_work
        self.looks = FirstLooks(self.jobs, per_host, has_work, self.prepare.seen if self.prepare else None)
        self.looks.start([t for t in targets if t.role == "hub"])
        self.looks.start([t for t in targets if t.role != "hub"])

    def close(self) -> None:
        if self.looks is not None:
            self.looks.close()

    def has_work(self, target: Target, state: InstanceState) -> bool:
        return self.triage(target, state, dry_run=False) is None

    def run_waves(self, plan: RunPlan, budget: Budget, dry_run: bool) -> None:
        # The instances' first looks go on in the background while the hub migrates; each
        # wave settles its instances from them, so a failed hub still leaves them untouched.
        assert self.looks is not None, "begin() first"
        self.looks.settle(plan.targets)
        self.looks.start([t for t in plan.targets if t.name not in self.looks.started])  # a shard's
        self.run_planned(plan, budget, dry_run)

    def run_planned(self, plan: RunPlan, budget: Budget, dry_run: bool) -> None:
        assert self.looks is not None
        with fanout.Workers(self.jobs) as workers:
            # The fork server's start (a Python importing Alembic and SQLAlchemy, ≈ 0.4 s) goes
            # on while the hub migrates, as soon as the looks tell that instances need it. The
            # call below, after the hub, is then a no-op (and raises what this one would have).
            in_daemon(lambda: self.warm(workers, plan, dry_run, wait=True), "warm-workers")
            if plan.hub:
                self.looks.wait_for(plan.hub)
                hub_outcomes = self.outcomes(plan.hub, dry_run)
                self.wave(plan.hub, 1, hub_outcomes, workers)
                if not all(self.results[t.name].succeeded for t in plan.hub) and not self.halt.reason:
                    self.halt.reason = "not run: the hub did not upgrade; fix that first"
                if self.reporter is not None and None in hub_outcomes.values():
                    self.reporter.recheck_journal()  # the hub may have just got its journal
            self.looks.wait_for(plan.targets)
            self.warm(workers, plan, dry_run)
            for index, wave in enumerate(plan.waves):
                if index and not self.halt.reason:
                    self.check_budget(budget, wave, plan.waves[:index])
                self.wave(list(wave.targets), self.jobs, self.outcomes(wave.targets, dry_run), workers)

    def outcomes(self, targets: Sequence[Target], dry_run: bool) -> dict[str, InstanceResult | None]:
        """What each target's read settles without migrating it (``None``: it has work)."""
        return {t.name: self.triage(t, self.states[t.name], dry_run) for t in targets}

    def warm(self, workers: fanout.Workers, plan: RunPlan, dry_run: bool, *, wait: bool = False) -> None:
        """Start worker processes if more than one instance needs Alembic online (``wait``: once
        every instance's first look is in)."""
        assert self.looks is not None
        if wait:
            self.looks.wait_for(plan.targets)
        if self.halt.reason:
            return  # the hub failed, or the run was interrupted: no instance will need them
        work = [
            t
            for wave in plan.waves
            for t in wave.targets
            if self.triage(t, self.states[t.name], dry_run) is None
        ]
        # Asked only of instances with work: it renders their revisions.
        if sum(1 for t in work if not self.all_batched(t)) > 1:
            workers.warm()

    def check_budget(self, budget: Budget, wave: WavePlan, before: list[WavePlan]) -> None:
        """Keep the next wave from starting once the failures so far are over the budget."""
        done = [r for r in self.results.values() if r.role != "hub" and r.result != "skipped"]
        failures = [r.name for r in done if not r.succeeded]
        over = budget.exceeded(len(failures), len(done))
        if over:
            after = ", ".join(f"'{w.label}'" for w in before)
            self.halt.reason = (
                f"not run: wave '{wave.label}' not started after wave {after}: {over} ({', '.join(failures)})"
            )
            self.halt.failure_codes.add(ExitCode.MIXED)

    def report(self, run_id: str, to: str, inactive: list[str], dry_run: bool) -> RunReport:
        return RunReport(
            run_id=run_id,
            target=to,
            instances=tuple(sorted(self.results.values(), key=lambda r: (r.role != "hub", r.name))),
            interrupted=self.halt.interrupted,
            inactive=tuple(inactive),
            dry_run=dry_run,
        )

    def triage(
        self, target: Target, state: InstanceState | OpheliaError, dry_run: bool
    ) -> InstanceResult | None:
        moved = self.resuming.moved(target, state) if self.resuming else None
        return moved or _triage(target, state, self.chain, self.goal, dry_run)

    def wave(
        self,
        wave: list[Target],
        jobs: int,
        outcomes: dict[str, InstanceResult | None],
        workers: fanout.Workers,
    ) -> None:
        halt = self.halt
        if halt.reason:
            for target in wave:
                self.finish(target, halt.skip(target))
            return
        work = [target for target in wave if outcomes[target.name] is None]
        # Results settled all at once, with nothing to wait for, go to the hub with what follows.
        with self.reporter.deferred() if self.reporter and not work else nullcontext():
            for target in wave:
                outcome = outcomes[target.name]
                if outcome is not None:
                    self.halt.record(outcome)
                    self.finish(target, outcome)
        assert self.looks is not None
        kept = self.looks.kept
        looks = {t.name: look for t in work if isinstance(look := self.states.get(t.name), InstanceState)}
        wave_spec = fanout.Wave(
            self.chain.spec, self.goal, self.halt, self.finish, self.started, kept.slots, kept, looks
        )
        fanout.run(work, wave_spec, jobs, workers, in_threads=self.all_batched)

    def all_batched(self, target: Target) -> bool:
        """Whether every revision the first look found pending goes as a batch (see run/batch.py)."""
        state = self.states.get(target.name)
        if not isinstance(state, InstanceState) or self.goal is None:
            return False
        pending = classify(state, self.chain, self.goal).pending
        rendered = batch.rendered(self.chain, state.revision, self.goal)
        return all(revision in rendered for revision in pending)


def _triage(
    target: Target, state: InstanceState | OpheliaError, chain: Chain, goal: str | None, dry_run: bool
) -> InstanceResult | None:
    """Settle an instance without a lock when its first look says so; ``None`` means migrate."""
    started = time.monotonic()
    if isinstance(state, OpheliaError):
        return InstanceResult.from_error(target, state, started)
    verdict = classify(state, chain, goal, name=target.name)
    known = state_fields(state)
    if verdict.state in REFUSED_STATES:
        code = state_exit_code(verdict.state)
        return InstanceResult.refused(target, verdict.problem or verdict.state, started, code, **known)
    going_down = below_current(state, chain, goal, target.name)
    if going_down:
        return InstanceResult.refused(target, going_down, started, ExitCode.USAGE, **known)
    if dry_run:
        return InstanceResult.of(
            target,
            Outcome.PLANNED if verdict.pending else Outcome.NOOP,
            applied=verdict.pending,
            **{**known, "to_revision": verdict.pending[-1] if verdict.pending else state.revision},
        )
    if not verdict.pending and not state.locked:
        return InstanceResult.of(target, Outcome.NOOP, **known)
    return None
