"""The hub registry: every statement that reads or writes ``instance_registry``.

This module owns the registry on the hub database: the report each instance
makes after a run or a sync (sent by ``hub_writer.HubReporter``) (an idempotent upsert carrying its schema
version, migrations count and last run, with errors redacted), the
lifecycle statuses (pending, active, suspended, archived), the rows
``instances`` lists, and the pasteable upsert ``provision`` writes. The hub
is a cache of the instances' own truth, so a hub that cannot be reached
never fails an instance's upgrade: the report is marked pending and
``sync`` replays it.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from psycopg.types.json import Jsonb

from ophelia_db.errors import ConfigError, OpheliaError
from ophelia_db.fleet.config import Target
from ophelia_db.fleet.connections import (
    Connection,
    connect,
    sql_identifier,
    sql_json_literal,
    sql_literal,
    sqlstate_of,
)
from ophelia_db.fleet.upserts import runs_without_repeats
from ophelia_db.redaction import redact

# Each report is an upsert; many go as one statement over a JSON array of rows. A version read
# by the run replaces the row's; one not read (locked, unreachable: ``known`` false) keeps it.
_UPSERT = """INSERT INTO public.instance_registry AS r
  (subdomain, community_name, community_type, is_hub, schema_version, schema_updated_at,
   migrations_count, last_run_status, last_run_at, last_error, metadata)
SELECT u.name, u.community_name, u.community_type, u.is_hub, u.version,
  COALESCE(u.updated_at, now()), u.count, u.run_status, now(), u.error,
  jsonb_strip_nulls(jsonb_build_object('schema_fingerprint', u.fingerprint))
FROM jsonb_to_recordset(%(rows)s) AS u(name text, community_name text, community_type text,
  is_hub boolean, version text, updated_at timestamptz, count integer, run_status text, error text,
  fingerprint text)
ON CONFLICT (subdomain) DO UPDATE SET
  is_hub = EXCLUDED.is_hub,
  schema_version = {kept}.schema_version,
  schema_updated_at = {kept}.schema_updated_at,
  migrations_count = {kept}.migrations_count,
  last_run_status = EXCLUDED.last_run_status,
  last_run_at = EXCLUDED.last_run_at,
  last_error = EXCLUDED.last_error,
  metadata = CASE WHEN EXCLUDED.metadata ? 'schema_fingerprint'
    THEN r.metadata || EXCLUDED.metadata || jsonb_build_object('schema_fingerprint_at', now())
    ELSE r.metadata END,
  updated_at = now()"""
_UPSERT_READ = _UPSERT.format(kept="EXCLUDED")
_UPSERT_NOT_READ = _UPSERT.format(kept="r")


def registry_writes(updates: Sequence[RegistryUpdate]) -> list[tuple[str, dict[str, Any]]]:
    """The statements writing ``updates`` in their order, as few as can be (``runs_without_repeats``):
    in each run, the reports that read the version in one, the others in another."""
    written: list[tuple[str, dict[str, Any]]] = []
    for _, run in runs_without_repeats(updates, key=lambda update: update.target.name, kind=lambda _: None):
        for known, sql in ((True, _UPSERT_READ), (False, _UPSERT_NOT_READ)):
            rows = [update.row() for update in run if update.version_known is known]
            if rows:
                written.append((sql, {"rows": Jsonb(rows)}))
    return written


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

    def row(self) -> dict[str, Any]:
        """The report as a row of ``registry_writes``' JSON array."""
        return {
            "name": self.target.name,
            "community_name": self.target.community_name,
            "community_type": self.target.community_type,
            "is_hub": self.target.role == "hub",
            "version": self.schema_version,
            "updated_at": self.schema_updated_at.isoformat() if self.schema_updated_at else None,
            "count": self.migrations_count,
            "run_status": self.run_status,
            "error": redact(self.error)[:2000] if self.error else None,
            "fingerprint": self.schema_fingerprint,
        }


@dataclass(frozen=True)
class RegistryRow:
    """What the registry says of an instance: its lifecycle status and the version it last reported."""

    status: str
    schema_version: str | None
    schema_fingerprint: str | None = None
    community_name: str | None = None


_ROWS_SQL = """SELECT subdomain, status, schema_version, metadata->>'schema_fingerprint', community_name
FROM public.instance_registry"""


def registry_rows(hub: Target) -> dict[str, RegistryRow] | None:
    """Return ``{subdomain: RegistryRow}`` from the hub, or ``None`` if it cannot be read."""
    try:
        conn = connect(hub, autocommit=True)
    except OpheliaError:
        return None
    with conn:
        return read_registry(conn)


def read_registry(conn: Connection) -> dict[str, RegistryRow] | None:
    """``registry_rows`` on an open hub connection."""
    try:
        rows = conn.execute(_ROWS_SQL).fetchall()
    except Exception as exc:
        if sqlstate_of(exc) is None:
            raise
        return None
    return {name: RegistryRow(*values) for name, *values in rows}


_STATUSES_SQL = """SELECT (SELECT coalesce(jsonb_object_agg(subdomain, status), '{}')
  FROM public.instance_registry), to_regclass('public.ophelia_run_instances') IS NOT NULL"""


def statuses_and_journal(conn: Connection) -> tuple[dict[str, str] | None, bool | None]:
    """``({subdomain: status}, whether the hub has its run journal)`` in one round trip; ``None``s
    when the registry cannot be read."""
    try:
        row = conn.execute(_STATUSES_SQL).fetchone()
    except Exception as exc:
        if sqlstate_of(exc) is None:
            raise
        return None, None
    assert row is not None
    return dict(row[0]), bool(row[1])


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
