"""Connections to fleet databases and the per-instance migration lock.

This module owns every call into psycopg: opening a connection with the
tool's settings (``application_name``, ``connect_timeout``, no server-side
prepared statements so that poolers stay safe), refusing transaction-mode
poolers, the SQLAlchemy engine Alembic runs on, and the session advisory
lock that makes one runner per instance. Errors leave it redacted and
carrying their exit code.
"""

from __future__ import annotations

import atexit
import functools
import json
import queue
import select
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from ophelia_db._version import __version__
from ophelia_db.errors import ConfigError, UnreachableError
from ophelia_db.fleet.urls import normalise, transaction_pooler_reason
from ophelia_db.redaction import redact

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from ophelia_db.fleet.config import Target

APPLICATION_NAME = f"ophelia-db/{__version__}"

Connection = psycopg.Connection[Any]


# TCP keepalives, so that either side notices within about 25 s that the other is
# gone when the network, not the process, fails (the server's own check needs them
# too: client_connection_check_interval only sees a connection the kernel closed).
KEEPALIVES: dict[str, Any] = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
}


def pooler_refusal(target: Target, reason: str) -> ConfigError:
    """The one refusal of a transaction-mode pooler, found by its port or by its behaviour."""
    return ConfigError(
        f"{target.name}: refusing {target.display_url}: {reason}, which cannot hold the "
        "migration lock or session settings; use the direct connection "
        "(db.<project-ref>.supabase.co:5432) or the session pooler on port 5432"
    )


def connect(target: Target, *, autocommit: bool = False) -> Connection:
    """Open a connection to ``target`` or raise a redacted, exit-coded error.

    One opened ahead for the same database and ``connect_timeout`` (``connect_ahead``) is taken
    first: its failure is this one's.
    """
    dsn = target.dsn()
    reason = transaction_pooler_reason(dsn)
    if reason:
        raise pooler_refusal(target, reason)
    conninfo, timeout = normalise(dsn), connect_timeout_of(target.timeouts.connect_timeout)
    try:
        conn = _take_ahead((conninfo, timeout)) or _open(conninfo, timeout)
        conn.autocommit = autocommit
        return conn
    except psycopg.Error as exc:
        raise UnreachableError(
            f"{target.name}: cannot connect to {target.display_url}: {_first_line(exc)}; "
            f"check the server is up and the URL ({target.url_source}) is right"
        ) from None


def connect_timeout_of(seconds: float) -> int:
    """libpq's ``connect_timeout``: whole seconds, at least 1 (0 would mean no limit)."""
    return max(1, round(seconds))


def _open(conninfo: str, timeout: int) -> Connection:
    return psycopg.connect(
        conninfo,
        application_name=APPLICATION_NAME,
        connect_timeout=timeout,
        prepare_threshold=None,
        **KEEPALIVES,
    )


# Connections opened while the command loads (fleet/ahead.py), by what ``connect`` would open:
# libpq's connection string and connect_timeout. Each is for the first ``connect`` asking for the
# same; what nobody takes is closed at exit.
_ahead: dict[tuple[str, int], deque[Future[Connection]]] = {}
_ahead_lock = threading.Lock()


def connect_ahead(databases: Sequence[tuple[str, int]], threads: int = 32) -> None:
    """Start opening a connection to each ``(dsn, connect_timeout)``, from daemon threads: a
    database that never answers must not hold the command's exit."""
    work: queue.SimpleQueue[tuple[str, int, Future[Connection]]] = queue.SimpleQueue()
    _closed_at_exit()
    with _ahead_lock:
        for dsn, timeout in databases:
            future: Future[Connection] = Future()
            conninfo = normalise(dsn)
            _ahead.setdefault((conninfo, timeout), deque()).append(future)
            work.put((conninfo, timeout, future))

    def opener() -> None:
        with suppress(queue.Empty):
            while True:
                conninfo, timeout, future = work.get_nowait()
                if not future.set_running_or_notify_cancel():
                    continue  # its connect() came before its turn, and connected itself
                try:
                    future.set_result(_open(conninfo, timeout))
                except BaseException as exc:  # handed to the connect() that takes it
                    future.set_exception(exc)

    for _ in range(min(threads, len(databases))):
        threading.Thread(target=opener, name="connect-ahead", daemon=True).start()


def _take_ahead(key: tuple[str, int]) -> Connection | None:
    """The connection opened ahead for ``key`` (waited for), if one is left and still open; raises
    its failure (psycopg.Error) as connecting again would."""
    with _ahead_lock:
        waiting = _ahead.get(key)
        future = waiting.popleft() if waiting else None
    if future is None or future.cancel():
        # None opened ahead, or its turn has not come (the threads wait on databases that do not
        # answer): connecting now is sooner.
        return None
    conn = future.result()
    if still_open(conn):
        return conn
    conn.close()
    return None


def still_open(conn: Connection) -> bool:
    """Whether an idle connection (kept, or opened ahead) is still usable, without a round trip.

    An idle session's socket has nothing to read unless the server has spoken
    since: closed it (idle timeout, restart, pg_terminate_backend) or sent
    something unasked. Either way a new connection is the safe choice.
    """
    if conn.closed or conn.broken:
        return False
    readable, _, _ = select.select([conn.fileno()], [], [], 0)
    return not readable


@functools.cache
def _closed_at_exit() -> None:
    atexit.register(_close_ahead)


def _close_ahead() -> None:
    with _ahead_lock:
        left = [future for waiting in _ahead.values() for future in waiting]
        _ahead.clear()
    for future in left:
        if future.done() and future.exception() is None:
            future.result().close()


def is_connection_error(exc: BaseException) -> bool:
    """Tell whether ``exc`` means the server went away (outcome of the transaction unknown)."""
    original = getattr(exc, "orig", exc)
    if isinstance(original, psycopg.OperationalError):
        sqlstate = getattr(original, "sqlstate", None) or ""
        return sqlstate == "" or sqlstate.startswith("08") or sqlstate.startswith("57P")
    return False


def sqlstate_of(exc: BaseException) -> str | None:
    """Return the SQLSTATE of a database error, unwrapping SQLAlchemy's wrapper."""
    original = getattr(exc, "orig", exc)
    return getattr(original, "sqlstate", None)


def describe_error(exc: BaseException) -> str:
    """Return the server's message for ``exc`` on one redacted line."""
    original = getattr(exc, "orig", None) or exc
    return _first_line(original)


def failed_statement(exc: BaseException, limit: int = 120) -> str | None:
    """The statement a database error came from, on one shortened line (SQLAlchemy keeps it)."""
    statement = getattr(exc, "statement", None)
    if not statement:
        return None
    text = " ".join(str(statement).split())
    return redact(text if len(text) <= limit else text[: limit - 1] + "…")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    detail = lines[0] if lines else text
    # libpq puts the useful FATAL reason on a later line of connection errors.
    fatal = next((line for line in lines[1:] if line.startswith(("FATAL", "ERROR"))), None)
    if fatal and fatal not in detail:
        detail = f"{detail} {fatal}"
    return redact(detail)


_engine: Engine | None = None
_engine_target = threading.local()


def engine_for(target: Target, connection: Connection | None = None) -> Engine:
    """Return the process's pool-less SQLAlchemy engine, connecting to ``target`` next.

    One engine serves every target of the process so that SQLAlchemy's dialect
    initialisation (several queries on the first connection of an engine) is
    paid once per worker rather than once per instance. The target is
    thread-local: each thread connects where it last asked to. With
    ``connection``, the engine's next connection is that open psycopg
    connection instead of a new one (the migration lock is held on it).
    """
    global _engine
    _engine_target.value = target
    _engine_target.given = connection
    if _engine is None:
        # SQLAlchemy is imported on first use: status and no-op runs never need it.
        from sqlalchemy import create_engine
        from sqlalchemy.pool import NullPool

        _engine = create_engine(
            "postgresql+psycopg://",
            creator=_next_connection,
            poolclass=NullPool,
            hide_parameters=True,
            # Else the dialect's start-up looks hstore up (3 round trips: a savepoint, the
            # type's query, its release) on every worker's first connection; an HSTORE
            # column still works, through SQLAlchemy's own text conversion.
            use_native_hstore=False,
        )
    return _engine


def _next_connection() -> Connection:
    given = getattr(_engine_target, "given", None)
    if given is not None:
        _engine_target.given = None
        return given
    return connect(_engine_target.value)


@contextmanager
def autocommit(conn: Connection) -> Iterator[None]:
    """``conn`` (outside a transaction) in autocommit for the block, as it was after.

    A message or a pipeline sent then is one implicit transaction of the server's:
    one round trip, where a transaction of psycopg's adds a ``BEGIN`` before it and
    a ``COMMIT`` after it, each a round trip of its own.
    """
    if conn.autocommit:
        yield
        return
    conn.autocommit = True
    try:
        yield
    finally:
        if not conn.closed:
            conn.autocommit = False


def sql_literal(value: object) -> str:
    """Quote a value as an SQL literal for generated scripts (psycopg's quoting, not formatting).

    psycopg puts a space before ``E'...'`` literals; it is stripped.
    """
    if isinstance(value, str | int | float | None):
        return _scalar_literal(value)
    return _literal(value)


# An upgrade quotes the same few values (revision ids, names, checksums, who) over
# and over, for every instance: some 130 literals each, 0.01 ms apiece through
# psycopg. ``typed``: True and 1 are different literals.
@functools.lru_cache(maxsize=4096, typed=True)
def _scalar_literal(value: str | int | float | None) -> str:
    return _literal(value)


def _literal(value: object) -> str:
    return sql.Literal(value).as_string(None).strip()


def sql_json_literal(value: object) -> str:
    """A jsonb literal: the JSON text quoted by psycopg, then cast."""
    return f"{sql_literal(json.dumps(value, ensure_ascii=False, sort_keys=True))}::jsonb"


def sql_identifier(*names: str) -> str:
    """Quote an identifier (optionally schema-qualified) for generated scripts."""
    return sql.Identifier(*names).as_string(None)


def closed_to_api_roles(*objects: str) -> str:
    """PL/pgSQL that revokes everything on ``objects`` (``TABLE public.t``, ``SEQUENCE ...``) from
    PUBLIC and from Supabase's API roles where they exist: every object the tool creates outside
    the chain sets its own ACL, as the chain's revisions do (Supabase's default privileges
    would otherwise open it to ``anon``)."""
    lines = []
    for target in objects:
        lines.append(f"  REVOKE ALL ON {target} FROM PUBLIC;")
        for role in ("anon", "authenticated"):
            lines.append(
                f"  IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = '{role}') THEN\n"
                f"    REVOKE ALL ON {target} FROM {role};\n  END IF;"
            )
    return "\n".join(lines)
