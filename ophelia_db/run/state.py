"""An instance's versioning state: read in one round trip, judged against the chain.

This module owns the one integrity checker. ``read_state`` reads
``alembic_version``, ``schema_version`` and ``schema_migrations`` (and whether
another runner holds the migration lock); ``check`` lists every problem of
that state against the chain (several heads, a revision the code does not
know, a changed revision file, a mirror that disagrees with
``alembic_version``), and ``classify`` turns the first finding, or the
pending revisions, into the state word ``status``, ``validate`` and
``upgrade`` all use (see docs/design.md §3).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from ophelia_db.fleet.connections import sql_literal, sqlstate_of
from ophelia_db.fleet.lock import LOCK_ROW
from ophelia_db.results import Record, State
from ophelia_db.run.chain import Chain
from ophelia_db.run.marker import INTERRUPTED_TABLE

# This database's oid from the backend's own activity row, not from pg_database: on the
# new backend every look starts, planning a pg_database lookup costs ≈ 0.2 ms more.
_LOCKED = f"""EXISTS (SELECT 1 FROM pg_locks l WHERE {LOCK_ROW}
  AND l.database = (SELECT a.datid FROM pg_stat_get_activity(pg_backend_pid()) a))"""

# The fast path: one statement, valid once the chain's versioning revision
# has run, which is the state of almost every instance on almost every run.
# States in which no run may touch the instance: its history does not match the code.
REFUSED_STATES = frozenset(
    {State.AHEAD, State.CHECKSUM_MISMATCH, State.MIRROR_MISMATCH, State.ERROR, State.NEEDS_ATTENTION}
)

# Whether the lock is held and an interruption marked come from ``_TABLES_SQL``, sent with it:
# ``pg_locks`` is the dearest part of a read (≈ 0.3 ms of a new backend's time), so asked once.
_HEADS = "(SELECT string_agg(version_num, ',' ORDER BY version_num) FROM public.alembic_version)"
_CURRENT = "(SELECT current_version FROM public.schema_version WHERE id = 1)"
_HISTORY = "(SELECT json_agg(json_build_array(version, checksum) ORDER BY id) FROM public.schema_migrations)"
_STATE_SQL = f"""SELECT
  true, {_HEADS},
  true, {_CURRENT},
  (SELECT updated_at FROM public.schema_version WHERE id = 1),
  {_HISTORY}"""
# Only read when the marker table exists: what was interrupted, and what it left.
_INTERRUPTED_SQL = f"""SELECT
  (SELECT json_agg(json_build_array(revision, started_at::text, started_by)) FROM {INTERRUPTED_TABLE}),
  (SELECT json_agg(n.nspname || '.' || c.relname ORDER BY c.relname)
   FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace
   WHERE NOT i.indisvalid AND n.nspname = 'public')"""

# Always answered, even for a new instance; its last column is the backend's pid (see ``direct``).
_TABLES_SQL = f"""SELECT to_regclass('public.alembic_version') IS NOT NULL,
  to_regclass('public.schema_version') IS NOT NULL AND to_regclass('public.schema_migrations') IS NOT NULL,
  {_LOCKED}, to_regclass('{INTERRUPTED_TABLE}') IS NOT NULL, pg_backend_pid()"""


@dataclass(frozen=True)
class Interrupted:
    """A revision whose non-transactional section started and never finished."""

    revision: str
    started_at: str
    started_by: str
    invalid_indexes: tuple[str, ...] = ()


@dataclass(frozen=True)
class InstanceState:
    """What a database says about its own version, read in one go."""

    has_version_table: bool
    heads: tuple[str, ...]
    has_mirror: bool
    current_version: str | None
    updated_at: datetime | None
    history: tuple[tuple[str, str | None], ...]
    locked: bool = False
    interrupted: tuple[Interrupted, ...] = ()
    # Whether the backend that answered is the one the connection's start-up named (its
    # BackendKeyData): PostgreSQL itself, not a pooler, which hands out keys of its own.
    direct: bool = False

    @property
    def revision(self) -> str | None:
        return self.heads[0] if len(self.heads) == 1 else None

    @property
    def migrations_count(self) -> int:
        return len(self.history)


@dataclass(frozen=True)
class Verdict:
    """A state classified against the chain; ``state`` uses the words of docs/design.md §3."""

    state: str
    pending: tuple[str, ...] = ()
    problem: str | None = None


def read_state(conn: Any) -> InstanceState:
    """Read alembic_version, schema_version and the history in one round trip.

    ``conn`` is a psycopg connection; any open transaction is ended so the
    connection is left idle, as Alembic's per-revision transactions need.
    """
    reader = StateRead()
    failure: Exception | None = None
    try:
        with conn.pipeline():
            reader.send(conn)
    except Exception as exc:
        failure = exc
    reader.receive(failure)
    return reader.result()


class StateRead:
    """A state read sent into a pipeline, possibly behind other statements (the lock's).

    Both reads go in the same round trip: the catalog's answer is what is left
    when the fast read fails because a table is missing (a new instance).
    ``new``: a first look found none of the tables, so the fast read is left
    out rather than left to fail (a failure ends the pipeline's implicit
    transaction, and what was set in it, such as the session token sent with
    the lock); tables that appeared since are read from the catalog's answer.
    """

    def __init__(self, *, new: bool = False) -> None:
        self.conn: Any = None
        self.tables: Any = None
        self.fast: Any = None
        self.failure: Exception | None = None
        self.new = new

    def send(self, conn: Any) -> None:
        """Queue the reads on ``conn``, which is in pipeline mode."""
        self.conn = conn
        self.tables = conn.execute(_TABLES_SQL)
        self.fast = None if self.new else conn.execute(_STATE_SQL)

    def receive(self, failure: Exception | None) -> None:
        """Note what the pipeline raised when it ended, if anything."""
        self.failure = failure

    def result(self) -> InstanceState:
        """The state, once the pipeline has ended and ``receive`` has been told how."""
        failure, conn = self.failure, self.conn
        if failure is not None and (sqlstate_of(failure) != "42P01" or self.tables is None):
            raise failure
        if not conn.autocommit:
            conn.rollback()
        has_version, has_mirror, locked, marked, pid = self.tables.fetchone()
        fast = failure is None and self.fast is not None
        row = self.fast.fetchone() if fast else _read_partial_state(conn, has_version, has_mirror)
        if not conn.autocommit:
            conn.rollback()
        return replace(_state(conn, (*row, locked, marked)), direct=pid == conn.info.backend_pid)


def unchanged_sql(state: InstanceState) -> str | None:
    """An SQL condition that holds while the database's versioning state is still ``state``.

    Checked under the lock in place of a read (fleet/lock.py: ``first_message_lock``),
    so it compares what a plan depends on: the tables there are, ``alembic_version``,
    ``schema_version`` and the history with its checksums, and no interruption marked.
    ``None`` for a state it does not cover: some of the tables only, or an interruption.
    """
    if state.interrupted:
        return None
    no_marker = f"to_regclass('{INTERRUPTED_TABLE}') IS NULL"
    if not state.has_version_table and not state.has_mirror:
        tables = ("public.alembic_version", "public.schema_version", "public.schema_migrations")
        return " AND ".join([*(f"to_regclass('{table}') IS NULL" for table in tables), no_marker])
    if not (state.has_version_table and state.has_mirror):
        return None
    heads = sql_literal(",".join(state.heads) or None)
    history = sql_literal(json.dumps([list(row) for row in state.history]) if state.history else None)
    return (
        f"{no_marker}\n    AND {_HEADS} IS NOT DISTINCT FROM {heads}"
        f"\n    AND {_CURRENT} IS NOT DISTINCT FROM {sql_literal(state.current_version)}"
        f"\n    AND {_HISTORY}::jsonb IS NOT DISTINCT FROM {history}::jsonb"
    )


def _state(conn: Any, row: tuple[Any, ...]) -> InstanceState:
    has_version, heads, has_mirror, current, updated_at, history, locked, marked = row
    if isinstance(history, str):
        history = json.loads(history)
    interrupted: tuple[Interrupted, ...] = ()
    if marked:
        interrupted = _read_interrupted(conn)
    return InstanceState(
        has_version_table=bool(has_version),
        heads=tuple(heads.split(",")) if heads else (),
        has_mirror=bool(has_mirror),
        current_version=current,
        updated_at=updated_at,
        history=tuple((version, checksum) for version, checksum in history or ()),
        locked=bool(locked),
        interrupted=interrupted,
    )


def _read_interrupted(conn: Any) -> tuple[Interrupted, ...]:
    steps, invalid = conn.execute(_INTERRUPTED_SQL).fetchone()
    if not conn.autocommit:
        conn.rollback()
    leftovers = tuple(invalid or ())
    return tuple(Interrupted(revision, when, by, leftovers) for revision, when, by in steps or ())


def _read_partial_state(conn: Any, has_version: bool, has_mirror: bool) -> tuple[Any, ...]:
    """``_STATE_SQL``'s row for an instance that lacks some of the tables."""
    if not has_version and not has_mirror:
        return (False, None, False, None, None, None)
    alembic = _HEADS if has_version else "NULL::text"
    mirror = (
        f"{_CURRENT}, (SELECT updated_at FROM public.schema_version WHERE id = 1), {_HISTORY}"
        if has_mirror
        else "NULL::text, NULL::timestamptz, NULL::json"
    )
    return conn.execute(f"SELECT {has_version}, {alembic}, {has_mirror}, {mirror}").fetchone()


@dataclass(frozen=True)
class Finding(Record):
    """One integrity problem of one instance; ``kind`` is a state word of docs/design.md §3."""

    kind: str
    message: str
    revision: str | None = None
    file: str | None = None
    file_checksum: str | None = None
    recorded_checksum: str | None = None


def check(state: InstanceState, chain: Chain, name: str = "NAME") -> list[Finding]:
    """Every integrity problem of ``state`` against ``chain``, the most fundamental first, each
    saying what to run next on the instance ``name``."""
    if state.interrupted:
        return [_needs_attention(step, chain, name) for step in state.interrupted]
    if len(state.heads) > 1:
        return [Finding("error", f"alembic_version holds several heads: {', '.join(state.heads)}")]
    revision = state.revision
    if revision is not None and not chain.knows(revision):
        return [
            Finding(
                "ahead",
                f"the database is at revision {revision}, which this code does not know "
                "(deploy the newer code, or check you are using the right repository)",
                revision=revision,
            )
        ]
    findings = [
        Finding(
            "checksum-mismatch",
            f"revision {version} was applied from a file that has changed since: "
            f"{chain.get(version).path.name} is {chain.get(version).checksum}, "
            f"the database recorded {recorded}; restore the file as it was applied, or accept the edit "
            f"with `ophelia-db repair --instance {name} --accept-checksum {version}`",
            revision=version,
            file=str(chain.get(version).path),
            file_checksum=chain.get(version).checksum,
            recorded_checksum=recorded,
        )
        for version, recorded in state.history
        if recorded and chain.knows(version) and chain.get(version).checksum != recorded
    ]
    mirror = _mirror_findings(state, chain)
    if mirror:
        # One way out for all of them: the mirror is rebuilt from alembic_version.
        rebuild = f"; `ophelia-db repair --instance {name} --rebuild-mirror` rebuilds it from alembic_version"
        mirror = [replace(finding, message=finding.message + rebuild) for finding in mirror]
    return findings + mirror


def _needs_attention(step: Interrupted, chain: Chain, name: str) -> Finding:
    file = chain.get(step.revision).path.name if chain.knows(step.revision) else "a file this code lacks"
    left = f"; it left invalid index(es) {', '.join(step.invalid_indexes)}" if step.invalid_indexes else ""
    return Finding(
        State.NEEDS_ATTENTION,
        f"revision {step.revision} ({file}) was interrupted in its non-transactional section "
        f"(autocommit_block, started {step.started_at} by {step.started_by}){left}. Check what it did, "
        f"then run `ophelia-db resolve --instance {name} {step.revision} --retry` (invalid indexes are "
        "dropped, the next upgrade runs the revision again) or `--applied` (its effects are all there)",
        revision=step.revision,
    )


def _mirror_findings(state: InstanceState, chain: Chain) -> list[Finding]:
    revision = state.revision
    if not state.has_mirror or (revision is None and not state.history and state.current_version is None):
        return []
    findings = []
    if state.current_version != revision:
        findings.append(
            Finding(
                "mirror-mismatch",
                f"schema_version says {state.current_version or 'nothing'} but alembic_version says "
                f"{revision or 'nothing'}",
                revision=revision,
            )
        )
    recorded = {version for version, _ in state.history}
    expected = chain.applied_through(revision)
    findings += [
        Finding(
            "mirror-mismatch",
            f"schema_migrations has no row for revision {version}, which alembic_version "
            f"({revision}) says is applied",
            revision=version,
        )
        for version in expected
        if version not in recorded
    ]
    findings += [
        Finding(
            "mirror-mismatch",
            f"schema_migrations has a row for revision {version}, which alembic_version "
            f"({revision or 'nothing'}) says is not applied",
            revision=version,
        )
        for version in sorted(recorded - set(expected))
    ]
    return findings


def classify(state: InstanceState, chain: Chain, target: str | None = None, name: str = "NAME") -> Verdict:
    """Compare a database's state with the chain (``target`` defaults to head); ``name``, the
    instance's, goes in the problem's next step."""
    findings = check(state, chain, name)
    if findings:
        return Verdict(findings[0].kind, problem=findings[0].message)
    revision = state.revision
    goal = chain.head if target is None else target
    if revision is None:
        return Verdict("unversioned", pending=tuple(chain.between(None, goal)))
    if goal is not None and chain.is_after(revision, goal):
        return Verdict("up-to-date")
    pending = tuple(chain.between(revision, goal))
    return Verdict("outdated" if pending else "up-to-date", pending=pending)


def below_current(state: InstanceState, chain: Chain, goal: str | None, name: str) -> str | None:
    """Why an upgrade to ``goal`` is refused when the instance is already past it, else ``None``."""
    current = state.revision
    if current is None or not chain.knows(current) or current == goal or chain.is_after(goal, current):
        return None
    return (
        f"the instance is at {current}, past {goal or 'base'}: upgrade never goes down; "
        f"use `ophelia-db downgrade --instance {name} --to {goal or 'base'}`"
    )
