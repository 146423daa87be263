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
from dataclasses import dataclass, field
from typing import Any

from ophelia_db.errors import ExitCode, OpheliaError
from ophelia_db.fleet.catalog import fingerprint
from ophelia_db.fleet.config import Target
from ophelia_db.fleet.connections import (
    Connection,
    connect,
    describe_error,
    engine_for,
    failed_statement,
    is_connection_error,
    sqlstate_of,
)
from ophelia_db.fleet.lock import PROOF_COLUMNS, SessionProof, session_lock
from ophelia_db.redaction import redact
from ophelia_db.results import InstanceResult, Outcome, state_exit_code
from ophelia_db.run import driver, mirror
from ophelia_db.run.chain import Chain, ChainSpec, chain_for
from ophelia_db.run.interrupts import exit_code_of, worker_interrupted
from ophelia_db.run.mirror import MirrorHook
from ophelia_db.run.state import REFUSED_STATES, InstanceState, below_current, classify, read_state

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
            with session_lock(driver, target) as proof:
                return _migrate_locked(target, chain, goal, downgrade, started, connection, proof)
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
    proof: SessionProof,
) -> InstanceResult:
    driver_connection = connection.connection.driver_connection
    # Decide the plan only now, under the lock: another runner may have
    # moved the instance between our first look and taking the lock.
    state = read_state(driver_connection)
    planned = _plan(target, chain, state, goal, downgrade, started)
    if isinstance(planned, InstanceResult):
        return planned
    run = _Run(target, chain, state, goal, downgrade, planned, started, proof)
    run.time_box_each_revision(connection)
    failed = run.with_lock_retries(connection)
    if failed is not None:
        return failed
    return InstanceResult.of(
        target,
        Outcome.OK,
        started=started,
        schema_fingerprint=_fingerprint(driver_connection),
        from_revision=state.revision,
        to_revision=goal,
        applied=tuple(run.hook.applied),
        reverted=tuple(run.hook.reverted),
        migrations_count=len(chain.applied_through(goal)) if state.has_mirror or run.hook.applied else 0,
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
        code = state_exit_code(verdict.state)
        return InstanceResult.refused(target, verdict.problem or verdict.state, started, code, **known)
    if downgrade:
        if goal is not None and not chain.is_after(current, goal) and current != goal:
            below = f"cannot downgrade to {goal}: the instance is at {current or 'base'}, below it"
            return InstanceResult.refused(target, below, started, **known)
        planned = list(reversed(chain.between(goal, current)))
    else:
        going_down = below_current(state, chain, goal, target.name)
        if going_down:
            return InstanceResult.refused(target, going_down, started, ExitCode.USAGE, **known)
        planned = list(verdict.pending)
    if not planned:
        return InstanceResult.of(target, Outcome.NOOP, started=started, **known)
    return planned


@dataclass
class _Run:
    """One instance's planned revisions, run on its locked connection, and how it ended."""

    target: Target
    chain: Chain
    state: InstanceState
    goal: str | None
    downgrade: bool
    planned: list[str]
    started: float
    proof: SessionProof
    hook: MirrorHook = field(init=False)

    def __post_init__(self) -> None:
        self.hook = MirrorHook(
            chain=self.chain, instance_id=self.target.name, mirror_exists=self.state.has_mirror
        )

    @property
    def done(self) -> int:
        return len(self.hook.applied) + len(self.hook.reverted)

    def with_lock_retries(self, connection: Any) -> InstanceResult | None:
        """Run Alembic; ``None`` when every planned revision committed, else the failure's result."""
        attempt = 0
        while True:
            try:
                self.run_alembic(connection)
                return None
            except KeyboardInterrupt as exc:
                return self.interrupted(exc)
            except Exception as exc:
                if not _raised_by_revision_or_database(exc, self.chain):
                    raise
                if sqlstate_of(exc) == "55P03" and attempt < LOCK_RETRIES:
                    # The whole revision is retried (it was rolled back), never a part of it.
                    attempt += 1
                    time.sleep(LOCK_BACKOFF_SECONDS * 2 ** (attempt - 1))
                    continue
                blocker = _blockers(self.target) if sqlstate_of(exc) == "55P03" else None
                return self.revision_failed(exc, blocker)

    def time_box_each_revision(self, connection: Any) -> None:
        # Imported on use: this module is loaded by every command that may upgrade,
        # and SQLAlchemy is only needed once an instance really migrates.
        from sqlalchemy import event

        timeouts, hook, planned = self.target.timeouts, self.hook, self.planned

        @event.listens_for(connection, "begin")
        def _each_revision(conn: Any) -> None:
            # Every revision gets its own time box, scoped to its transaction:
            # the revision file's own setting, else the instance's, else the fleet's.
            hook.mark_start()
            revision = self.chain.get(planned[self.done]) if self.done < len(planned) else None
            lock = (revision and revision.lock_timeout) or timeouts.lock_timeout
            statement = (revision and revision.statement_timeout) or timeouts.statement_timeout
            # The session proves again it is still ours before each revision (fleet/lock.py).
            row = conn.exec_driver_sql(
                f"SELECT set_config('lock_timeout', '{int(lock * 1000)}ms', true), "
                f"set_config('statement_timeout', '{int(statement * 1000)}ms', true), {PROOF_COLUMNS}"
            ).fetchone()
            self.proof.check(row[2], row[3])

        @event.listens_for(connection, "set_connection_execution_options")
        def _entering_autocommit(conn: Any, options: dict[str, Any]) -> None:
            # Alembic's autocommit_block: what runs next cannot be rolled back, so a
            # marker is committed first; the transaction recording the revision drops it.
            if options.get("isolation_level") != "AUTOCOMMIT" or self.downgrade or self.done >= len(planned):
                return
            revision = planned[self.done]
            mirror.mark_nontransactional(conn.connection.driver_connection, revision, hook.by)
            hook.sections.add(revision)

    def run_alembic(self, connection: Any) -> None:
        if connection.in_transaction():
            # Only reads can be pending here (a failed revision was rolled back), and
            # Alembic must not see an outer transaction: it would nest every revision in it.
            connection.rollback()
        driver.migrate(
            self.chain.spec,
            self.goal,
            connection=connection,
            hook=self.hook,
            instance=self.target.name,
            downgrade=self.downgrade,
        )

    def stays_at(self) -> str | None:
        """The revision the instance is left at: the last step this run committed, else where it was."""
        if self.hook.applied:
            return self.hook.applied[-1]
        if self.hook.reverted:
            return self.chain.get(self.hook.reverted[-1]).down_revision
        return self.state.revision

    def ended(self, outcome: Outcome, code: int, message: str) -> InstanceResult:
        stays_at = self.stays_at()
        return InstanceResult.of(
            self.target,
            outcome,
            started=self.started,
            from_revision=self.state.revision,
            to_revision=stays_at,
            applied=tuple(self.hook.applied),
            reverted=tuple(self.hook.reverted),
            exit_code=code,
            error=message,
            migrations_count=len(self.chain.applied_through(stays_at)),
        )

    def revision_failed(self, exc: BaseException, blocker: str | None = None) -> InstanceResult:
        name = self.target.name
        failed = self.planned[min(self.done, len(self.planned) - 1)]
        revision = self.chain.get(failed)
        stays_at = self.stays_at() or "base"
        detail = _detail(exc)
        if sqlstate_of(exc) == "42501":
            return self.ended(
                Outcome.FAILED,
                ExitCode.REVISION_FAILED,
                f"{name}: revision {failed} ({revision.path.name}) needs a privilege the migration role "
                f"lacks: {detail}. It was rolled back and the instance stays at {stays_at}; grant that "
                f"privilege to the role of the instance's URL (or connect as the database owner), then "
                f"run `ophelia-db upgrade --instance {name}` again",
            )
        if is_connection_error(exc):
            return self.ended(
                Outcome.UNREACHABLE,
                ExitCode.UNREACHABLE,
                f"{name}: lost the connection during revision {failed} ({revision.path.name}): {detail}; "
                f"run `ophelia-db status --instance {name}` to see where it stands, then upgrade again",
            )
        if sqlstate_of(exc) == "55P03":
            waited = revision.lock_timeout or self.target.timeouts.lock_timeout
            return self.ended(
                Outcome.LOCKED,
                ExitCode.LOCKED,
                f"{name}: revision {failed} ({revision.path.name}) could not get a table lock within "
                f"lock_timeout {waited:g}s ({LOCK_RETRIES + 1} attempts): {detail}; blocked by "
                f"{blocker or 'a session that has since finished'}. It was rolled back and the instance "
                f"stays at {stays_at}; retry when that session is done",
            )
        return self.ended(
            Outcome.FAILED,
            ExitCode.REVISION_FAILED,
            f"{name}: revision {failed} ({revision.path.name}) failed and was rolled back: {detail}; "
            f"the instance stays at {stays_at}. Fix the revision and run "
            f"`ophelia-db upgrade --instance {name}` again",
        )

    def interrupted(self, exc: BaseException) -> InstanceResult:
        current = self.planned[self.done] if self.done < len(self.planned) else None
        during = f" during revision {current}, which was rolled back" if current else ""
        not_applied = ", ".join(self.planned[self.done :]) or "nothing"
        return self.ended(
            Outcome.FAILED,
            exit_code_of(exc),
            f"{self.target.name}: interrupted{during}; the instance stays at {self.stays_at() or 'base'} "
            f"(not applied: {not_applied}); run upgrade again to finish",
        )


def _detail(exc: BaseException) -> str:
    """The server's message, its SQLSTATE and the statement it came from."""
    code = sqlstate_of(exc)
    if not code and not is_connection_error(exc):
        return str(exc)
    detail = describe_error(exc) + (f" [SQLSTATE {code}]" if code else "")
    statement = failed_statement(exc)
    return f"{detail} (in: {statement})" if statement else detail


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
