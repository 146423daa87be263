"""`upgrade` and `downgrade` over a fleet selection: waves, triage, fan-out, hub reports.

This module owns orchestration: deciding from one concurrent read which
instances need work, leaving archived/suspended instances and other shards
out, running the hub first and canaries next, handing the work to
``fanout``, and reporting each finished instance to the hub. It never
prints and never exits.
"""

from __future__ import annotations

import re
import time
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from ophelia_db.errors import ConfigError, ExitCode, OpheliaError
from ophelia_db.fleet.config import Fleet, Target
from ophelia_db.fleet.hub import HubReporter, RegistryUpdate, registry_statuses
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
from ophelia_db.run.state import REFUSED_STATES, InstanceState, below_current, classify
from ophelia_db.run.status import probe_all

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


def upgrade(
    fleet: Fleet,
    targets: list[Target],
    *,
    to: str = "head",
    jobs: int | None = None,
    dry_run: bool = False,
    canary: str | None = None,
    max_failures: int | None = None,
    skip_inactive: bool = True,
    shard: str | None = None,
    chain: Chain | None = None,
    on_plan: Callable[[list[Target]], None] | None = None,
    on_start: Callable[[Target], None] | None = None,
    on_result: ProgressCallback | None = None,
) -> RunReport:
    """Upgrade the selected instances to ``to``: the hub first, canaries next, then the rest.

    ``skip_inactive`` leaves out the instances the hub registry marks archived
    or suspended; ``shard`` (``"K/N"``) keeps one shard of the selection. A
    failing hub or canary stops the run before the others are touched;
    ``max_failures`` stops starting new instances once that many have failed.
    ``on_plan`` hears the final selection, ``on_start``/``on_result`` each instance.
    """
    chain = chain or chain_for()
    goal = chain.resolve(to)
    if canary:
        fleet.tagged(canary)  # a misspelt canary tag must not run the fleet without its canary wave
    inactive: list[str] = []
    reporter = None if dry_run else HubReporter(fleet.hub)
    try:
        if skip_inactive:
            # Read on the connection the reports will go through, when there are reports.
            registry = reporter.registry_statuses() if reporter else registry_statuses(fleet.hub)
            targets, inactive = _drop_inactive(registry, targets)
        if shard:
            targets = select_shard(targets, shard)
        if on_plan:
            on_plan(targets)
        jobs = jobs or fleet.defaults.jobs
        run = _FleetRun(chain, goal, jobs, Halt(max_failures), reporter, on_start, on_result)
        run.waves(targets, canary, dry_run)
    finally:
        if reporter is not None:
            reporter.close()
    return RunReport(
        run_id=uuid.uuid4().hex[:12],
        target=to,
        instances=tuple(sorted(run.results.values(), key=lambda r: (r.role != "hub", r.name))),
        hub_report="ok" if reporter is None else reporter.state,
        hub_error=None if reporter is None else reporter.error,
        interrupted=run.halt.interrupted,
        inactive=tuple(inactive),
        dry_run=dry_run,
    )


@dataclass
class _FleetRun:
    """One ``upgrade`` over a selection: its waves, its halt, its results as they come."""

    chain: Chain
    goal: str | None
    jobs: int
    halt: Halt
    reporter: HubReporter | None
    on_start: Callable[[Target], None] | None
    on_result: ProgressCallback | None
    results: dict[str, InstanceResult] = field(default_factory=dict)
    states: dict[str, InstanceState | OpheliaError] = field(default_factory=dict)

    def finish(self, target: Target, result: InstanceResult) -> None:
        probed = self.states.get(target.name)
        if result.migrations_count is None and isinstance(probed, InstanceState):
            # Say what is known (the revision this run read first), not "base".
            result = replace(result, from_revision=probed.revision, to_revision=probed.revision)
        self.results[target.name] = result
        if self.reporter is not None and result.result != "skipped":
            self.reporter.report(registry_update(result, target))
        if self.on_result:
            self.on_result(result)

    def waves(self, targets: list[Target], canary: str | None, dry_run: bool) -> None:
        hub = [t for t in targets if t.role == "hub"]
        canaries = [t for t in targets if t.role != "hub" and canary and canary in t.tags]
        rest = [t for t in targets if t.role != "hub" and t not in canaries]
        # One concurrent read of every instance up front; each wave settles its
        # own instances from it, so a failed hub still leaves the others untouched.
        states = self.states = probe_all(targets)
        outcomes = {t.name: _triage(t, states[t.name], self.chain, self.goal, dry_run) for t in targets}
        # Worker processes are warmed only for the instances that need Alembic online.
        parallel_work = sum(
            1 for t in canaries + rest if outcomes[t.name] is None and not self.all_batched(t)
        )
        waves = [(hub, 1, "the hub"), (canaries, self.jobs, f"canary instances tagged '{canary}'")]
        waves.append((rest, self.jobs, ""))
        with fanout.Workers(self.jobs, warm=parallel_work > 1) as workers:
            for index, (wave, wave_jobs, label) in enumerate(waves):
                self.wave(wave, wave_jobs, outcomes, workers)
                failed = [t.name for t in wave if not self.results[t.name].succeeded]
                if label and failed and index < len(waves) - 1 and not self.halt.reason:
                    self.halt.reason = (
                        f"not run: {label} did not all upgrade ({', '.join(failed)}); fix that first"
                    )

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
        work = []
        for target in wave:
            outcome = outcomes[target.name]
            if outcome is None:
                work.append(target)
            else:
                self.halt.record(outcome)
                self.finish(target, outcome)
        wave_spec = fanout.Wave(self.chain.spec, self.goal, self.halt, self.finish, self.on_start)
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
    verdict = classify(state, chain, goal)
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


def select_shard(targets: list[Target], spec: str) -> list[Target]:
    """Keep the instances of shard ``K/N`` (1-based), leaving the hub out.

    Membership depends only on each instance's name (a CRC32 of it), so
    adding an instance to the fleet never moves the others between shards,
    and N machines of a CI matrix together cover the selection exactly once.
    """
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", spec)
    if not match or not 1 <= int(match.group(1)) <= int(match.group(2)):
        raise ConfigError(f"--shard {spec!r}: expected K/N with 1 <= K <= N, e.g. --shard 2/4")
    index, count = int(match.group(1)) - 1, int(match.group(2))
    return [t for t in targets if t.role != "hub" and zlib.crc32(t.name.encode()) % count == index]
