"""The library façade: one function per command, over a whole fleet selection.

This module owns orchestration: reading every selected instance's state in
parallel threads (one round trip each, no Alembic), deciding which
instances need work, fanning the work out to worker processes, reporting
each finished instance to the hub, and returning result objects. It never
prints and never exits; ``cli.py`` renders what it returns.
"""

from __future__ import annotations

import io
import re
import time
import uuid
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

from ophelia_db import fanout
from ophelia_db.chain import Chain, ChainSpec
from ophelia_db.connections import connect
from ophelia_db.errors import ConfigError, ExitCode, OpheliaError
from ophelia_db.fanout import Halt, skipped
from ophelia_db.fleet import Fleet, Target, Timeouts
from ophelia_db.hub import HubReporter, RegistryUpdate, registry_statuses
from ophelia_db.migrate import REFUSED_STATES, chain_for, failure, migrate, refused, state_fields
from ophelia_db.mirror import InstanceState, classify, read_state
from ophelia_db.results import (
    HistoryEntry,
    HistoryReport,
    InstanceResult,
    InstanceStatus,
    RunReport,
    StatusReport,
    SyncReport,
)
from ophelia_db.sqlscript import mark_non_transactional

ProgressCallback = Callable[[InstanceResult], None]
_STATUS_THREADS = 16


def _probe(target: Target) -> InstanceState | OpheliaError:
    try:
        with connect(target, autocommit=True) as conn:
            return read_state(conn)
    except OpheliaError as error:
        return error


def probe_all(
    targets: list[Target], threads: int = _STATUS_THREADS
) -> dict[str, InstanceState | OpheliaError]:
    """Read every target's state concurrently; failures come back as values."""
    if len(targets) <= 1:
        return {t.name: _probe(t) for t in targets}
    with ThreadPoolExecutor(max_workers=min(threads, len(targets))) as pool:
        return dict(zip((t.name for t in targets), pool.map(_probe, targets), strict=True))


def _status_of(target: Target, state: InstanceState | OpheliaError, chain: Chain) -> InstanceStatus:
    if isinstance(state, OpheliaError):
        kind = "unreachable" if state.exit_code == ExitCode.UNREACHABLE else "error"
        return InstanceStatus(name=target.name, role=target.role, state=kind, error=state.message)
    verdict = classify(state, chain)
    name = verdict.state
    if state.locked and name not in REFUSED_STATES:
        name = "locked" if name != "up-to-date" else name
    return InstanceStatus(
        name=target.name,
        role=target.role,
        state=name,
        current=state.revision,
        pending=verdict.pending,
        migrations_count=state.migrations_count if state.has_mirror else None,
        updated_at=state.updated_at,
        error=verdict.problem,
    )


def status(fleet: Fleet, targets: list[Target], *, chain: Chain | None = None) -> StatusReport:
    """Tell where each selected instance stands against the chain's head."""
    chain = chain or chain_for(ChainSpec.default())
    with ThreadPoolExecutor(max_workers=1) as side:
        # The hub's lifecycle statuses are read while the instances are probed.
        lifecycles = (
            side.submit(registry_statuses, fleet.hub) if any(t.role == "instance" for t in targets) else None
        )
        states = probe_all(targets)
        registry = lifecycles.result() if lifecycles is not None else None
    rows = []
    for target in targets:
        row = _status_of(target, states[target.name], chain)
        lifecycle = (registry or {}).get(target.name)
        if lifecycle and lifecycle != "active":
            row = replace(row, registry_status=lifecycle)
        rows.append(row)
    return StatusReport(head=chain.head, instances=tuple(rows))


def skip_inactive(fleet: Fleet, targets: list[Target]) -> tuple[list[Target], list[str]]:
    """Drop archived and suspended instances (per the hub registry) from an ``--all`` run."""
    registry = registry_statuses(fleet.hub)
    if not registry:
        return targets, []
    kept, skipped = [], []
    for target in targets:
        if target.role == "instance" and registry.get(target.name) in ("archived", "suspended"):
            skipped.append(target.name)
        else:
            kept.append(target)
    return kept, skipped


def _registry_update(result: InstanceResult, target: Target) -> RegistryUpdate:
    known = result.result not in ("unreachable", "skipped")
    return RegistryUpdate(
        target=target,
        run_status=result.result,
        version_known=known,
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
    chain: Chain | None = None,
    on_start: Callable[[Target], None] | None = None,
    on_result: ProgressCallback | None = None,
) -> RunReport:
    """Upgrade the selected instances to ``to``: the hub first, canaries next, then the rest.

    A failing hub or canary stops the run before the others are touched;
    ``max_failures`` stops starting new instances once that many have failed.
    """
    chain = chain or chain_for(ChainSpec.default())
    goal = chain.resolve(to)
    jobs = jobs or fleet.defaults.jobs
    results: dict[str, InstanceResult] = {}
    reporter = None if dry_run else HubReporter(fleet.hub)
    halt = Halt(max_failures=max_failures)

    def finish(target: Target, result: InstanceResult) -> None:
        results[target.name] = result
        if reporter is not None and result.result != "skipped":
            reporter.report(_registry_update(result, target))
        if on_result:
            on_result(result)

    hub = [t for t in targets if t.role == "hub"]
    canaries = [t for t in targets if t.role != "hub" and canary and canary in t.tags]
    rest = [t for t in targets if t.role != "hub" and t not in canaries]
    waves = [(hub, 1, "the hub"), (canaries, jobs, f"canary instances tagged '{canary}'"), (rest, jobs, "")]
    # One concurrent read of every instance up front; each wave settles its
    # own instances from it, so a failed hub still leaves the others untouched.
    states = probe_all(targets)
    outcomes = {t.name: _triage(t, states[t.name], chain, goal, dry_run) for t in targets}
    parallel_work = sum(1 for t in canaries + rest if outcomes[t.name] is None)
    try:
        with fanout.Workers(jobs, warm=parallel_work > 1) as workers:
            for index, (wave, wave_jobs, label) in enumerate(waves):
                if halt.reason:
                    for target in wave:
                        finish(target, skipped(target, halt.reason, halt.interrupted or ExitCode.MIXED))
                    continue
                work = []
                for target in wave:
                    outcome = outcomes[target.name]
                    if outcome is None:
                        work.append(target)
                    else:
                        halt.record(outcome)
                        finish(target, outcome)
                fanout.run(work, chain.spec, goal, wave_jobs, halt, finish, on_start, workers)
                failed = [t.name for t in wave if not results[t.name].succeeded]
                if label and failed and index < len(waves) - 1 and not halt.reason:
                    halt.reason = (
                        f"not run: {label} did not all upgrade ({', '.join(failed)}); fix that first"
                    )
    finally:
        if reporter is not None:
            reporter.close()
    ordered = tuple(sorted(results.values(), key=lambda r: (r.role != "hub", r.name)))
    return RunReport(
        run_id=uuid.uuid4().hex[:12],
        target=to,
        instances=ordered,
        hub_report="ok" if reporter is None else reporter.state,
        hub_error=None if reporter is None else reporter.error,
        interrupted=halt.interrupted,
    )


def _triage(
    target: Target, state: InstanceState | OpheliaError, chain: Chain, goal: str | None, dry_run: bool
) -> InstanceResult | None:
    """Settle an instance without a lock when its first look says so; ``None`` means migrate."""
    started = time.monotonic()
    if isinstance(state, OpheliaError):
        return failure(target, state, started)
    verdict = classify(state, chain, goal)
    known = state_fields(state)
    if verdict.state in REFUSED_STATES:
        return refused(target, verdict.problem or verdict.state, started, known)
    if dry_run:
        return InstanceResult(
            name=target.name,
            role=target.role,
            result="planned" if verdict.pending else "noop",
            applied=verdict.pending,
            **{**known, "to_revision": verdict.pending[-1] if verdict.pending else state.revision},
        )
    if not verdict.pending and not state.locked:
        return InstanceResult(name=target.name, role=target.role, result="noop", **known)
    return None


def downgrade(fleet: Fleet, target: Target, *, to: str, chain: Chain | None = None) -> RunReport:
    """Move one instance down to revision ``to``, removing the reverted history rows."""
    chain = chain or chain_for(ChainSpec.default())
    goal = chain.resolve(to)
    reporter = HubReporter(fleet.hub)
    result = migrate(target, chain.spec, goal, downgrade=True)
    reporter.report(_registry_update(result, target))
    reporter.close()
    return RunReport(
        run_id=uuid.uuid4().hex[:12],
        target=to,
        instances=(result,),
        hub_report=reporter.state,
        hub_error=reporter.error,
    )


def sync(fleet: Fleet, targets: list[Target], *, chain: Chain | None = None) -> SyncReport:
    """Re-read each instance's version and push it to the hub registry."""
    chain = chain or chain_for(ChainSpec.default())
    states = probe_all(targets)
    reachable = [t for t in targets if not isinstance(states[t.name], OpheliaError)]
    fingerprints = _fingerprints(reachable)
    reporter = HubReporter(fleet.hub)
    rows = []
    for target in targets:
        state = states[target.name]
        row = _status_of(target, state, chain)
        rows.append(row)
        if isinstance(state, OpheliaError):
            update = RegistryUpdate(
                target=target, run_status="unreachable", version_known=False, error=state.message
            )
        else:
            update = RegistryUpdate(
                target=target,
                run_status="sync",
                version_known=True,
                schema_version=state.revision,
                schema_updated_at=state.updated_at,
                migrations_count=state.migrations_count,
                error=row.error,
                schema_fingerprint=fingerprints.get(target.name),
            )
        reporter.report(update)
    reporter.close()
    return SyncReport(instances=tuple(rows), hub_report=reporter.state, hub_error=reporter.error)


def _fingerprints(targets: list[Target]) -> dict[str, str | None]:
    """Each reachable instance's schema fingerprint (``drift``'s), read concurrently."""
    from ophelia_db.catalog import fingerprint_of

    if not targets:
        return {}
    with ThreadPoolExecutor(max_workers=min(_STATUS_THREADS, len(targets))) as pool:
        return dict(zip((t.name for t in targets), pool.map(fingerprint_of, targets), strict=True))


_HISTORY_SQL = """SELECT version, name, applied_at, checksum, execution_time_ms, applied_by
FROM public.schema_migrations ORDER BY id"""


def history(target: Target, *, chain: Chain | None = None) -> HistoryReport:
    """List an instance's applied revisions (from its mirror) and the pending ones."""
    chain = chain or chain_for(ChainSpec.default())
    with connect(target, autocommit=True) as conn:
        state = read_state(conn)
        rows = conn.execute(_HISTORY_SQL).fetchall() if state.has_mirror else []
    entries = []
    recorded = set()
    for version, name, applied_at, checksum, ms, by in rows:
        recorded.add(version)
        if not chain.knows(version):
            entry_state = "unknown"
        elif checksum and chain.get(version).checksum != checksum:
            entry_state = "checksum-mismatch"
        else:
            entry_state = "applied"
        entries.append(HistoryEntry(version, name, entry_state, applied_at, checksum, ms, by))
    verdict = classify(state, chain)
    for version in verdict.pending:
        if version not in recorded:
            entries.append(HistoryEntry(version, chain.get(version).name, "pending"))
    return HistoryReport(name=target.name, current=state.revision, head=chain.head, entries=tuple(entries))


def offline_sql(
    target: Target | None,
    *,
    start: str | None = None,
    to: str = "head",
    chain: Chain | None = None,
    from_database: bool = True,
) -> str:
    """Render the SQL that moves an instance from ``start`` (default: its current revision) to ``to``."""
    from alembic import command
    from ophelia_db.mirror import MirrorHook

    chain = chain or chain_for(ChainSpec.default())
    goal = chain.resolve(to)
    if start is None and target is not None and from_database:
        state = _probe(target)
        if isinstance(state, OpheliaError):
            raise state
        start = state.revision
    elif start is not None:
        start = chain.resolve(start)
    if goal is None:
        raise ConfigError("offline SQL goes up the chain; --to base makes no sense here")
    if start is not None and not chain.is_after(goal, start):
        return f"-- {target.name if target else 'instance'} is already at {start}: nothing to apply\n"
    buffer = io.StringIO()
    config = chain.spec.config()
    config.attributes["output_buffer"] = buffer
    config.attributes["on_version_apply"] = MirrorHook(
        chain=chain, instance_id=target.name if target else None
    )
    revision_range = f"{start}:{goal}" if start else goal
    command.upgrade(config, revision_range, sql=True)
    # Statements that cannot run in a transaction become separate, labelled sections.
    timeouts = target.timeouts if target is not None else Timeouts()
    return mark_non_transactional(_with_time_boxes(buffer.getvalue(), chain, timeouts))


_RUNNING = re.compile(r"^-- Running upgrade \S+ -> (\S+)\s*$")


def _with_time_boxes(script: str, chain: Chain, timeouts: Timeouts) -> str:
    """Give each revision of pasted SQL the time box the runner would give it (SET LOCAL)."""
    lines = []
    for line in script.splitlines(keepends=True):
        lines.append(line)
        match = _RUNNING.match(line)
        if match and chain.knows(match.group(1)):
            revision = chain.get(match.group(1))
            lock = revision.lock_timeout or timeouts.lock_timeout
            statement = revision.statement_timeout or timeouts.statement_timeout
            lines.append(
                f"SET LOCAL lock_timeout = '{int(lock * 1000)}ms';\n"
                f"SET LOCAL statement_timeout = '{int(statement * 1000)}ms';\n"
            )
    return "".join(lines)


def shard(targets: list[Target], spec: str) -> list[Target]:
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
