"""The version mirror's only writer: ``schema_migrations`` and ``schema_version``.

The mirror is written in three situations, all through this module: the
Alembic ``on_version_apply`` hook (``MirrorHook``) inside each revision's own
transaction (which also drops its non-transactional section's ``marker``) —
online through the migration connection, offline as guarded
``register_migration`` calls so that hand-pasted SQL is recorded too — and
the deliberate history changes of ``repair`` and ``adopt`` (the row
functions below), which also stamp ``alembic_version``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ophelia_db.fleet.connections import closed_to_api_roles, sql_literal
from ophelia_db.fleet.journal import who
from ophelia_db.run import marker
from ophelia_db.run.chain import Chain, Revision


def applied_by() -> str:
    """Who applies a revision: the tool version and user@host (as the run journal says it)."""
    return who()


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

_MIRROR_EXISTS = (
    "to_regclass('public.schema_migrations') IS NOT NULL AND to_regclass('public.schema_version') IS NOT NULL"
)
# A batch marks its start in this transaction-local setting; the server then
# measures the revision's execution time itself, with no round trip of ours.
REVISION_STARTED = "ophelia.revision_started"
_ELAPSED_MS = (
    "(extract(epoch FROM clock_timestamp() - "
    f"current_setting('{REVISION_STARTED}')::timestamptz) * 1000)::int"
)
_IDENTIFIER = re.compile(r"^[A-Za-z0-9_]{1,50}$")


# The session setting a batch's revision sets to its own id once its rows are in the mirror.
RECORDED_THROUGH = "ophelia.mirror_recorded_through"


def _set_session(setting: str, value_sql: str) -> str:
    # Session-wide (not local): read by the next revision's transaction. A revision
    # that rolls back rolls its settings back too.
    return f"PERFORM set_config({sql_literal(setting)}, {value_sql}, false)"


def _if_chain(branches: list[tuple[str, list[str]]]) -> str:
    """PL/pgSQL ``IF ... ELSIF ... ELSE ... END IF`` over ``(condition, statements)``; ``""`` is ELSE."""
    lines = []
    for index, (condition, statements) in enumerate(branches):
        keyword = "ELSE" if not condition else ("IF" if index == 0 else "ELSIF")
        lines.append(f"  {keyword} {condition} THEN" if condition else "  ELSE")
        lines.extend(f"    {statement};" for statement in statements)
    lines.append("  END IF;")
    return "\n".join(lines)


def _duration_setting(revision: str) -> str | None:
    """The session setting a batch keeps ``revision``'s duration in, for a later backfill.

    Several revisions go in one message before the mirror exists; the one that
    creates it backfills the earlier ones with the durations the server measured.
    """
    return f"ophelia.ms_{revision}" if _IDENTIFIER.match(revision) else None


# A statement that creates one of the mirror's tables, in a revision's rendered SQL once
# what is not code (quoted text, dollar-quoted bodies, comments) is blanked out.
_CREATES_TABLE = re.compile(
    r"(?:^|;)\s*CREATE\s+TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?public\.(schema_migrations|schema_version)\b",
    re.IGNORECASE,
)
_NOT_CODE = re.compile(r"\$(\w*)\$.*?\$\1\$|'(?:[^']|'')*'|--[^\n]*|/\*.*?\*/", re.DOTALL)


def creates_mirror(statements: Sequence[str]) -> bool:
    """Whether a revision's own statements create both mirror tables.

    A message whose revision does can record its rows with plain statements from
    that revision on: the rows need no PL/pgSQL guard, whose block the server
    compiles for each revision of each instance. A revision that creates them
    some other way (a function, a quoted name) is simply not recognised: its
    message keeps the guarded rows.
    """
    code = ";".join(_NOT_CODE.sub(" ", statement) for statement in statements)
    created = {found.lower() for found in _CREATES_TABLE.findall(code)}
    return created == {"schema_migrations", "schema_version"}


def _literals(values: dict[str, Any]) -> dict[str, str]:
    """``values`` as SQL literals, for the ``%(name)s`` slots of the statements above."""
    return {name: sql_literal(value) for name, value in values.items()}


def version_step_sql(previous: str | None, revision: str) -> list[str]:
    """Alembic's own ``alembic_version`` step for one revision, as Alembic writes it online."""
    if previous is None:
        first = f"INSERT INTO public.alembic_version (version_num) VALUES ({sql_literal(revision)})"
        return [_STAMP_TABLE, first]
    return [
        f"UPDATE public.alembic_version SET version_num = {sql_literal(revision)} "
        f"WHERE version_num = {sql_literal(previous)}"
    ]


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
    # Revisions of this run that entered a non-transactional section: their
    # marker is cleared in the transaction that records them.
    sections: set[str] = field(default_factory=set)
    # Whether the mirror tables exist: given by a caller that read the state, so
    # that an upgrade neither asks the catalog nor backfills rows that are there.
    mirror_exists: bool = False
    _started: float = field(default_factory=time.monotonic)

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
            self._record(ctx.connection.connection.driver_connection, revision, elapsed)
        else:
            self._forget(ctx.connection.connection.driver_connection, revision, new_head)
        self._note(revision, step.is_upgrade, elapsed)
        self._started = time.monotonic()

    def _note(self, revision: str, is_upgrade: bool, elapsed_ms: int) -> None:
        """Record that ``revision`` committed, up or down, and tell ``on_step``."""
        if is_upgrade:
            self.applied.append(revision)
            self.durations_ms[revision] = elapsed_ms
        else:
            self.reverted.append(revision)
        if self.on_step:
            self.on_step(revision, is_upgrade)

    def batch_sql(
        self, revision: str, *, after: str | None = None, last: bool = True, creator: str | None = None
    ) -> list[str]:
        """The mirror's statements for ``revision`` sent inside its batch, just before its COMMIT.

        Literal SQL (run/batch.py sends revisions as one message). The duration
        is measured by the server from the batch's start mark. While the mirror
        is not known to exist, the rows are guarded: the first revision to see
        the mirror backfills the earlier ones, and says so (``RECORDED_THROUGH``)
        to the next, ``after`` it in the same message, which then records only
        itself. ``creator``: the revision of the message whose own statements
        create the mirror (``creates_mirror``), when one does: no guard is then
        needed, see ``_unguarded``. The ``last`` revision's SELECT says whether
        the mirror exists now.
        """
        rev = self.chain.get(revision)
        record = [
            _UPSERT_ROW % {**_literals(_row(rev, self.by, None)), "ms": _ELAPSED_MS},
            _SET_CURRENT % _literals({"version": revision, "instance": self.instance_id}),
        ]
        if self.mirror_exists:
            return record
        answer = [f"SELECT {_MIRROR_EXISTS}"] if last else []
        if creator is not None:
            return [*self._unguarded(revision, creator, record), *answer]
        backfill = [
            _BACKFILL_ROW % self._backfill_values(earlier)
            for earlier in self.chain.applied_through(revision)[:-1]
        ]
        recorded = _set_session(RECORDED_THROUGH, sql_literal(revision))
        setting = _duration_setting(revision)
        kept = [_set_session(setting, f"{_ELAPSED_MS}::text")] if setting else []
        branches = [
            (f"{_MIRROR_EXISTS}", [*backfill, *record, recorded]),
            ("", [*kept, _set_session(RECORDED_THROUGH, "''")]),
        ]
        if after is not None:
            # Set by the revision just before, in this message: every row up to it is there.
            through = f"current_setting('{RECORDED_THROUGH}', true) = {sql_literal(after)}"
            branches.insert(0, (through, [*record, recorded]))
        return [f"DO $ophelia$\nBEGIN\n{_if_chain(branches)}\nEND $ophelia$", *answer]

    def _unguarded(self, revision: str, creator: str, record: list[str]) -> list[str]:
        """``revision``'s mirror statements in a message whose revision ``creator`` creates the
        mirror: the mirror was not there when the message was planned (it would have been
        known), so it is there exactly from ``creator`` on. A revision before it keeps its
        duration for ``creator``'s backfill; ``creator`` backfills every earlier revision and
        records itself; the later ones record themselves."""
        through = self.chain.applied_through(revision)
        if revision == creator:
            return [*(_BACKFILL_ROW % self._backfill_values(earlier) for earlier in through[:-1]), *record]
        if creator in through:
            return record
        setting = _duration_setting(revision)
        return [f"SELECT set_config({sql_literal(setting)}, {_ELAPSED_MS}::text, false)"] if setting else []

    def _backfill_values(self, revision: str) -> dict[str, str]:
        """An earlier revision's row: its duration as measured here, else as its batch kept it."""
        values = _literals(_row(self.chain.get(revision), self.by, self.durations_ms.get(revision)))
        setting = _duration_setting(revision)
        if revision not in self.durations_ms and setting:
            values["ms"] = f"NULLIF(current_setting({sql_literal(setting)}, true), '')::int"
        return values

    def committed(self, revision: str, elapsed_ms: int, *, mirror_seen: bool | None = None) -> None:
        """Note that ``revision``'s batch committed (``mirror_seen``: what its last SELECT said)."""
        if mirror_seen:
            self.mirror_exists = True
        self._note(revision, True, elapsed_ms)

    def _has_mirror(self, conn: Any) -> bool:
        # Once seen during an upgrade the mirror stays (no revision drops it
        # going up), so the catalog is asked only until it appears.
        if self.mirror_exists:
            return True
        return has_mirror(conn)

    def _first_sight(self, conn: Any) -> bool:
        seen_before = self.mirror_exists
        self.mirror_exists = self._has_mirror(conn)
        return self.mirror_exists and not seen_before

    def _record(self, conn: Any, revision: str, elapsed: int) -> None:
        first = self._first_sight(conn)
        if not self.mirror_exists:
            # The revision creating the mirror has not run yet; it backfills this one.
            return
        # One round trip: nothing here reads an answer (an error still fails the revision's transaction).
        with conn.pipeline():
            if first:
                for earlier in self.chain.applied_through(revision)[:-1]:
                    add_history_row(conn, self.chain.get(earlier), self.by, self.durations_ms.get(earlier))
            conn.execute(_UPSERT_ROW, _row(self.chain.get(revision), self.by, elapsed))
            set_current_version(conn, revision, self.instance_id)
            if revision in self.sections:
                marker.clear_nontransactional(conn)

    def _forget(self, conn: Any, revision: str, new_head: str | None) -> None:
        self.mirror_exists = False
        if not self._has_mirror(conn):
            return
        remove_history_row(conn, revision)
        set_current_version(conn, new_head, self.instance_id)

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
        if self.instance_id:
            # register_migration() leaves instance_id alone; a live run sets it, so does pasted SQL.
            calls.append(
                f"  UPDATE public.schema_version SET instance_id = {sql_literal(self.instance_id)} "
                "WHERE id = 1 AND instance_id IS DISTINCT FROM "
                f"{sql_literal(self.instance_id)};"
            )
        body = "\n".join(calls)
        return (
            "DO $ophelia$\nBEGIN\n"
            "  IF to_regprocedure('public.register_migration(text,text,text,integer,text)') IS NULL "
            "THEN RETURN; END IF;\n"
            f"{body}\nEND $ophelia$;\n"
        )


# Deliberate history changes (repair, adopt). Each returns the number of rows
# it changed, so that a caller can refuse a step that found the row moved.


def _row(rev: Revision, by: str, ms: int | None) -> dict[str, Any]:
    return {"version": rev.id, "name": rev.name, "checksum": rev.checksum, "ms": ms, "by": by[:200]}


def has_mirror(conn: Any) -> bool:
    row = conn.execute(f"SELECT {_MIRROR_EXISTS}").fetchone()
    return bool(row and row[0])


def add_history_row(conn: Any, rev: Revision, by: str, ms: int | None = None) -> int:
    """Record ``rev`` as applied unless a row for it exists already."""
    return int(conn.execute(_BACKFILL_ROW, _row(rev, by, ms)).rowcount)


def remove_history_row(conn: Any, version: str) -> int:
    return int(conn.execute("DELETE FROM public.schema_migrations WHERE version = %s", (version,)).rowcount)


def set_current_version(conn: Any, version: str | None, instance_id: str | None = None) -> int:
    """Point ``schema_version`` at ``version`` (``None``: the instance is at base, no row)."""
    if version is None:
        return int(conn.execute("DELETE FROM public.schema_version WHERE id = 1").rowcount)
    return int(conn.execute(_SET_CURRENT, {"version": version, "instance": instance_id}).rowcount)


def accept_checksum(conn: Any, version: str, before: str | None, after: str | None) -> int:
    return int(
        conn.execute(
            "UPDATE public.schema_migrations SET checksum = %s WHERE version = %s "
            "AND checksum IS NOT DISTINCT FROM %s",
            (after, version, before),
        ).rowcount
    )


# Alembic's own version table, as Alembic creates it, closed to the API roles as
# revision 0002 closes it on instances migrated by runs.
_STAMP_TABLE = """CREATE TABLE IF NOT EXISTS public.alembic_version (
  version_num varchar(32) NOT NULL, CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num))"""
_HARDEN = f"""DO $ophelia$
BEGIN
{closed_to_api_roles("TABLE public.alembic_version")}
  ALTER TABLE public.alembic_version ENABLE ROW LEVEL SECURITY;
END $ophelia$"""


def stamp_alembic_version(conn: Any, revision: str) -> None:
    """Write ``alembic_version`` without running any revision (``adopt``)."""
    conn.execute(_STAMP_TABLE)
    conn.execute(_HARDEN)
    conn.execute("DELETE FROM public.alembic_version")
    conn.execute("INSERT INTO public.alembic_version (version_num) VALUES (%s)", (revision,))
