"""The hub registry: what each instance reports after a run.

This module owns writing to (and reading from) ``instance_registry`` on the
hub database: an idempotent upsert per instance carrying its schema
version, migrations count and last run, with errors redacted. The hub is a
cache of the instances' own truth, so a hub that cannot be reached never
fails an instance's upgrade: the report is marked pending and ``sync``
replays it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ophelia_db.errors import OpheliaError
from ophelia_db.fleet.config import Target
from ophelia_db.fleet.connections import Connection, connect, describe_error
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
    """Reports instances to the hub as they finish, on one connection per run.

    After the first failure it stops trying, so that an unreachable hub costs
    one connection time-out per run rather than one per instance.
    """

    def __init__(self, hub: Target) -> None:
        self.hub = hub
        self.state = "ok"
        self.error: str | None = None
        self._conn: Connection | None = None
        self._reported = 0

    def report(self, update: RegistryUpdate) -> None:
        if self.state != "ok":
            return
        try:
            if self._conn is None:
                self._conn = connect(self.hub, autocommit=True)
            self._conn.execute(_UPSERT, update.params())
            self._reported += 1
        except OpheliaError as exc:
            self._fail("pending", exc.message)
        except Exception as exc:
            if getattr(exc, "sqlstate", None) is None:
                raise
            state = "pending" if self._conn is None or self._conn.closed else "failed"
            self._fail(state, f"{self.hub.name}: cannot write instance_registry: {describe_error(exc)}")

    def _fail(self, state: str, message: str) -> None:
        self.state = state
        self.error = f"{message}; run `ophelia-db sync --all` once the hub is back"
        self.close()

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None


def registry_statuses(hub: Target) -> dict[str, str] | None:
    """Return ``{subdomain: status}`` from the hub, or ``None`` if it cannot be read."""
    try:
        conn = connect(hub, autocommit=True)
    except OpheliaError:
        return None
    try:
        rows = conn.execute("SELECT subdomain, status FROM public.instance_registry").fetchall()
        return {name: status for name, status in rows}
    except Exception as exc:
        if getattr(exc, "sqlstate", None) is None:
            raise
        return None
    finally:
        conn.close()
