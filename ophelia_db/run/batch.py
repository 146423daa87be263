"""Revisions sent as one batch: one round trip per revision, not one per statement.

A fleet of remote databases pays a network round trip for every statement,
and Alembic online sends each statement, each ``alembic_version`` step and
each transaction boundary on its own. So a revision whose SQL Alembic can
render offline is run as exactly that SQL (what ``ophelia-db sql`` prints),
in one simple-query message: ``BEGIN``, the session check (the message's
first revision's) and time box, the revision's statements, the
``alembic_version`` step, the mirror rows, ``COMMIT``. PostgreSQL runs the
statements of one message in order and stops at the first error, so one
transaction per revision and the mirror in that transaction hold as before.

Whatever does not fit runs through Alembic online, as before: a revision whose
Python needs a live connection (its offline rendering fails), a
non-transactional section (``autocommit_block``), every downgrade. A batch
that fails is rolled back and its revision run again online, so that the error
names the statement it came from (a batch error cannot say which statement
failed); a lock timeout is retried as a batch (``revisions``), and a lost
connection, a statement timeout and a moved session are reported at once,
since running them again online would not help.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.pq import ExecStatus, TransactionStatus

from ophelia_db.errors import OpheliaError
from ophelia_db.fleet.config import Target, Timeouts
from ophelia_db.fleet.connections import is_connection_error
from ophelia_db.fleet.lock import SESSION_MOVED, OpeningRefused, SessionProof, Step, opening_took
from ophelia_db.run import driver, mirror, render_cache
from ophelia_db.run.chain import Chain
from ophelia_db.run.state import InstanceState, classify

log = logging.getLogger(__name__)
_RUNNING = re.compile(r"^-- Running upgrade (\S*) -> (\S+)$")
_BOUNDARIES = frozenset({"BEGIN;", "COMMIT;"})
# Errors a second, online attempt cannot improve on: report them from the batch.
NOT_RETRIED = frozenset({"57014"})


@dataclass(frozen=True)
class RenderedRevision:
    """A revision's own statements, as Alembic renders them offline."""

    revision: str
    statements: tuple[str, ...]


_rendered: dict[tuple[object, str | None, str], dict[str, RenderedRevision]] = {}
_rendering = threading.Lock()


def rendered(chain: Chain, start: str | None, goal: str) -> dict[str, RenderedRevision]:
    """The batchable revisions after ``start`` up to ``goal``, by id; cached per process.

    Empty when Alembic cannot render the range offline: the run then goes online.
    """
    if start == goal:
        return {}  # an empty range: nothing to render, and no reason to import Alembic
    key = (chain.spec, start, goal)
    with _rendering:
        # Alembic's proxies are process-global: one rendering at a time, even from threads.
        return _rendered_locked(key, chain, start, goal)


class RenderAhead:
    """Renders the pending revisions' batches in the background from the first look that needs them.

    Rendering imports Alembic and runs the chain offline (a few hundred
    milliseconds of CPU) unless an earlier run left it in the render cache
    (run/render_cache.py); started while the other instances are still being
    probed, it is ready sooner. A run with nothing to do never pays for it.
    """

    def __init__(self, chain: Chain, goal: str | None) -> None:
        self.chain, self.goal = chain, goal
        self._started = threading.Event()

    def seen(self, target: Target, state: InstanceState | OpheliaError) -> None:
        if self.goal is None or self._started.is_set() or not isinstance(state, InstanceState):
            return
        if state.revision == self.goal or not classify(state, self.chain, self.goal).pending:
            return
        self._started.set()
        # rendered() caches per range and serialises renderings: the run's own call waits for it.
        args = (self.chain, state.revision, self.goal)
        threading.Thread(target=rendered, args=args, name="render-batches", daemon=True).start()


def _rendered_locked(
    key: tuple[object, str | None, str], chain: Chain, start: str | None, goal: str
) -> dict[str, RenderedRevision]:
    if key not in _rendered:
        try:
            writes = render_cache.upgrade_statements(
                chain, start, goal, lambda: driver.render_upgrade_statements(chain.spec, start, goal)
            )
        except Exception as exc:
            # A revision that needs a live connection (or is broken): online will
            # run it, and report its error with the statement, as before.
            log.debug("offline rendering of %s:%s failed, running online: %s", start, goal, exc)
            writes = []
        _rendered[key] = _split(writes)
    return _rendered[key]


def _split(writes: Sequence[str]) -> dict[str, RenderedRevision]:
    """Cut Alembic's offline output into each revision's own statements."""
    segments: dict[str, list[str]] = {}
    current: str | None = None
    for text in writes:
        running = _RUNNING.match(text)
        if running:
            current = running.group(2)
            segments[current] = []
        elif current is not None:
            segments[current].append(text)
    found = {}
    for revision, texts in segments.items():
        # Each segment ends with the version step and COMMIT, then the next BEGIN.
        if texts and texts[-1] == "BEGIN;":
            texts = texts[:-1]
        if len(texts) < 2 or texts[-1] != "COMMIT;" or "alembic_version" not in texts[-2]:
            continue
        own = texts[:-2]
        if any(text in _BOUNDARIES for text in own):
            continue  # a non-transactional section: Alembic online handles it
        found[revision] = RenderedRevision(revision, tuple(own))
    return found


@dataclass
class BatchFailure(Exception):
    """A batch the server refused; the revision's transaction is rolled back."""

    revision: str
    error: psycopg.Error

    @property
    def retry_online(self) -> bool:
        """Whether running the revision again online may succeed or tell more."""
        code = self.error.sqlstate
        return code not in NOT_RETRIED and code != SESSION_MOVED and not is_connection_error(self.error)


def send(
    conn: psycopg.Connection,
    chain: Chain,
    revisions: Sequence[RenderedRevision],
    *,
    hook: mirror.MirrorHook,
    proof: SessionProof,
    timeouts: Timeouts,
    then: Sequence[Step] = (),
    opening: Sequence[str] = (),
) -> None:
    """Run consecutive revisions as one message on ``conn`` (autocommit, idle), each in its own
    transaction; record each that committed in ``hook``.

    The server stops at the first error of a message, so the revisions before
    the failing one stay committed: ``alembic_version`` then says which they are.
    ``then`` goes behind the last revision, in the same message (one transaction
    of its own: the statements after a message's last ``COMMIT`` are one), and
    each step hears its row only if every revision committed and every step ran;
    otherwise none does, and its caller sends them again if it still needs them.
    ``opening`` heads the message (the lock's, fleet/lock.py: ``first_message_lock``); when
    the message failed before it committed, ``OpeningRefused`` is raised: nothing ran.
    """
    wants_answer = not hook.mirror_exists
    statements = [
        *opening,
        # The opening checks the session itself: the first transaction's check would repeat it.
        *_transactions(chain, revisions, hook, proof, timeouts, checked=bool(opening)),
        # Bound here, client-side: a simple-query message carries no parameters.
        *(psycopg.ClientCursor(conn).mogrify(step.sql, step.params or None) for step in then),
    ]
    started = time.monotonic()
    cursor = conn.cursor()
    try:
        cursor.execute(_label(hook.instance_id, revisions) + ";\n".join(statements))
    except psycopg.Error as exc:
        _roll_back(conn)
        if opening and not is_connection_error(exc) and not opening_took(conn, proof, exc.sqlstate):
            raise OpeningRefused(str(exc)) from exc
        done = _committed_through(conn, revisions)
        _note_committed(hook, revisions[:done], started)
        if done < len(revisions):
            raise BatchFailure(revisions[done].revision, exc) from exc
        return  # cancelled (an interruption) after its last COMMIT had gone through: all applied
    except BaseException:
        _roll_back(conn)
        _note_committed(hook, revisions[: _committed_through(conn, revisions)], started)
        raise
    answers = _answers(cursor)
    ours = len(answers) - len(then)
    # The mirror check is the last revision's last SELECT, just before ``then``'s.
    seen = bool(answers[ours - 1] and answers[ours - 1][0]) if wants_answer else None
    _note_committed(hook, revisions, started, mirror_seen=seen)
    for step, row in zip(then, answers[ours:], strict=True):
        step.answer(row)


def _label(instance: str | None, revisions: Sequence[RenderedRevision]) -> str:
    """A comment heading the message: ``pg_stat_activity`` keeps a query's first kilobyte, of
    which the lock's opening would otherwise be all an operator sees of a migration running."""
    ids = ", ".join(rendered_revision.revision for rendered_revision in revisions)
    text = f"ophelia-db: {instance or 'instance'} {ids}".replace("*/", "").replace("/*", "")
    return f"/* {text} */ "


def _transactions(
    chain: Chain,
    revisions: Sequence[RenderedRevision],
    hook: mirror.MirrorHook,
    proof: SessionProof,
    timeouts: Timeouts,
    *,
    checked: bool,
) -> list[str]:
    """Each revision's transaction, in order (``checked``: the session already, in this message)."""
    # The message's revision that creates the mirror, when one visibly does: its rows go unguarded.
    creators = [] if hook.mirror_exists else [r for r in revisions if mirror.creates_mirror(r.statements)]
    creator = creators[0].revision if creators else None
    return [
        text
        for index, rendered_revision in enumerate(revisions)
        for text in _transaction(
            chain,
            rendered_revision,
            hook,
            proof,
            timeouts,
            after=revisions[index - 1].revision if index else None,
            creator=creator,
            last=index == len(revisions) - 1,
            check=not index and not checked,
        )
    ]


def _transaction(
    chain: Chain,
    rendered_revision: RenderedRevision,
    hook: mirror.MirrorHook,
    proof: SessionProof,
    timeouts: Timeouts,
    *,
    after: str | None,
    creator: str | None,
    last: bool,
    check: bool,
) -> list[str]:
    """One revision's transaction: session check, time box, its statements, version step, mirror
    (``after``: the revision before it in the message; ``creator``: the message's revision that
    creates the mirror, if one does; ``last``: the message's last revision).

    Only a message's first check of the session counts (``check``): a backend runs every
    statement of a message before it is ready for another (ReadyForQuery), and no pooler can
    move a session before then, so the transactions after the first run where it ran.
    """
    revision = chain.get(rendered_revision.revision)
    lock = revision.lock_timeout or timeouts.lock_timeout
    statement = revision.statement_timeout or timeouts.statement_timeout
    return [
        "BEGIN",
        *([proof.guard_sql()] if check else []),
        f"SELECT set_config('lock_timeout', '{int(lock * 1000)}ms', true), "
        f"set_config('statement_timeout', '{int(statement * 1000)}ms', true), "
        f"set_config('{mirror.REVISION_STARTED}', clock_timestamp()::text, true)",
        *(text.rstrip(";") for text in rendered_revision.statements),
        *mirror.version_step_sql(revision.down_revision, revision.id),
        *hook.batch_sql(revision.id, after=after, last=last, creator=creator),
        "COMMIT",
    ]


def _note_committed(
    hook: mirror.MirrorHook,
    revisions: Sequence[RenderedRevision],
    started: float,
    *,
    mirror_seen: bool | None = None,
) -> None:
    """Tell ``hook`` of the revisions that committed; the message's time is shared between them
    (the recorded ``execution_time_ms`` is the server's own measure of each)."""
    if not revisions:
        return
    share = int((time.monotonic() - started) * 1000) // len(revisions)
    for rendered_revision in revisions[:-1]:
        hook.committed(rendered_revision.revision, share)
    hook.committed(revisions[-1].revision, share, mirror_seen=mirror_seen)


def _committed_through(conn: psycopg.Connection, revisions: Sequence[RenderedRevision]) -> int:
    """How many of a message's revisions committed, after it raised (an error or a late cancel).

    The result then says what the database holds. Only asked when the
    connection is still usable; a lost one is reported as such by the caller.
    """
    if conn.closed or conn.info.transaction_status != TransactionStatus.IDLE:
        return 0
    try:
        row = conn.execute("SELECT version_num FROM public.alembic_version").fetchone()
    except psycopg.Error:
        return 0
    ids = [rendered_revision.revision for rendered_revision in revisions]
    return ids.index(row[0]) + 1 if row is not None and row[0] in ids else 0


def _answers(cursor: psycopg.Cursor) -> list[tuple[Any, ...]]:
    """The first row of each of a message's results that has rows, in order."""
    rows = []
    while True:
        result = cursor.pgresult
        if result is not None and result.status == ExecStatus.TUPLES_OK:
            rows.append(tuple(cursor.fetchone() or ()))
        if not cursor.nextset():
            return rows


def _roll_back(conn: psycopg.Connection) -> None:
    """End a failed batch's transaction, so the connection can go on (or unlock)."""
    if conn.closed or conn.info.transaction_status in (TransactionStatus.IDLE, TransactionStatus.UNKNOWN):
        return
    try:
        conn.execute("ROLLBACK")
    except psycopg.Error:
        log.debug("rollback after a failed batch failed", exc_info=True)
