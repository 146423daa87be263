"""The hub registry: every statement that reads or writes ``instance_registry``.

This module owns the registry on the hub database: the report each instance
makes after a run or a sync (an idempotent upsert carrying its schema
version, migrations count and last run, with errors redacted), the
lifecycle statuses (pending, active, suspended, archived), the rows
``instances`` lists, and the pasteable upsert ``provision`` writes. The hub
is a cache of the instances' own truth, so a hub that cannot be reached
never fails an instance's upgrade: the report is marked pending and
``sync`` replays it.
"""

from __future__ import annotations

import difflib
import queue
import threading
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import psycopg

from ophelia_db.errors import ConfigError, OpheliaError
from ophelia_db.fleet import journal
from ophelia_db.fleet.config import Target
from ophelia_db.fleet.connections import (
    Connection,
    connect,
    describe_error,
    sql_identifier,
    sql_json_literal,
    sql_literal,
    sqlstate_of,
)
from ophelia_db.fleet.journal import LocalJournal
from ophelia_db.redaction import redact

_UPSERT = """INSERT INTO public.instance_registry AS r
  (subdomain, community_name, community_type, is_hub, schema_version, schema_updated_at,
   migrations_count, last_run_status, last_run_at, last_error, metadata)
VALUES (%(name)s, %(community_name)s, %(community_type)s, %(is_hub)s, %(version)s,
  COALESCE(%(updated_at)s::timestamptz, now()), %(count)s, %(run_status)s, now(), %(error)s,
  jsonb_strip_nulls(jsonb_build_object('schema_fingerprint', %(fingerprint)s::text)))
ON CONFLICT (subdomain) DO UPDATE SET
  is_hub = EXCLUDED.is_hub,
  schema_version = CASE WHEN %(known)s THEN EXCLUDED.schema_version ELSE r.schema_version END,
  schema_updated_at = CASE WHEN %(known)s THEN EXCLUDED.schema_updated_at ELSE r.schema_updated_at END,
  migrations_count = CASE WHEN %(known)s THEN EXCLUDED.migrations_count ELSE r.migrations_count END,
  last_run_status = EXCLUDED.last_run_status,
  last_run_at = EXCLUDED.last_run_at,
  last_error = EXCLUDED.last_error,
  metadata = CASE WHEN %(fingerprint)s::text IS NULL THEN r.metadata
    ELSE r.metadata || jsonb_build_object('schema_fingerprint', %(fingerprint)s::text,
                                          'schema_fingerprint_at', now()) END,
  updated_at = now()"""


@dataclass(frozen=True)
class RegistryUpdate:
    """One instance's line in the hub registry after a run or a sync."""

    target: Target
    run_status: str
    version_known: bool
    schema_version: str | None = None
    schema_updated_at: datetime | None = None
    migrations_count: int | None = None
    error: str | None = None
    schema_fingerprint: str | None = None

    def params(self) -> dict[str, Any]:
        return {
            "name": self.target.name,
            "community_name": self.target.community_name,
            "community_type": self.target.community_type,
            "is_hub": self.target.role == "hub",
            "version": self.schema_version,
            "updated_at": self.schema_updated_at,
            "count": self.migrations_count,
            "run_status": self.run_status,
            "error": redact(self.error)[:2000] if self.error else None,
            "known": self.version_known,
            "fingerprint": self.schema_fingerprint,
        }


class HubReporter:
    """Writes a run's registry reports and journal to the hub, from a thread of its own, on one connection.

    What the run hands over while a write is on its way goes in the next one, in
    one pipelined round trip: the run never waits for the hub, and each instance's
    lines reach it as soon as its result is known. After the first failure it stops
    trying: the registry is left to ``sync``, the journal goes to ``local``.
    """

    def __init__(self, hub: Target, *, local: LocalJournal | None = None) -> None:
        self.hub = hub
        self.state = "ok"
        self.error: str | None = None
        # Whether the hub has the journal tables (revision 0005); None until asked.
        self.journal_ready: bool | None = None
        self._local = local
        self._conn: Connection | None = None
        self._queue: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def registry_statuses(self) -> dict[str, str] | None:
        """``registry_statuses`` on the connection the reports will use: one hub connection per run."""
        assert self._thread is None, "read before the writes start"
        if self._conn is None:
            try:
                self._conn = connect(self.hub, autocommit=True)
            except OpheliaError:
                return None  # the reports will try again, and say so if they fail
        return _statuses(self._conn)

    def report(self, update: RegistryUpdate) -> None:
        self._put("registry", update)

    def record(self, operation: journal.Operation) -> None:
        """Add a journal operation; it reaches the hub (or the local journal) in order."""
        self._put("journal", operation)

    def recheck_journal(self) -> None:
        """Ask again whether the hub has its journal (the run just migrated the hub)."""
        self._put("recheck", None)

    def close(self) -> None:
        """Send what is left; ``state``/``error`` then say how the reports went."""
        try:
            if self._thread is not None:
                self._queue.put(("stop", None))
                self._thread.join()
        finally:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _put(self, kind: str, item: Any) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="hub-writer", daemon=True)
            self._thread.start()
        self._queue.put((kind, item))

    def _loop(self) -> None:
        while True:
            items = [self._queue.get()]
            with suppress(queue.Empty):
                while True:
                    items.append(self._queue.get_nowait())
            try:
                self._write(items)
            except Exception as exc:  # a bug of ours: the run goes on, the reports say so
                self._fail("failed", f"{self.hub.name}: internal error while reporting: {type(exc).__name__}")
            if any(kind == "stop" for kind, _ in items):
                return

    def _write(self, items: list[tuple[str, Any]]) -> None:
        # The hub may have just got its journal (the run migrated it): asked on a recheck and at the end.
        recheck = any(kind in ("recheck", "stop") for kind, _ in items)
        if self.state == "ok" and self._connected() and (self.journal_ready is None or recheck):
            self._ask_journal()
        statements: list[tuple[str, dict[str, Any]]] = []
        kept_locally: list[journal.Operation] = []
        for kind, item in items:
            if kind == "registry" and self.state == "ok":
                statements.append((_UPSERT, item.params()))
            elif kind == "journal" and self.state == "ok" and self.journal_ready:
                statements.append((item.sql, dict(item.values)))
            elif kind == "journal":
                kept_locally.append(item)
        if self._local is not None:
            self._local.append(kept_locally)
            if self.state == "ok" and self.journal_ready:
                self._push_local()
        if statements and self.state == "ok":
            self._send(statements)

    @property
    def kept_locally(self) -> Path | None:
        """The local journal file, when the hub did not take the whole journal."""
        return self._local.path if self._local is not None and self._local.path.exists() else None

    def _connected(self) -> bool:
        if self._conn is not None:
            return True
        try:
            self._conn = connect(self.hub, autocommit=True)
            return True
        except OpheliaError as exc:
            self._fail("pending", exc.message)
            return False

    def _ask_journal(self) -> None:
        assert self._conn is not None
        try:
            row = self._conn.execute(journal.READY_SQL).fetchone()
            self.journal_ready = bool(row and row[0])
        except Exception as exc:
            self._server_error(exc)

    def _push_local(self) -> None:
        """Send the journal kept locally so far (the hub had none, or a recheck found it)."""
        if self._local is None or not self._local.path.exists():
            return
        assert self._conn is not None
        try:
            journal.replay(self._conn, self._local.path)
        except Exception as exc:
            self._server_error(exc)

    def _send(self, statements: list[tuple[str, dict[str, Any]]]) -> None:
        assert self._conn is not None
        try:
            with self._conn.pipeline(), self._conn.cursor() as cursor:
                for sql, params in statements:
                    cursor.execute(sql.encode(), params)
        except Exception as exc:
            self._server_error(exc)

    def _server_error(self, exc: Exception) -> None:
        if sqlstate_of(exc) is None and not isinstance(exc, psycopg.Error):
            raise exc
        state = "pending" if self._conn is None or self._conn.closed else "failed"
        self._fail(state, f"{self.hub.name}: cannot write instance_registry: {describe_error(exc)}")

    def _fail(self, state: str, message: str) -> None:
        if self.state != "ok":
            return
        self.state = state
        self.error = f"{message}; run `ophelia-db sync --all` once the hub is back"


def registry_statuses(hub: Target) -> dict[str, str] | None:
    """Return ``{subdomain: status}`` from the hub, or ``None`` if it cannot be read."""
    try:
        conn = connect(hub, autocommit=True)
    except OpheliaError:
        return None
    try:
        return _statuses(conn)
    finally:
        conn.close()


@dataclass(frozen=True)
class RegistryRow:
    """What the registry says of an instance: its lifecycle status and the version it last reported."""

    status: str
    schema_version: str | None
    schema_fingerprint: str | None = None
    community_name: str | None = None


def registry_rows(hub: Target) -> dict[str, RegistryRow] | None:
    """Return ``{subdomain: RegistryRow}`` from the hub, or ``None`` if it cannot be read."""
    try:
        conn = connect(hub, autocommit=True)
    except OpheliaError:
        return None
    try:
        rows = conn.execute(
            "SELECT subdomain, status, schema_version, metadata->>'schema_fingerprint', community_name "
            "FROM public.instance_registry"
        ).fetchall()
        return {name: RegistryRow(*values) for name, *values in rows}
    except Exception as exc:
        if sqlstate_of(exc) is None:
            raise
        return None
    finally:
        conn.close()


def _statuses(conn: Connection) -> dict[str, str] | None:
    try:
        rows = conn.execute("SELECT subdomain, status FROM public.instance_registry").fetchall()
        return {name: status for name, status in rows}
    except Exception as exc:
        if sqlstate_of(exc) is None:
            raise
        return None


# Lifecycle, listing and provisioning. Each takes an open hub connection.

Status = Literal["pending", "active", "suspended", "archived"]
_REGISTRY = sql_identifier("public", "instance_registry")
_COLUMNS = (
    "subdomain", "community_name", "community_type", "supabase_url", "supabase_anon_key",
    "status", "metadata", "is_hub", "contact_email",
)  # fmt: skip
ROWS_SQL = """SELECT subdomain, community_name, community_type, status, schema_version,
  last_run_status, is_hub FROM public.instance_registry ORDER BY is_hub DESC, subdomain"""
# What the app reads through PostgREST as ``anon``: the public columns only.
SUPABASE_URL_SQL = "SELECT supabase_url FROM public.instance_registry WHERE subdomain = %s"


def _columns(names: Any, prefix: str = "") -> str:
    return ", ".join(f"{prefix}{sql_identifier(name)}" for name in names)


def require_registry(conn: Connection, hub: Target) -> None:
    row = conn.execute("SELECT to_regclass('public.instance_registry') IS NOT NULL").fetchone()
    if not (row and row[0]):
        raise ConfigError(
            f"the hub '{hub.name}' has no instance_registry table; "
            f"run `ophelia-db upgrade --instance {hub.name}` first"
        )


def find(conn: Connection, name: str, *, for_update: bool = False) -> tuple[str, bool] | None:
    """``(status, is_hub)`` of ``name``'s row, or ``None``."""
    lock = " FOR UPDATE" if for_update else ""
    row = conn.execute(
        f"SELECT status, is_hub FROM public.instance_registry WHERE subdomain = %s{lock}",  # type: ignore[arg-type]
        (name,),
    ).fetchone()
    return (row[0], bool(row[1])) if row else None


def unknown_name_hint(conn: Connection, name: str, fleet_names: list[str]) -> str:
    registered = [r[0] for r in conn.execute("SELECT subdomain FROM public.instance_registry").fetchall()]
    close = difflib.get_close_matches(name, [*fleet_names, *registered], n=1)
    return f"; did you mean '{close[0]}'?" if close else ""


def insert(conn: Connection, target: Target, status: Status) -> bool:
    """Add ``target``'s row with ``status`` unless it exists; say whether it was added."""
    row = conn.execute(
        "INSERT INTO public.instance_registry (subdomain, community_name, community_type, status, is_hub) "
        "VALUES (%s, %s, %s, %s, false) ON CONFLICT (subdomain) DO NOTHING RETURNING status",
        (target.name, target.community_name, target.community_type, status),
    ).fetchone()
    return row is not None


def update_status(conn: Connection, name: str, status: Status) -> None:
    conn.execute("UPDATE public.instance_registry SET status = %s WHERE subdomain = %s", (status, name))


@dataclass(frozen=True)
class RegistryIdentity:
    """Who an instance is, as ``provision`` registers it."""

    subdomain: str
    community_name: str
    community_type: str
    supabase_url: str | None
    contact_email: str | None
    metadata: dict[str, Any] = field(default_factory=dict)


def registry_upsert(identity: RegistryIdentity, anon_key: str | None) -> str:
    """The hub row: inserted ``active``; a ``pending`` row becomes active; other statuses stay.

    An archived or suspended instance stays so (``ophelia-db activate`` is the
    way back), and a missing anon key never erases one already stored.
    """
    values = ", ".join(
        (
            sql_literal(identity.subdomain),
            sql_literal(identity.community_name),
            sql_literal(identity.community_type),
            sql_literal(identity.supabase_url),
            sql_literal(anon_key),
            sql_literal("active"),
            sql_json_literal(identity.metadata),
            sql_literal(False),
            sql_literal(identity.contact_email),
        )
    )
    new = {
        "community_name": "EXCLUDED.community_name",
        "community_type": "EXCLUDED.community_type",
        "supabase_url": "EXCLUDED.supabase_url",
        "supabase_anon_key": "COALESCE(EXCLUDED.supabase_anon_key, r.supabase_anon_key)",
        "status": "CASE WHEN r.status = 'pending' THEN EXCLUDED.status ELSE r.status END",
        "metadata": "r.metadata || EXCLUDED.metadata",
        "contact_email": "EXCLUDED.contact_email",
    }
    assignments = ",\n  ".join(f"{sql_identifier(c)} = {expr}" for c, expr in new.items())
    return (
        f"INSERT INTO {_REGISTRY} AS r ({_columns(_COLUMNS)})\n"
        f"VALUES ({values})\n"
        f"ON CONFLICT ({sql_identifier('subdomain')}) DO UPDATE SET\n  {assignments}\n"
        f"WHERE ({_columns(new, 'r.')}) IS DISTINCT FROM ({', '.join(new.values())});"
    )


def anon_key_update(subdomain: str, value: str) -> str:
    """Set the anon key of one row (the pasteable file's placeholder line)."""
    return (
        f"UPDATE {_REGISTRY} SET {sql_identifier('supabase_anon_key')} = "
        f"{sql_literal(value)} WHERE {sql_identifier('subdomain')} = {sql_literal(subdomain)};"
    )
