"""One instance, one run: lock, re-read, validate, run Alembic, report what happened.

This module owns the per-instance step of ``upgrade`` and ``downgrade``. It
is written to run in a worker process (Alembic's ``context``/``op`` proxies
are process-global, so parallel migrations never share a process) and
returns an ``InstanceResult`` instead of raising, so that one instance's
failure never stops the others.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ophelia_db.errors import ExitCode, OpheliaError
from ophelia_db.fleet.catalog import fingerprint
from ophelia_db.fleet.config import Target
from ophelia_db.fleet.connections import (
    Connection,
    connect,
    describe_error,
    engine_for,
    is_connection_error,
    session_lock,
    sqlstate_of,
)
from ophelia_db.redaction import redact
from ophelia_db.results import InstanceResult, Outcome
from ophelia_db.run import driver
from ophelia_db.run.chain import Chain, ChainSpec, chain_for
from ophelia_db.run.interrupts import exit_code_of, worker_interrupted
from ophelia_db.run.mirror import MirrorHook
from ophelia_db.run.state import REFUSED_STATES, InstanceState, classify, read_state

log = logging.getLogger(__name__)
LOCK_RETRIES = 2
LOCK_BACKOFF_SECONDS = 0.5


def state_fields(state: InstanceState) -> dict[str, Any]:
    """The result fields an instance's state fixes when nothing moves."""
    return {
        "from_revision": state.revision,
        "to_revision": state.revision,
        "migrations_count": state.migrations_count,
        "updated_at": state.updated_at,
    }


def migrate(target: Target, spec: ChainSpec, goal: str | None, *, downgrade: bool = False) -> InstanceResult:
    """Move ``target`` to revision ``goal`` (``None`` is base) under its migration lock."""
    started = time.monotonic()
    if worker_interrupted():
        return InstanceResult.skipped(target, f"{target.name}: not started: interrupted", ExitCode.SIGTERM)
    try:
        chain = chain_for(spec)
        # One connection per instance: the lock, the re-read, every revision and
        # the fingerprint all go through it (a tenant's connection slots are few).
        with engine_for(target).connect() as connection:
            driver = connection.connection.driver_connection
            assert driver is not None
            with session_lock(driver, target):
                return _migrate_locked(target, chain, goal, downgrade, started, connection)
    except OpheliaError as error:
        return InstanceResult.from_error(target, error, started)
    except Exception as exc:
        # A bug of ours: its traceback goes to the log (stderr by default), and
        # the instance's result says so, so that the other instances carry on.
        log.exception("internal error while migrating %s", target.name)
        return InstanceResult.of(
            target,
            Outcome.FAILED,
            started=started,
            exit_code=ExitCode.INTERNAL,
            error=(
                f"{target.name}: internal error (a bug in ophelia-db): {type(exc).__name__}: "
                f"{redact(str(exc))}; its revision was rolled back. Please report it with the traceback"
            ),
        )
    except KeyboardInterrupt as exc:
        # Interrupted before any revision started (waiting for the lock, say).
        return InstanceResult.of(
            target,
            Outcome.SKIPPED,
            started=started,
            exit_code=exit_code_of(exc),
            error=f"{target.name}: interrupted before any change; nothing was done",
        )


def _migrate_locked(
    target: Target,
    chain: Chain,
    goal: str | None,
    downgrade: bool,
    started: float,
    connection: Any,
) -> InstanceResult:
    driver = connection.connection.driver_connection
    # Decide the plan only now, under the lock: another runner may have
    # moved the instance between our first look and taking the lock.
    state = read_state(driver)
    planned = _plan(target, chain, state, goal, downgrade, started)
    if isinstance(planned, InstanceResult):
        return planned
    hook = MirrorHook(chain=chain, instance_id=target.name)
    _time_box_each_revision(connection, target, chain, hook, planned)
    failed = _run_with_lock_retries(connection, target, chain, state, goal, downgrade, hook, planned, started)
    if failed is not None:
        return failed
    return InstanceResult.of(
        target,
        Outcome.OK,
        started=started,
        schema_fingerprint=_fingerprint(driver),
        from_revision=state.revision,
        to_revision=goal,
        applied=tuple(hook.applied),
        reverted=tuple(hook.reverted),
        migrations_count=len(chain.applied_through(goal)) if state.has_mirror or hook.applied else 0,
        updated_at=None,
    )


def _plan(
    target: Target, chain: Chain, state: InstanceState, goal: str | None, downgrade: bool, started: float
) -> list[str] | InstanceResult:
    """The revisions to run, in order, or the result that settles the instance without running any."""
    verdict = classify(state, chain, goal)
    current = state.revision
    known = state_fields(state)
    if verdict.state in REFUSED_STATES:
        return InstanceResult.refused(target, verdict.problem or verdict.state, started, **known)
    if downgrade:
        if goal is not None and not chain.is_after(current, goal) and current != goal:
            below = f"cannot downgrade to {goal}: the instance is at {current or 'base'}, below it"
            return InstanceResult.refused(target, below, started, **known)
        planned = list(reversed(chain.between(goal, current)))
    else:
        planned = list(verdict.pending)
    if not planned:
        return InstanceResult.of(target, Outcome.NOOP, started=started, **known)
    return planned


def _run_with_lock_retries(
    connection: Any,
    target: Target,
    chain: Chain,
    state: InstanceState,
    goal: str | None,
    downgrade: bool,
    hook: MirrorHook,
    planned: list[str],
    started: float,
) -> InstanceResult | None:
    """Run Alembic; ``None`` when every planned revision committed, else the failure's result."""
    attempt = 0
    while True:
        try:
            _run_alembic(connection, target, chain, goal, downgrade, hook)
            return None
        except KeyboardInterrupt as exc:
            return _interrupted(target, chain, state, planned, hook, exc, started)
        except Exception as exc:
            if not _raised_by_revision_or_database(exc, chain):
                raise
            if sqlstate_of(exc) == "55P03" and attempt < LOCK_RETRIES:
                # The whole revision is retried (it was rolled back), never a part of it.
                attempt += 1
                time.sleep(LOCK_BACKOFF_SECONDS * 2 ** (attempt - 1))
                continue
            blocker = _blockers(target) if sqlstate_of(exc) == "55P03" else None
            return _revision_failed(target, chain, state, planned, hook, exc, started, blocker)


def _time_box_each_revision(
    connection: Any, target: Target, chain: Chain, hook: MirrorHook, planned: list[str]
) -> None:
    # Imported on use: this module is loaded by every command that may upgrade,
    # and SQLAlchemy is only needed once an instance really migrates.
    from sqlalchemy import event

    timeouts = target.timeouts

    @event.listens_for(connection, "begin")
    def _each_revision(conn: Any) -> None:
        # Every revision gets its own time box, scoped to its transaction:
        # the revision file's own setting, else the instance's, else the fleet's.
        hook.mark_start()
        done = len(hook.applied) + len(hook.reverted)
        revision = chain.get(planned[done]) if done < len(planned) else None
        lock = (revision and revision.lock_timeout) or timeouts.lock_timeout
        statement = (revision and revision.statement_timeout) or timeouts.statement_timeout
        conn.exec_driver_sql(
            f"SET LOCAL lock_timeout = {int(lock * 1000)}; "
            f"SET LOCAL statement_timeout = {int(statement * 1000)}"
        )


def _run_alembic(
    connection: Any, target: Target, chain: Chain, goal: str | None, downgrade: bool, hook: MirrorHook
) -> None:
    if connection.in_transaction():
        # Only reads can be pending here (a failed revision was rolled back), and
        # Alembic must not see an outer transaction: it would nest every revision in it.
        connection.rollback()
    driver.migrate(
        chain.spec, goal, connection=connection, hook=hook, instance=target.name, downgrade=downgrade
    )


def _revision_failed(
    target: Target,
    chain: Chain,
    state: InstanceState,
    planned: list[str],
    hook: MirrorHook,
    exc: BaseException,
    started: float,
    blocker: str | None = None,
) -> InstanceResult:
    done = hook.applied if hook.applied else hook.reverted
    failed_revision = planned[len(done)] if len(done) < len(planned) else planned[-1]
    revision = chain.get(failed_revision)
    stays_at = _stays_at(chain, state, hook)
    detail = describe_error(exc) if sqlstate_of(exc) or is_connection_error(exc) else str(exc)
    if is_connection_error(exc):
        code, result = ExitCode.UNREACHABLE, Outcome.UNREACHABLE
        message = (
            f"{target.name}: lost the connection during revision {failed_revision} "
            f"({revision.path.name}): {detail}; run `ophelia-db status --instance {target.name}` "
            "to see where it stands, then upgrade again"
        )
    elif sqlstate_of(exc) == "55P03":
        code, result = ExitCode.LOCKED, Outcome.LOCKED
        message = (
            f"{target.name}: revision {failed_revision} ({revision.path.name}) could not get a table "
            f"lock within lock_timeout {revision.lock_timeout or target.timeouts.lock_timeout:g}s "
            f"({LOCK_RETRIES + 1} attempts): {detail}; blocked by "
            f"{blocker or 'a session that has since finished'}. It was rolled back and the instance "
            f"stays at {stays_at or 'base'}; retry when that session is done"
        )
    else:
        code, result = ExitCode.REVISION_FAILED, Outcome.FAILED
        message = (
            f"{target.name}: revision {failed_revision} ({revision.path.name}) failed and was "
            f"rolled back: {detail}; the instance stays at {stays_at or 'base'}. Fix the revision "
            f"and run `ophelia-db upgrade --instance {target.name}` again"
        )
    return InstanceResult.of(
        target,
        result,
        started=started,
        from_revision=state.revision,
        to_revision=stays_at,
        applied=tuple(hook.applied),
        reverted=tuple(hook.reverted),
        exit_code=code,
        error=message,
        migrations_count=len(chain.applied_through(stays_at)),
    )


def _raised_by_revision_or_database(exc: BaseException, chain: Chain) -> bool:
    """Tell a revision's failure (SQL or its own Python) from a bug of ours, which must surface."""
    if sqlstate_of(exc) is not None or is_connection_error(exc):
        return True
    revision_files = {str(rev.path) for rev in chain.revisions}
    frame = exc.__traceback__
    while frame is not None:
        if frame.tb_frame.f_code.co_filename in revision_files:
            return True
        frame = frame.tb_next
    return False


def _fingerprint(conn: Connection) -> str | None:
    """The schema fingerprint after a run, for the hub; never fails the run."""
    try:
        return fingerprint(conn)
    except Exception as exc:
        if sqlstate_of(exc) is None and not isinstance(exc, OpheliaError):
            raise
        return None


def _stays_at(chain: Chain, state: InstanceState, hook: MirrorHook) -> str | None:
    """The revision an instance is left at: the last step this run committed, else where it was."""
    if hook.applied:
        return hook.applied[-1]
    if hook.reverted:
        return chain.get(hook.reverted[-1]).down_revision
    return state.revision


def _interrupted(
    target: Target,
    chain: Chain,
    state: InstanceState,
    planned: list[str],
    hook: MirrorHook,
    exc: BaseException,
    started: float,
) -> InstanceResult:
    done = len(hook.applied) + len(hook.reverted)
    current = planned[done] if done < len(planned) else None
    stays_at = _stays_at(chain, state, hook)
    during = f" during revision {current}, which was rolled back" if current else ""
    return InstanceResult.of(
        target,
        Outcome.FAILED,
        started=started,
        from_revision=state.revision,
        to_revision=stays_at,
        applied=tuple(hook.applied),
        reverted=tuple(hook.reverted),
        exit_code=exit_code_of(exc),
        error=(
            f"{target.name}: interrupted{during}; the instance stays at {stays_at or 'base'} "
            f"(not applied: {', '.join(planned[done:]) or 'nothing'}); run upgrade again to finish"
        ),
        migrations_count=len(chain.applied_through(stays_at)),
    )


_BLOCKERS_SQL = """
SELECT a.pid, a.application_name, a.usename, a.state, a.xact_start
FROM pg_stat_activity a
WHERE a.datname = current_database() AND a.pid <> pg_backend_pid() AND a.xact_start IS NOT NULL
  AND EXISTS (SELECT 1 FROM pg_locks l WHERE l.pid = a.pid AND l.granted
              AND l.locktype = 'relation' AND l.relation >= 16384)
ORDER BY a.xact_start LIMIT 3
"""


def _blockers(target: Target) -> str | None:
    """Name the sessions holding table locks now: the likely blockers of the revision."""
    try:
        with connect(target, autocommit=True) as conn:
            rows = conn.execute(_BLOCKERS_SQL).fetchall()
    except OpheliaError:
        return None
    if not rows:
        return None
    return "; ".join(
        f"pid {pid} ({app or 'unknown application'}, user {user}, {state}, "
        f"in a transaction since {since:%H:%M:%S})"
        for pid, app, user, state, since in rows
    )
