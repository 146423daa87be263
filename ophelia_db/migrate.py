"""One instance, one run: lock, re-read, validate, run Alembic, report what happened.

This module owns the per-instance step of ``upgrade`` and ``downgrade``. It
is written to run in a worker process (Alembic's ``context``/``op`` proxies
are process-global, so parallel migrations never share a process) and
returns an ``InstanceResult`` instead of raising, so that one instance's
failure never stops the others.
"""

from __future__ import annotations

import time
from typing import Any

from ophelia_db.chain import Chain, ChainSpec
from ophelia_db.connections import (
    connect,
    describe_error,
    engine_for,
    is_connection_error,
    migration_lock,
    sqlstate_of,
)
from ophelia_db.errors import ExitCode, OpheliaError
from ophelia_db.fleet import Target
from ophelia_db.mirror import InstanceState, MirrorHook, classify, read_state
from ophelia_db.results import InstanceResult

REFUSED_STATES = {"ahead", "checksum-mismatch", "mirror-mismatch", "error"}
_RESULT_OF_CODE = {
    ExitCode.USAGE: "refused",
    ExitCode.LOCKED: "locked",
    ExitCode.INTEGRITY: "refused",
    ExitCode.REVISION_FAILED: "failed",
    ExitCode.NEEDS_ATTENTION: "failed",
    ExitCode.UNREACHABLE: "unreachable",
}
_chains: dict[ChainSpec, Chain] = {}


def chain_for(spec: ChainSpec) -> Chain:
    """Load a chain once per process."""
    if spec not in _chains:
        _chains[spec] = Chain.load(spec)
    return _chains[spec]


def failure(target: Target, error: OpheliaError, started: float, **known: Any) -> InstanceResult:
    """Turn an expected error into this instance's result."""
    code = error.exit_code
    return InstanceResult(
        name=target.name,
        role=target.role,
        result=_RESULT_OF_CODE.get(code, "failed"),
        exit_code=code,
        error=error.message,
        duration_ms=_ms_since(started),
        **known,
    )


def migrate(target: Target, spec: ChainSpec, goal: str | None, *, downgrade: bool = False) -> InstanceResult:
    """Move ``target`` to revision ``goal`` (``None`` is base) under its migration lock."""
    started = time.monotonic()
    try:
        chain = chain_for(spec)
        with migration_lock(target):
            return _migrate_locked(target, chain, goal, downgrade, started)
    except OpheliaError as error:
        return failure(target, error, started)


def _migrate_locked(
    target: Target, chain: Chain, goal: str | None, downgrade: bool, started: float
) -> InstanceResult:
    # Decide the plan only now, under the lock: another runner may have
    # moved the instance between our first look and taking the lock.
    with connect(target, autocommit=True) as probe:
        state = read_state(probe)
    verdict = classify(state, chain, goal)
    current = state.revision
    known = {
        "from_revision": current,
        "to_revision": current,
        "migrations_count": state.migrations_count,
        "updated_at": state.updated_at,
    }
    if verdict.state in REFUSED_STATES:
        return _refused(target, verdict.problem or verdict.state, started, known)
    if downgrade:
        if goal is not None and not chain.is_after(current, goal) and current != goal:
            return _refused(
                target,
                f"cannot downgrade to {goal}: the instance is at {current or 'base'}, below it",
                started,
                known,
            )
        planned = list(reversed(chain.between(goal, current)))
    else:
        planned = list(verdict.pending)
    if not planned:
        return InstanceResult(
            name=target.name, role=target.role, result="noop", duration_ms=_ms_since(started), **known
        )
    hook = MirrorHook(chain=chain, instance_id=target.name)
    try:
        _run_alembic(target, chain, goal, downgrade, hook)
    except Exception as exc:
        return _revision_failed(target, chain, state, planned, hook, exc, started)
    new_revision = goal
    return InstanceResult(
        name=target.name,
        role=target.role,
        result="ok",
        from_revision=current,
        to_revision=new_revision,
        applied=tuple(hook.applied),
        reverted=tuple(hook.reverted),
        duration_ms=_ms_since(started),
        migrations_count=len(chain.applied_through(new_revision)) if state.has_mirror or hook.applied else 0,
        updated_at=None,
    )


def _run_alembic(target: Target, chain: Chain, goal: str | None, downgrade: bool, hook: MirrorHook) -> None:
    from sqlalchemy import event

    from alembic import command

    engine = engine_for(target)
    try:
        with engine.connect() as conn:
            timeouts = target.timeouts

            @event.listens_for(conn, "begin")
            def _each_revision(connection: Any) -> None:
                # Every revision gets its own time box, scoped to its transaction.
                hook.mark_start()
                connection.exec_driver_sql(
                    f"SET LOCAL lock_timeout = {int(timeouts.lock_timeout * 1000)}; "
                    f"SET LOCAL statement_timeout = {int(timeouts.statement_timeout * 1000)}"
                )

            config = chain.spec.config()
            config.attributes["connection"] = conn
            config.attributes["on_version_apply"] = hook
            config.attributes["instance"] = target.name
            if downgrade:
                command.downgrade(config, goal or "base")
            else:
                command.upgrade(config, goal or "base")
    finally:
        engine.dispose()


def _refused(target: Target, problem: str, started: float, known: dict[str, Any]) -> InstanceResult:
    return InstanceResult(
        name=target.name,
        role=target.role,
        result="refused",
        exit_code=ExitCode.INTEGRITY,
        error=f"{target.name}: {problem}; nothing was changed",
        duration_ms=_ms_since(started),
        **known,
    )


def _revision_failed(
    target: Target,
    chain: Chain,
    state: InstanceState,
    planned: list[str],
    hook: MirrorHook,
    exc: BaseException,
    started: float,
) -> InstanceResult:
    done = hook.applied if hook.applied else hook.reverted
    failed_revision = planned[len(done)] if len(done) < len(planned) else planned[-1]
    revision = chain.get(failed_revision)
    if hook.applied:
        stays_at: str | None = hook.applied[-1]
    elif hook.reverted:
        stays_at = chain.get(hook.reverted[-1]).down_revision
    else:
        stays_at = state.revision
    detail = describe_error(exc) if sqlstate_of(exc) or is_connection_error(exc) else str(exc)
    if is_connection_error(exc):
        code, result = ExitCode.UNREACHABLE, "unreachable"
        message = (
            f"{target.name}: lost the connection during revision {failed_revision} "
            f"({revision.path.name}): {detail}; run `ophelia-db status --instance {target.name}` "
            "to see where it stands, then upgrade again"
        )
    elif sqlstate_of(exc) == "55P03":
        code, result = ExitCode.LOCKED, "locked"
        message = (
            f"{target.name}: revision {failed_revision} ({revision.path.name}) gave up waiting for "
            f"a table lock (lock_timeout {target.timeouts.lock_timeout:g}s): {detail}; it was rolled "
            f"back, the instance stays at {stays_at or 'base'}; retry when the database is quieter"
        )
    else:
        code, result = ExitCode.REVISION_FAILED, "failed"
        message = (
            f"{target.name}: revision {failed_revision} ({revision.path.name}) failed and was "
            f"rolled back: {detail}; the instance stays at {stays_at or 'base'}. Fix the revision "
            f"and run `ophelia-db upgrade --instance {target.name}` again"
        )
    return InstanceResult(
        name=target.name,
        role=target.role,
        result=result,
        from_revision=state.revision,
        to_revision=stays_at,
        applied=tuple(hook.applied),
        reverted=tuple(hook.reverted),
        duration_ms=_ms_since(started),
        exit_code=code,
        error=message,
        migrations_count=len(chain.applied_through(stays_at)),
    )


def _ms_since(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
