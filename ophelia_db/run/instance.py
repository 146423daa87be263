"""One instance, one run: connect, lock, re-read, plan, run, report what happened.

This module owns the per-instance step of ``upgrade`` and ``downgrade``: one
connection, the migration lock on it, the plan decided from the state read
under the lock, and the result. Running the plan is ``revisions``'s. It
returns an ``InstanceResult`` instead of raising, so that one instance's
failure never stops the others.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ophelia_db.errors import ExitCode, OpheliaError
from ophelia_db.fleet.catalog import fingerprint, fingerprint_steps
from ophelia_db.fleet.config import Target
from ophelia_db.fleet.connections import (
    Connection,
    describe_error,
    is_connection_error,
    sqlstate_of,
)
from ophelia_db.fleet.lock import OpeningRefused, SessionProof, first_message_lock, session_lock
from ophelia_db.redaction import redact
from ophelia_db.results import InstanceResult, Outcome, state_exit_code
from ophelia_db.run.batch import rendered
from ophelia_db.run.chain import Chain, ChainSpec, chain_for
from ophelia_db.run.interrupts import exit_code_of, interrupted_exit_code, worker_interrupted
from ophelia_db.run.revisions import IN_A_PROCESS, Means, NeedsAlembic, PlannedRun
from ophelia_db.run.session import Session
from ophelia_db.run.state import (
    REFUSED_STATES,
    InstanceState,
    StateRead,
    below_current,
    classify,
    unchanged_sql,
)

log = logging.getLogger(__name__)


def state_fields(state: InstanceState) -> dict[str, Any]:
    """The result fields an instance's state fixes when nothing moves."""
    return {
        "from_revision": state.revision,
        "to_revision": state.revision,
        "migrations_count": state.migrations_count,
        "updated_at": state.updated_at,
    }


def migrate(
    target: Target,
    spec: ChainSpec,
    goal: str | None,
    *,
    downgrade: bool = False,
    means: Means = IN_A_PROCESS,
    kept: Connection | None = None,
    look: InstanceState | None = None,
) -> InstanceResult:
    """Move ``target`` to revision ``goal`` (``None`` is base) under its migration lock.

    With ``IN_A_THREAD`` it raises ``NeedsAlembic`` (after unlocking) when a
    revision must go through Alembic online; run it again with ``HANDED_OVER``
    in a worker process. ``kept``: the first look's connection, migrated on (and
    closed) if the server has not closed it meanwhile; ``look``: what the first look
    read (whether it reached PostgreSQL itself, whether the instance is new).
    """
    started = time.monotonic()
    if worker_interrupted():
        return _not_started(target, started)
    try:
        chain = chain_for(spec)
        # One connection per instance for the lock, the re-read, the revisions and the
        # fingerprint (a tenant's slots are few, a remote connection costs several round
        # trips). A plan holds only under the lock (another runner may have moved the
        # instance since the look): the state is read behind the lock, or checked to be
        # the look's in the first batch's message, the lock's too (_first_message_check).
        under_lock = StateRead(new=look is not None and not (look.has_version_table or look.has_mirror))
        with Session(target, kept, direct=look is not None and look.direct) as session:
            unchanged = _first_message_check(chain, goal, downgrade, means, look)
            if unchanged is not None and look is not None:
                try:
                    with first_message_lock(session.conn, target, unchanged) as proof:
                        return _migrate_locked(
                            target, chain, goal, downgrade, started, session, proof, means, look
                        )
                except OpeningRefused:
                    pass  # the lock is busy or the instance moved since the look: the usual way
            with session_lock(
                session.conn,
                target,
                read=under_lock,
                witness=session.take_witness(),
                direct=session.proven_direct,
            ) as proof:
                if worker_interrupted():
                    return _not_started(target, started)
                state = under_lock.result()
                return _migrate_locked(target, chain, goal, downgrade, started, session, proof, means, state)
    except NeedsAlembic:
        raise
    except OpheliaError as error:
        return InstanceResult.from_error(target, error, started)
    except Exception as exc:
        return _unexpected(target, exc, started)
    except KeyboardInterrupt as exc:
        # Interrupted before any revision started (waiting for the lock, say).
        return _not_started(target, started, exit_code_of(exc))


def _first_message_check(
    chain: Chain,
    goal: str | None,
    downgrade: bool,
    means: Means,
    look: InstanceState | None,
) -> str | None:
    """The check to send with the lock in the first batch, when the first look allows it.

    That is when the look found PostgreSQL itself (not a pooler) and the plan
    made from it starts with a revision that goes as a batch: the token, the
    lock and a server-side check that the state is still the look's then ride
    in that batch's message, so the plan made from the look is the one a read
    under the lock would make. On the look's own connection or a new one: the
    opening checks that its backend is the one the connection's start-up named.
    """
    if look is None or not look.direct or downgrade or goal is None or not means.batches:
        return None
    if look.locked or worker_interrupted():
        return None
    unchanged = unchanged_sql(look)
    verdict = classify(look, chain, goal)
    if unchanged is None or verdict.state in REFUSED_STATES or not verdict.pending:
        return None
    if verdict.pending[0] not in rendered(chain, look.revision, goal):
        return None
    return unchanged


def _unexpected(target: Target, exc: Exception, started: float) -> InstanceResult:
    """The result of an error no revision raised: a lost connection, or a bug of ours."""
    if is_connection_error(exc):
        # Lost between revisions (while unlocking, say): committed revisions stay.
        return InstanceResult.of(
            target,
            Outcome.UNREACHABLE,
            started=started,
            exit_code=ExitCode.UNREACHABLE,
            error=(
                f"{target.name}: lost the connection: {describe_error(exc)}; run "
                f"`ophelia-db status --instance {target.name}` to see where it stands, then upgrade again"
            ),
        )
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


def _not_started(target: Target, started: float, code: int | None = None) -> InstanceResult:
    return InstanceResult.of(
        target,
        Outcome.SKIPPED,
        started=started,
        exit_code=code or interrupted_exit_code(),
        error=f"{target.name}: interrupted before any change; nothing was done",
    )


def _migrate_locked(
    target: Target,
    chain: Chain,
    goal: str | None,
    downgrade: bool,
    started: float,
    session: Session,
    proof: SessionProof,
    means: Means,
    state: InstanceState,
) -> InstanceResult:
    planned = _plan(target, chain, state, goal, downgrade, started)
    if isinstance(planned, InstanceResult):
        return planned
    heard: list[str] = []
    closing = [*fingerprint_steps(heard.append), proof.unlock_step()]
    run = PlannedRun(target, chain, state, goal, downgrade, planned, started, proof, means, closing)
    failed = run.execute(session)
    if failed is not None:
        return failed
    return InstanceResult.of(
        target,
        Outcome.OK,
        started=started,
        # Read by the last batch if it could carry it, else here.
        schema_fingerprint=heard[0] if heard else _fingerprint(session.conn, proof),
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
    verdict = classify(state, chain, goal, name=target.name)
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


def _fingerprint(conn: Connection, proof: SessionProof) -> str | None:
    """The schema fingerprint after a run, for the hub, with the unlock in its round trip.

    It never fails the run: when it cannot be read, leaving the lock sends the unlock on its own.
    """
    try:
        return fingerprint(conn, then=proof.unlock_step())
    except Exception as exc:
        if sqlstate_of(exc) is None and not isinstance(exc, OpheliaError):
            raise
        return None
