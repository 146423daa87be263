"""The version mirror: ``schema_migrations`` and ``schema_version`` in every database.

This module owns reading an instance's versioning state in one round trip,
classifying it against the chain (up-to-date, outdated, unversioned, ahead,
checksum-mismatch, mirror-mismatch), and the Alembic ``on_version_apply``
hook that writes the mirror rows inside each revision's own transaction —
online through the migration connection, offline as guarded
``register_migration`` calls so that hand-pasted SQL is recorded too.
"""

from __future__ import annotations

import getpass
import json
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ophelia_db._version import __version__
from ophelia_db.fleet.connections import MIGRATION_LOCK_KEY, sql_literal
from ophelia_db.run.chain import Chain

_LOCKED = f"""EXISTS (SELECT 1 FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND l.classid = 0 AND l.objid = {MIGRATION_LOCK_KEY} AND l.objsubid = 1)"""

# The fast path: one statement, valid once the chain's versioning revision
# has run, which is the state of almost every instance on almost every run.
_STATE_SQL = f"""SELECT
  true, (SELECT string_agg(version_num, ',' ORDER BY version_num) FROM public.alembic_version),
  true, (SELECT current_version FROM public.schema_version WHERE id = 1),
  (SELECT updated_at FROM public.schema_version WHERE id = 1),
  (SELECT json_agg(json_build_array(version, checksum) ORDER BY id) FROM public.schema_migrations),
  {_LOCKED}"""

_TABLES_SQL = """SELECT to_regclass('public.alembic_version') IS NOT NULL,
  to_regclass('public.schema_version') IS NOT NULL AND to_regclass('public.schema_migrations') IS NOT NULL"""


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

    @property
    def revision(self) -> str | None:
        return self.heads[0] if len(self.heads) == 1 else None

    @property
    def migrations_count(self) -> int:
        return len(self.history)


@dataclass(frozen=True)
class Verdict:
    """A state classified against the chain; ``state`` uses DESIGN §3's words."""

    state: str
    pending: tuple[str, ...] = ()
    problem: str | None = None


def read_state(conn: Any) -> InstanceState:
    """Read alembic_version, schema_version and the history in one round trip.

    ``conn`` is a psycopg connection; any open transaction is ended so the
    connection is left idle, as Alembic's per-revision transactions need.
    """
    try:
        row = conn.execute(_STATE_SQL).fetchone()
    except Exception as exc:
        if getattr(exc, "sqlstate", None) != "42P01":
            raise
        conn.rollback()
        row = _read_partial_state(conn)
    if not conn.autocommit:
        conn.rollback()
    has_version, heads, has_mirror, current, updated_at, history, locked = row
    if isinstance(history, str):
        history = json.loads(history)
    return InstanceState(
        has_version_table=bool(has_version),
        heads=tuple(heads.split(",")) if heads else (),
        has_mirror=bool(has_mirror),
        current_version=current,
        updated_at=updated_at,
        history=tuple((version, checksum) for version, checksum in history or ()),
        locked=bool(locked),
    )


def _read_partial_state(conn: Any) -> tuple[Any, ...]:
    has_version, has_mirror = conn.execute(_TABLES_SQL).fetchone()
    alembic = (
        "(SELECT string_agg(version_num, ',' ORDER BY version_num) FROM public.alembic_version)"
        if has_version
        else "NULL::text"
    )
    mirror = (
        "(SELECT current_version FROM public.schema_version WHERE id = 1), "
        "(SELECT updated_at FROM public.schema_version WHERE id = 1), "
        "(SELECT json_agg(json_build_array(version, checksum) ORDER BY id) FROM public.schema_migrations)"
        if has_mirror
        else "NULL::text, NULL::timestamptz, NULL::json"
    )
    return conn.execute(f"SELECT {has_version}, {alembic}, {has_mirror}, {mirror}, {_LOCKED}").fetchone()


def classify(state: InstanceState, chain: Chain, target: str | None = None) -> Verdict:
    """Compare a database's state with the chain (``target`` defaults to head)."""
    if len(state.heads) > 1:
        return Verdict("error", problem=f"alembic_version holds several heads: {', '.join(state.heads)}")
    revision = state.revision
    goal = chain.head if target is None else target
    if revision is not None and not chain.knows(revision):
        return Verdict(
            "ahead",
            problem=f"the database is at revision {revision}, which this code does not know "
            "(deploy the newer code, or check you are using the right repository)",
        )
    mismatch = _checksum_problem(state, chain)
    if mismatch:
        return Verdict("checksum-mismatch", problem=mismatch)
    mirror = _mirror_problem(state, chain)
    if mirror:
        return Verdict("mirror-mismatch", problem=mirror)
    if revision is None:
        return Verdict("unversioned", pending=tuple(chain.between(None, goal)))
    if goal is not None and chain.is_after(revision, goal):
        return Verdict("up-to-date")
    pending = tuple(chain.between(revision, goal))
    return Verdict("outdated" if pending else "up-to-date", pending=pending)


def _checksum_problem(state: InstanceState, chain: Chain) -> str | None:
    for version, recorded in state.history:
        if recorded and chain.knows(version) and chain.get(version).checksum != recorded:
            rev = chain.get(version)
            return (
                f"revision {version} was applied from a file that has changed since: "
                f"{rev.path.name} is {rev.checksum}, the database recorded {recorded}"
            )
    return None


def _mirror_problem(state: InstanceState, chain: Chain) -> str | None:
    if not state.has_mirror:
        return None
    revision = state.revision
    if revision is None and not state.history and state.current_version is None:
        return None
    if state.current_version != revision:
        return (
            f"schema_version says {state.current_version or 'nothing'} but alembic_version says "
            f"{revision or 'nothing'}"
        )
    recorded = [version for version, _ in state.history]
    expected = chain.applied_through(revision)
    if sorted(recorded) != sorted(expected):
        missing = sorted(set(expected) - set(recorded))
        extra = sorted(set(recorded) - set(expected))
        parts = []
        if missing:
            parts.append(f"missing history rows for {', '.join(missing)}")
        if extra:
            parts.append(f"history rows for revisions not applied: {', '.join(extra)}")
        return "schema_migrations disagrees with alembic_version: " + "; ".join(parts)
    return None


def applied_by() -> str:
    """Who applies a revision: the tool version and user@host."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"ophelia-db/{__version__} {user}@{socket.gethostname()}"[:200]


_UPSERT_ROW = """INSERT INTO public.schema_migrations
  (version, name, checksum, execution_time_ms, applied_by, applied_at)
VALUES (%(version)s, %(name)s, %(checksum)s, %(ms)s, %(by)s, now())
ON CONFLICT (version) DO UPDATE SET name = EXCLUDED.name, checksum = EXCLUDED.checksum,
  execution_time_ms = EXCLUDED.execution_time_ms, applied_by = EXCLUDED.applied_by,
  applied_at = EXCLUDED.applied_at"""
_BACKFILL_ROW = """INSERT INTO public.schema_migrations
  (version, name, checksum, execution_time_ms, applied_by)
VALUES (%(version)s, %(name)s, %(checksum)s, %(ms)s, %(by)s) ON CONFLICT (version) DO NOTHING"""
_SET_CURRENT = """INSERT INTO public.schema_version (id, current_version, updated_at, instance_id)
VALUES (1, %(version)s, now(), %(instance)s)
ON CONFLICT (id) DO UPDATE SET current_version = EXCLUDED.current_version,
  updated_at = EXCLUDED.updated_at,
  instance_id = COALESCE(EXCLUDED.instance_id, schema_version.instance_id)"""


@dataclass
class MirrorHook:
    """Alembic ``on_version_apply`` callback keeping the mirror in step with each revision.

    Alembic calls it after a revision's DDL and its ``alembic_version`` update,
    before that revision's transaction commits, so the mirror can never
    disagree with the schema. ``applied`` and ``reverted`` tell the caller
    what actually committed-or-not happened in this run.
    """

    chain: Chain
    instance_id: str | None
    by: str = field(default_factory=applied_by)
    applied: list[str] = field(default_factory=list)
    reverted: list[str] = field(default_factory=list)
    durations_ms: dict[str, int] = field(default_factory=dict)
    on_step: Callable[[str, bool], None] | None = None
    _started: float = field(default_factory=time.monotonic)
    _mirror_seen: bool = False

    def mark_start(self) -> None:
        """Note when a revision's transaction began, for ``execution_time_ms``."""
        self._started = time.monotonic()

    def __call__(self, *, ctx: Any, step: Any, heads: set[str], run_args: Any) -> None:
        revision = step.up_revision_id
        new_head = next(iter(heads)) if len(heads) == 1 else None
        elapsed = int((time.monotonic() - self._started) * 1000)
        if ctx.as_sql:
            ctx.impl.static_output(self._offline_sql(step.is_upgrade, revision, new_head))
        elif step.is_upgrade:
            self._record(ctx.connection, revision, elapsed)
        else:
            self._forget(ctx.connection, revision, new_head)
        if step.is_upgrade:
            self.applied.append(revision)
            self.durations_ms[revision] = elapsed
        else:
            self.reverted.append(revision)
        if self.on_step:
            self.on_step(revision, step.is_upgrade)
        self._started = time.monotonic()

    def _has_mirror(self, conn: Any) -> bool:
        # Once seen during an upgrade the mirror stays (no revision drops it
        # going up), so the catalog is asked only until it appears.
        if self._mirror_seen:
            return True
        row = conn.exec_driver_sql(
            "SELECT to_regclass('public.schema_migrations') IS NOT NULL "
            "AND to_regclass('public.schema_version') IS NOT NULL"
        ).fetchone()
        return bool(row and row[0])

    def _first_sight(self, conn: Any) -> bool:
        seen_before = self._mirror_seen
        self._mirror_seen = self._has_mirror(conn)
        return self._mirror_seen and not seen_before

    def _record(self, conn: Any, revision: str, elapsed: int) -> None:
        first = self._first_sight(conn)
        if not self._mirror_seen:
            # The revision creating the mirror has not run yet; it backfills this one.
            return
        if first:
            for earlier in self.chain.applied_through(revision)[:-1]:
                conn.exec_driver_sql(_BACKFILL_ROW, self._row(earlier, self.durations_ms.get(earlier)))
        conn.exec_driver_sql(_UPSERT_ROW, self._row(revision, elapsed))
        conn.exec_driver_sql(_SET_CURRENT, {"version": revision, "instance": self.instance_id})

    def _forget(self, conn: Any, revision: str, new_head: str | None) -> None:
        self._mirror_seen = False
        if not self._has_mirror(conn):
            return
        conn.exec_driver_sql("DELETE FROM public.schema_migrations WHERE version = %(v)s", {"v": revision})
        if new_head is None:
            conn.exec_driver_sql("DELETE FROM public.schema_version WHERE id = 1")
        else:
            conn.exec_driver_sql(_SET_CURRENT, {"version": new_head, "instance": self.instance_id})

    def _row(self, revision: str, ms: int | None) -> dict[str, Any]:
        rev = self.chain.get(revision)
        return {"version": rev.id, "name": rev.name, "checksum": rev.checksum, "ms": ms, "by": self.by}

    def _offline_sql(self, is_upgrade: bool, revision: str, new_head: str | None) -> str:
        """Guarded SQL so that pasted scripts keep the mirror right (or skip it before it exists)."""
        if not is_upgrade:
            current = (
                f"UPDATE public.schema_version SET current_version = {sql_literal(new_head)}, "
                "updated_at = now() WHERE id = 1;"
                if new_head
                else "DELETE FROM public.schema_version WHERE id = 1;"
            )
            return (
                "DO $ophelia$ BEGIN IF to_regclass('public.schema_migrations') IS NOT NULL THEN "
                f"DELETE FROM public.schema_migrations WHERE version = {sql_literal(revision)}; "
                f"{current} END IF; END $ophelia$;\n"
            )
        calls = []
        for earlier in self.chain.applied_through(revision):
            rev = self.chain.get(earlier)
            args = ", ".join(sql_literal(v) for v in (rev.id, rev.name, rev.checksum))
            recorded = f"SELECT 1 FROM public.schema_migrations WHERE version = {sql_literal(rev.id)}"
            guard = "" if earlier == revision else f"IF NOT EXISTS ({recorded}) THEN "
            end = "" if earlier == revision else " END IF;"
            calls.append(
                f"  {guard}PERFORM public.register_migration({args}, NULL, {sql_literal(self.by)});{end}"
            )
        body = "\n".join(calls)
        return (
            "DO $ophelia$\nBEGIN\n"
            "  IF to_regprocedure('public.register_migration(text,text,text,integer,text)') IS NULL "
            "THEN RETURN; END IF;\n"
            f"{body}\nEND $ophelia$;\n"
        )
