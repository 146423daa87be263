"""One instance's planned revisions, run on its locked session, and how the run ended.

This module owns executing a plan that ``instance`` decided under the lock:
each revision as one batch while batches fit (run/batch.py), the rest through
Alembic online with a time box and a session check per revision, retries of
a revision that could not get its table locks, and the translation of every
failure into an ``InstanceResult`` that names the instance, the revision, the
SQLSTATE and statement, and what to do next.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ophelia_db.errors import ExitCode, OpheliaError
from ophelia_db.fleet.config import Target
from ophelia_db.fleet.connections import (
    Connection,
    connect,
    describe_error,
    failed_statement,
    is_connection_error,
    pooler_refusal,
    sqlstate_of,
)
from ophelia_db.fleet.lock import (
    PROOF_COLUMNS,
    SESSION_MOVED,
    SHARED_BACKEND,
    OpeningRefused,
    SessionProof,
    Step,
)
from ophelia_db.results import InstanceResult, Outcome
from ophelia_db.run import batch, driver, marker
from ophelia_db.run.chain import Chain
from ophelia_db.run.interrupts import Interrupted, exit_code_of, worker_interrupted
from ophelia_db.run.mirror import MirrorHook
from ophelia_db.run.session import Session
from ophelia_db.run.state import InstanceState

LOCK_RETRIES = 2
LOCK_BACKOFF_SECONDS = 0.5


@dataclass(frozen=True)
class Means:
    """What a migration may use: Alembic online (not in a thread), batches (not after a handover)."""

    alembic: bool = True
    batches: bool = True


IN_A_PROCESS = Means()
IN_A_THREAD = Means(alembic=False)
HANDED_OVER = Means(batches=False)


class NeedsAlembic(Exception):
    """Raised where Alembic online is needed but not allowed (a migration in a thread).

    Nothing is left half-done: every revision before is committed, the one in
    hand was rolled back. The caller runs the instance again in a process.
    """


@dataclass
class PlannedRun:
    """One instance's planned revisions, run on its locked connection, and how it ended."""

    target: Target
    chain: Chain
    state: InstanceState
    goal: str | None
    downgrade: bool
    planned: list[str]
    started: float
    proof: SessionProof
    # In a thread Alembic online is not allowed (see NeedsAlembic); after a handover, batches are not.
    means: Means = IN_A_PROCESS
    # What the last batch carries behind the plan's last revision (the fingerprint and the
    # unlock: one round trip less); not sent when Alembic online runs the last revision.
    closing: Sequence[Step] = ()
    hook: MirrorHook = field(init=False)

    def __post_init__(self) -> None:
        self.hook = MirrorHook(
            chain=self.chain, instance_id=self.target.name, mirror_exists=self.state.has_mirror
        )

    @property
    def done(self) -> int:
        return len(self.hook.applied) + len(self.hook.reverted)

    def execute(self, session: Session) -> InstanceResult | None:
        """Run the plan, in batches while they fit, then through Alembic online; ``None``: all done."""
        if not self.downgrade and self.goal is not None and self.means.batches:
            try:
                self.send_batches(session.conn)
            except KeyboardInterrupt as exc:
                return self.interrupted(exc)
            except batch.BatchFailure as failure:
                settled = self.batch_failed(failure)
                if settled is not None:
                    return settled
            if self.done == len(self.planned):
                return None
        if self.proof.opening_pending:
            raise OpeningRefused("the first revision cannot go as a batch: no message to take the lock")
        if not self.means.alembic:
            raise NeedsAlembic(self.planned[self.done])
        connection = session.alembic_connection()
        self.time_box_each_revision(connection)
        return self.with_lock_retries(connection)

    def send_batches(self, conn: Connection) -> None:
        """Send the planned revisions that render offline in one message, up to one that does not.

        A revision that could not get its table locks is sent again, as Alembic
        online would run it again (the whole revision, rolled back first).
        """
        assert self.goal is not None
        rendered = batch.rendered(self.chain, self.state.revision, self.goal)
        attempt = 0
        while True:
            # The revisions that render offline, from the next one up to the first that does not.
            ahead = list(itertools.takewhile(rendered.__contains__, self.planned[self.done :]))
            if not ahead:
                return
            _stop_if_interrupted()
            try:
                timeouts = self.target.timeouts
                sending = [rendered[revision] for revision in ahead]
                last = self.done + len(ahead) == len(self.planned)
                batch.send(
                    conn,
                    self.chain,
                    sending,
                    hook=self.hook,
                    proof=self.proof,
                    timeouts=timeouts,
                    then=self.closing if last else (),
                    opening=self.proof.take_opening(),
                )
            except batch.BatchFailure as failure:
                if failure.error.sqlstate != "55P03" or attempt >= LOCK_RETRIES or worker_interrupted():
                    raise
                attempt += 1
                time.sleep(LOCK_BACKOFF_SECONDS * 2 ** (attempt - 1))

    def batch_failed(self, failure: batch.BatchFailure) -> InstanceResult | None:
        """The result a failed batch settles the instance with, or ``None`` to run it online."""
        error = failure.error
        signal = worker_interrupted()
        if signal:
            # The main thread cancelled the statement: an interruption, not a failure of the revision.
            return self.interrupted(Interrupted(signal))
        if error.sqlstate == SESSION_MOVED:
            raise pooler_refusal(self.target, SHARED_BACKEND) from None
        if error.sqlstate == "55P03":
            return self.revision_failed(error, _blockers(self.target))
        if not failure.retry_online:
            return self.revision_failed(error)
        if not self.means.alembic:
            raise NeedsAlembic(failure.revision)
        return None  # rolled back; Alembic online runs it again and names the statement

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
            marker.mark_nontransactional(conn.connection.driver_connection, revision, hook.by)
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


def _stop_if_interrupted() -> None:
    """Start no new revision once the run is interrupted (threads see the main thread's signal here)."""
    signal = worker_interrupted()
    if signal:
        raise Interrupted(signal)


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
