"""Row-level security, proved as the API roles: `SET ROLE` anon, authenticated and service_role,
as PostgREST does for the Ophelia app, on a database the revision chain built."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
import pytest
from psycopg import errors

from tests.instances.support import (
    HeadDatabase,
    rows,
)

pytestmark = pytest.mark.pg
# The head_template/head_database fixtures.


def as_role(url: str, role: str, query: str, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
    """Run one statement as ``role`` and commit (so that a write that passes really happened)."""
    with psycopg.connect(url) as conn:
        conn.execute(f"SET ROLE {role}")
        assert conn.execute("SELECT current_user").fetchone() == (role,)
        cursor = conn.execute(query, params)
        found = cursor.fetchall() if cursor.description else [(cursor.rowcount,)]
        conn.commit()
        return found


@pytest.fixture
def vault_db(head_database: HeadDatabase) -> str:
    url = head_database("rls")
    rows(
        url,
        "INSERT INTO public.instance_config (key, value, is_public, is_secret) VALUES "
        "('PUBLIC_KEY', '\"p\"', true, false), ('PRIVATE_KEY', '\"q\"', false, false), "
        "('SECRET_KEY', '\"s3cr3t\"', false, true)",
    )
    rows(
        url,
        "INSERT INTO public.instance_registry (subdomain, community_name, status, contact_email) VALUES "
        "('live', 'Live', 'active', 'a@live.example'), ('gone', 'Gone', 'archived', 'b@gone.example'), "
        "('soon', 'Soon', 'pending', NULL)",
    )
    return url


def test_rls_is_enabled_on_every_table_the_chain_creates(vault_db: str) -> None:
    tables = dict(
        rows(
            vault_db,
            "SELECT c.relname, c.relrowsecurity FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')",
        )
    )
    assert {"schema_migrations", "schema_version", "instance_config", "instance_registry"} <= set(tables)
    assert [name for name, enabled in tables.items() if not enabled] == []


@pytest.mark.parametrize(
    ("role", "visible"), [("anon", {"PUBLIC_KEY"}), ("authenticated", {"PUBLIC_KEY", "PRIVATE_KEY"})]
)
def test_api_roles_read_no_secret_and_cannot_write(vault_db: str, role: str, visible: set[str]) -> None:
    assert {key for (key,) in as_role(vault_db, role, "SELECT key FROM public.instance_config")} == visible
    assert as_role(vault_db, role, "SELECT count(*) FROM public.instance_config WHERE is_secret") == [(0,)]
    assert as_role(vault_db, role, "SELECT value FROM public.instance_config WHERE key = 'SECRET_KEY'") == []

    writes = [
        "INSERT INTO public.instance_config (key, value) VALUES ('NEW_KEY', '1')",
        "UPDATE public.instance_config SET value = '\"x\"'",
        "DELETE FROM public.instance_config",
        "INSERT INTO public.instance_registry (subdomain, community_name) VALUES ('evil', 'Evil')",
        "UPDATE public.instance_registry SET status = 'active'",
        "INSERT INTO public.schema_version (current_version) VALUES ('9999')",
        "DELETE FROM public.schema_migrations",
        "SELECT public.register_migration('9999', 'forged')",
    ]
    for statement in writes:
        with pytest.raises(errors.InsufficientPrivilege):
            as_role(vault_db, role, statement)

    # The app resolves active instances only, through the columns it is granted.
    assert as_role(vault_db, role, "SELECT subdomain FROM public.instance_registry") == [("live",)]
    with pytest.raises(errors.InsufficientPrivilege):
        as_role(vault_db, role, "SELECT contact_email FROM public.instance_registry")
    with pytest.raises(errors.InsufficientPrivilege):
        as_role(vault_db, role, "SELECT * FROM public.instance_registry")

    # Everyone reads the version, as the app does.
    version = as_role(
        vault_db, role, "SELECT current_version, migrations_count FROM public.get_schema_version()"
    )
    assert version == rows(
        vault_db, "SELECT current_version, migrations_count FROM public.get_schema_version()"
    )
    assert as_role(vault_db, role, "SELECT count(*) > 0 FROM public.schema_migrations") == [(True,)]

    stored = rows(vault_db, "SELECT key, value, version FROM public.instance_config ORDER BY key")
    assert stored == [("PRIVATE_KEY", "q", 1), ("PUBLIC_KEY", "p", 1), ("SECRET_KEY", "s3cr3t", 1)]


def test_service_role_reads_and_writes_everything(vault_db: str) -> None:
    role = "service_role"
    found = as_role(vault_db, role, "SELECT key, value FROM public.instance_config ORDER BY key")
    assert found == [("PRIVATE_KEY", "q"), ("PUBLIC_KEY", "p"), ("SECRET_KEY", "s3cr3t")]
    assert as_role(
        vault_db, role, "INSERT INTO public.instance_config (key, value) VALUES ('NEW_KEY', '1')"
    ) == [(1,)]
    assert as_role(
        vault_db, role, "UPDATE public.instance_config SET value = '\"t\"' WHERE key = 'SECRET_KEY'"
    ) == [(1,)]
    assert rows(
        vault_db, "SELECT previous_value, version FROM public.instance_config WHERE key = 'SECRET_KEY'"
    ) == [("s3cr3t", 2)]
    assert as_role(vault_db, role, "DELETE FROM public.instance_config WHERE key = 'PUBLIC_KEY'") == [(1,)]

    registry = as_role(
        vault_db, role, "SELECT subdomain, contact_email FROM public.instance_registry ORDER BY 1"
    )
    assert registry == [("gone", "b@gone.example"), ("live", "a@live.example"), ("soon", None)]
    assert as_role(vault_db, role, "UPDATE public.instance_registry SET status = 'active'") == [(3,)]
    assert as_role(vault_db, role, "SELECT count(*) FROM public.schema_migrations") == rows(
        vault_db, "SELECT count(*) FROM public.schema_migrations"
    )
