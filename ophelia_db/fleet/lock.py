"""The migration lock: one runner per instance, on a session proven to be a real one.

The lock is a session advisory lock on the connection the instance is migrated
on: it survives the commits of the per-revision transactions and ends with the
session if the runner dies (``client_connection_check_interval`` makes the
server notice a dead runner within seconds). It is polled with
``pg_try_advisory_lock`` rather than waited on, because a backend blocked in
``pg_advisory_lock`` would stall ``CREATE INDEX CONCURRENTLY`` on the same
database.

A session lock means nothing through a transaction-mode pooler, where each
transaction may run on another server backend and several clients share one.
So the session proves itself: before the lock, a random token is set as a
session setting and, unless the backend that answers is the very one the
connection's start-up named, a second, independent connection (the witness)
must neither see it nor share the backend; while the lock is held, the token
and backend pid are checked again before every revision
(``SessionProof.check``) and before the unlock, whose result is checked too. A
pooler on any port is refused with the same message as port 6543.

The start-up's BackendKeyData names the backend a cancel request goes to. A
pooler that shares backends must route cancel requests itself, so it hands
out keys of its own (PgBouncer does in every pool mode, which
tests/fleet/test_pooler.py checks; Supavisor's client handler makes up its
own too): a backend that answers ``pg_backend_pid()`` with the start-up's pid
is PostgreSQL itself, or a proxy that gives this client that backend alone,
and the witness's connection is spared. When an instance's first look showed
this and told what to run, the token and the lock go in the first batch's
message, on any connection: its opening checks the backend again, and that the
state is still the one the look read (``first_message_lock``).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import psycopg

from ophelia_db.errors import LockedError
from ophelia_db.fleet.connections import Connection, connect, pooler_refusal, sql_literal

if TYPE_CHECKING:
    from ophelia_db.fleet.config import Target

# A fixed key is enough: advisory locks are already scoped to one database.
MIGRATION_LOCK_KEY = 0x6F70_6864  # "ophd"
# Its row in pg_locks (as ``l``), held: a bigint key is classid 0 (its high half), objid, objsubid 1.
LOCK_ROW = f"""l.locktype = 'advisory' AND l.granted
  AND l.classid = 0 AND l.objid = {MIGRATION_LOCK_KEY} AND l.objsubid = 1"""
SHARED_BACKEND = "it behaves as a transaction-mode pooler (another client session shares its server backend)"
_TOKEN = "ophelia.session_token"

# The token, and the server-side check that ends the session (and so the lock)
# soon after its runner dies; a server older than 14, which has no such setting,
# simply does without it. Asked of the version, not of pg_settings: that view
# builds a row for every setting, ≈ 1 ms of a new backend's time per instance.
_START = f"""SELECT set_config('{_TOKEN}', %(token)s, false), pg_backend_pid(),
  CASE WHEN current_setting('server_version_num')::int >= 140000
    THEN set_config('client_connection_check_interval', %(check)s, false) END"""
_WITNESS = f"SELECT current_setting('{_TOKEN}', true), pg_backend_pid()"
_TRY_LOCK = f"SELECT pg_try_advisory_lock(%(key)s), current_setting('{_TOKEN}', true), pg_backend_pid()"
PROOF_COLUMNS = f"current_setting('{_TOKEN}', true), pg_backend_pid()"
_UNLOCK = f"SELECT pg_advisory_unlock(%(key)s), {PROOF_COLUMNS}"
# After a failed first message: whose session this is; the lock let go if an opening took it uncommitted.
_SETTLE = f"""SELECT {PROOF_COLUMNS}, CASE WHEN current_setting('{_TOKEN}', true) IS DISTINCT FROM %(token)s
  AND EXISTS (SELECT FROM pg_locks l WHERE l.pid = pg_backend_pid() AND {LOCK_ROW})
  THEN pg_advisory_unlock(%(key)s) END"""


@dataclass(frozen=True)
class Step:
    """A statement a caller sends last in its own round trip, and who hears its one row."""

    sql: str
    params: dict[str, Any]
    answer: Callable[[tuple[Any, ...]], None]


# The SQLSTATEs of the in-batch check (a transaction not on our session) and of a first message's
# opening that took no lock (``first_message_lock``): the lock is busy, or the state is not the look's.
SESSION_MOVED = "OPH01"
LOCK_BUSY, LOOK_OUTDATED = "OPH02", "OPH03"


class OpeningRefused(Exception):
    """A first message's opening took no lock and left nothing set: take the lock the usual way."""


@dataclass(frozen=True)
class SessionProof:
    """What makes this session this session: our token, on our backend."""

    target: Target
    token: str
    pid: int
    # The unlock's answer when it went along with the session's last read (``unlock_step``):
    # leaving the lock then checks it rather than sending the unlock again.
    _unlocked: list[tuple[Any, ...]] = field(default_factory=list, compare=False, repr=False)
    # ``first_message_lock``'s opening, until a caller takes it for its first message.
    _opening: list[str] = field(default_factory=list, compare=False, repr=False)

    def take_opening(self) -> list[str]:
        """The statements that take the lock, for the head of the caller's first message; once."""
        opening, self._opening[:] = list(self._opening), []
        return opening

    @property
    def opening_pending(self) -> bool:
        """Whether the lock still waits to go with a first message (so it is not held yet)."""
        return bool(self._opening)

    def holds(self, token: Any, pid: Any) -> bool:
        return token == self.token and pid == self.pid

    def unlock_step(self) -> Step:
        """The unlock, for a caller to send behind its own last statements (one round trip less)."""
        return Step(_UNLOCK, {"key": MIGRATION_LOCK_KEY}, self._unlocked.append)

    def guard_sql(self) -> str:
        """A statement that fails its transaction unless it runs on this session.

        For batches (run/batch.py), where the revision's statements follow in the
        same message and there is no round trip in which to check a result.
        """
        return (
            "DO $ophelia$ BEGIN\n"
            f"  IF current_setting('{_TOKEN}', true) IS DISTINCT FROM {sql_literal(self.token)} "
            f"OR pg_backend_pid() <> {int(self.pid)} THEN\n"
            "    RAISE EXCEPTION 'ophelia-db: this transaction is not on the session holding the "
            f"migration lock' USING ERRCODE = '{SESSION_MOVED}';\n"
            "  END IF;\nEND $ophelia$"
        )

    def check(self, token: Any, pid: Any) -> None:
        """Refuse when the session moved or is shared (``token``/``pid`` as just read on it)."""
        if not self.holds(token, pid):
            raise pooler_refusal(self.target, SHARED_BACKEND)


@contextmanager
def migration_lock(target: Target) -> Iterator[Connection]:
    """Hold the instance's migration lock on a connection of its own, for the block.

    For callers that do their work on other connections (plain ``alembic``,
    ``repair``); ``migrate`` holds it on its migration connection instead.
    """
    conn = connect(target, autocommit=True)
    try:
        with session_lock(conn, target):
            yield conn
    finally:
        conn.close()


class UnderLock(Protocol):
    """Reads sent in the same round trip as the lock, valid when the lock was granted."""

    def send(self, conn: Connection) -> None: ...

    def receive(self, failure: Exception | None) -> None: ...


@contextmanager
def session_lock(
    conn: Connection,
    target: Target,
    *,
    read: UnderLock | None = None,
    witness: Callable[[], Connection] | None = None,
    direct: bool = False,
) -> Iterator[SessionProof]:
    """Hold the instance's migration lock on ``conn``, a session proven to be a real one.

    ``read`` is sent right behind the lock, in the same round trip: PostgreSQL
    runs it after the lock is granted, so it sees what the lock protects.
    ``witness`` gives a second connection opened beforehand (while ``conn`` was
    opening, say), waiting for it if need be; it is used once and closed.
    Without it one is opened here, unless the session proves direct.
    ``direct``: ``conn`` has shown already that it is PostgreSQL itself (its
    first look's backend was the one its start-up named): with nothing left to
    prove before the lock, the session token goes in the lock's round trip.
    """
    if direct:
        token = uuid.uuid4().hex
        proof = SessionProof(target, token, conn.info.backend_pid)
        _acquire(conn, target, proof, read, start=_start_params(target, token))
    else:
        proof = _prove_session(conn, target, witness)
        _acquire(conn, target, proof, read)
    try:
        yield proof
    except BaseException:
        # The error in flight is the one to report; closing the session releases the lock anyway.
        with suppress(psycopg.Error):
            _run(conn, "SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))
        raise
    _release(conn, proof)


@contextmanager
def first_message_lock(conn: Connection, target: Target, unchanged: str) -> Iterator[SessionProof]:
    """The lock, taken by the opening that heads the caller's first message (``take_opening``).

    The opening sets the token, takes the lock and checks, under it, that the backend
    is the one the start-up named and that ``unchanged`` holds (an SQL condition: the
    state is still the one the caller planned from), in a transaction of its own. When
    it took nothing (``opening_took``), the caller raises ``OpeningRefused``, which
    leaves here untouched, and takes the lock the usual way.
    """
    token = uuid.uuid4().hex
    proof = SessionProof(target, token, conn.info.backend_pid)
    proof._opening.extend(_opening(conn, target, proof, unchanged))
    try:
        yield proof
    except OpeningRefused:
        raise
    except BaseException:
        if not proof.opening_pending:
            with suppress(psycopg.Error):
                _run(conn, "SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))
        raise
    if not proof.opening_pending:  # else nothing was sent (an interruption came first): nothing held
        _release(conn, proof)


def opening_took(conn: Connection, proof: SessionProof, sqlstate: str | None) -> bool:
    """Whether a failed first message's opening committed (``sqlstate``: the message's error).

    Its refusals released what they took. Else the session is asked: a syntax error anywhere
    in a message runs none of it; a cancel may stop the opening midway, the lock taken and
    the token undone: the lock is then released in the same round trip.
    """
    if sqlstate in (LOCK_BUSY, LOOK_OUTDATED):
        return False
    token, pid, _ = _run(conn, _SETTLE, {"token": proof.token, "key": MIGRATION_LOCK_KEY})
    return bool(proof.holds(token, pid))


def _opening(conn: Connection, target: Target, proof: SessionProof, unchanged: str) -> list[str]:
    start = psycopg.ClientCursor(conn).mogrify(_START, _start_params(target, proof.token))
    key = MIGRATION_LOCK_KEY
    # Whatever fails once the lock is taken (a table dropped since the look, a backend not the
    # start-up's) releases it, reported as the look outdated: the usual way reads the state again.
    check = f"""DO $ophelia$ BEGIN
  IF NOT pg_try_advisory_lock({key}) THEN
    RAISE EXCEPTION 'ophelia-db: the migration lock is held by another session' USING ERRCODE = '{LOCK_BUSY}';
  END IF;
  BEGIN
    IF pg_backend_pid() <> {int(proof.pid)} OR NOT ({unchanged}) THEN
      RAISE EXCEPTION 'ophelia-db: the instance changed since it was looked at';
    END IF;
  EXCEPTION WHEN OTHERS THEN
    PERFORM pg_advisory_unlock({key});
    RAISE EXCEPTION USING ERRCODE = '{LOOK_OUTDATED}', MESSAGE = SQLERRM;
  END;
END $ophelia$"""
    # Its own transaction: a revision that fails after it must not undo the token.
    return ["BEGIN", start, check, "COMMIT"]


def _run(conn: Connection, query: str, params: Any) -> tuple[Any, ...]:
    row = conn.execute(query, params).fetchone()
    if not conn.autocommit:
        # Leave no transaction open: the migration's own transactions come next.
        conn.commit()
    return tuple(row or ())


def _prove_session(
    conn: Connection, target: Target, witness: Callable[[], Connection] | None
) -> SessionProof:
    token = uuid.uuid4().hex
    try:
        _, pid, _ = _run(conn, _START, _start_params(target, token))
    except BaseException:
        _discard(witness)
        raise
    proof = SessionProof(target, token, pid)
    if pid == conn.info.backend_pid:
        _discard(witness)  # opened ahead, not needed after all
        return proof
    with witness() if witness is not None else connect(target, autocommit=True) as seen_from:
        seen_token, seen_pid = _run(seen_from, _WITNESS, None)
    if seen_token == token or seen_pid == pid:
        raise pooler_refusal(target, SHARED_BACKEND)
    return proof


def _discard(witness: Callable[[], Connection] | None) -> None:
    if witness is not None:
        with suppress(Exception):
            witness().close()


def _start_params(target: Target, token: str) -> dict[str, str]:
    check = f"{max(0, round(target.timeouts.client_connection_check_interval * 1000))}ms"
    return {"token": token, "check": check}


def _try_lock(
    conn: Connection, read: UnderLock | None, start: dict[str, str] | None = None
) -> tuple[Any, ...]:
    """Try the lock, with ``read`` behind it and ``start`` (the session token) before it, in one
    pipeline; the lock's row (whose fetch fails if the token or the lock did)."""
    if read is None and start is None:
        return _run(conn, _TRY_LOCK, {"key": MIGRATION_LOCK_KEY})
    cursor = None
    failure: Exception | None = None
    try:
        with conn.pipeline():
            if start is not None:
                conn.execute(_START, start)
            cursor = conn.execute(_TRY_LOCK, {"key": MIGRATION_LOCK_KEY})
            if read is not None:
                read.send(conn)
    except psycopg.Error as exc:
        if cursor is None or read is None:
            raise
        failure = exc  # the read's (a missing table, say); the lock's row came first
    if not conn.autocommit:
        # Leave no transaction open (a session advisory lock outlives it).
        conn.rollback()
    row = tuple(cursor.fetchone() or ())
    if start is not None and failure is not None:
        # The failed read ended the pipeline's implicit transaction, and a session setting
        # set in a transaction that fails is undone (the lock is not): the token again.
        _run(conn, _START, start)
    if read is not None:
        read.receive(failure)
    return row


def _acquire(
    conn: Connection,
    target: Target,
    proof: SessionProof,
    read: UnderLock | None,
    start: dict[str, str] | None = None,
) -> None:
    """Take the lock, polling for ``lock_wait``; ``start``: the session token, sent with the first try."""
    wait = target.timeouts.lock_wait
    deadline = time.monotonic() + wait
    pause = 0.05
    while True:
        got, token, pid = _try_lock(conn, read, start)
        start = None
        if not proof.holds(token, pid):
            if got:
                with suppress(psycopg.Error):
                    _run(conn, "SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))
            raise pooler_refusal(target, SHARED_BACKEND)
        if got:
            return
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise LockedError(
                f"{target.name}: the migration lock is held by {lock_holder(conn)}; "
                f"gave up after waiting {wait:g}s (lock_wait). Let that run finish, "
                "or raise lock_wait in fleet.toml"
            )
        time.sleep(min(pause, remaining))
        pause = min(pause * 2, 1.0)


def _release(conn: Connection, proof: SessionProof) -> None:
    if proof._unlocked:
        released, token, pid = proof._unlocked[0]
    else:
        released, token, pid = _run(conn, _UNLOCK, {"key": MIGRATION_LOCK_KEY})
    proof.check(token, pid)
    if not released:
        raise LockedError(
            f"{proof.target.name}: the migration lock was not held by this session when it was released "
            "(pg_advisory_unlock returned false); check that no pooler stands between ophelia-db and the "
            f"database, and run `ophelia-db status --instance {proof.target.name}` to see where it stands"
        )


_HOLDER_SQL = f"""SELECT a.pid, a.application_name, a.usename, a.client_addr::text, a.backend_start
FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE {LOCK_ROW} AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
LIMIT 1"""


def lock_holder(conn: Connection) -> str:
    """Describe who holds the migration lock: pid, application, user, since when."""
    row = conn.execute(_HOLDER_SQL).fetchone()
    if row is None:
        return "another session (it has just released it)"
    pid, app, user, addr, since = row
    where = f" from {addr}" if addr else ""
    return (
        f"pid {pid} ({app or 'unknown application'}, user {user}{where}, since {since:%Y-%m-%d %H:%M:%S%z})"
    )
