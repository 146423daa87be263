"""SQL text for operators who paste: the instance vault seed and the hub registry row.

This module owns turning provisioning answers into statements that are safe
for any value: every value is quoted by psycopg (``connections.sql_literal``)
and every identifier by ``connections.sql_identifier``, never by string
formatting. Every statement is an upsert that changes nothing when run
again. A secret appears only when the caller passes its value; otherwise it
is a commented-out statement holding a clearly marked placeholder, so that
pasting a file as it is can never store a placeholder. ``provision_apply.apply``
executes these same statements, so the files and the live path cannot drift.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from ophelia_db._version import __version__
from ophelia_db.fleet.connections import sql_identifier, sql_literal

if TYPE_CHECKING:
    from ophelia_db.instances.answers import Answers
    from ophelia_db.instances.vault import SeedRow

VAULT = ("public", "instance_config")
REGISTRY = ("public", "instance_registry")
_VAULT_COLUMNS = ("key", "value", "category", "description", "is_secret", "is_public")
_VAULT_UPDATED = ("value", "category", "description", "is_secret", "is_public")
_REGISTRY_COLUMNS = (
    "subdomain", "community_name", "community_type", "supabase_url", "supabase_anon_key",
    "status", "metadata", "is_hub", "contact_email",
)  # fmt: skip


def placeholder(name: str) -> str:
    """The marked stand-in for a secret that was left out."""
    return f"<SECRET {name}: replace, or re-run ophelia-db provision --include-secrets>"


def literal(value: Any) -> str:
    """An SQL literal quoted by psycopg (without the space it puts before ``E'...'``)."""
    return sql_literal(value).strip()


def json_literal(value: Any) -> str:
    """A jsonb literal: the JSON text quoted by psycopg, then cast."""
    return f"{literal(json.dumps(value, ensure_ascii=False, sort_keys=True))}::jsonb"


def _columns(names: Iterable[str], prefix: str = "") -> str:
    return ", ".join(f"{prefix}{sql_identifier(name)}" for name in names)


def vault_upsert(row: SeedRow, value: Any | None = None) -> str:
    """One seed row as an upsert; ``value`` replaces the row's (used for placeholders)."""
    shown = row.value if value is None else value
    values = ", ".join(
        (
            literal(row.key),
            json_literal(shown),
            literal(row.category),
            literal(row.description),
            literal(row.is_secret),
            literal(row.is_public),
        )
    )
    head = (
        f"INSERT INTO {sql_identifier(*VAULT)} AS c ({_columns(_VAULT_COLUMNS)})\n"
        f"VALUES ({values})\nON CONFLICT ({sql_identifier('key')}) "
    )
    if not row.overwrite:
        return head + "DO NOTHING;"
    assignments = ", ".join(f"{sql_identifier(c)} = EXCLUDED.{sql_identifier(c)}" for c in _VAULT_UPDATED)
    current, proposed = _columns(_VAULT_UPDATED, "c."), _columns(_VAULT_UPDATED, "EXCLUDED.")
    return f"{head}DO UPDATE SET {assignments}\nWHERE ({current}) IS DISTINCT FROM ({proposed});"


def vault_statements(rows: Sequence[SeedRow]) -> list[str]:
    """The executable statements of the vault seed, one per row, in order."""
    return [vault_upsert(row) for row in rows]


def registry_metadata(answers: Answers) -> dict[str, Any]:
    return {
        "city": answers.city,
        "code": answers.code,
        "region_code": answers.region_code,
        "region_name": answers.region_name,
        "map_center": list(answers.map_center),
        "provisioned_by": "ophelia-db",
    }


def registry_upsert(answers: Answers, anon_key: str | None) -> str:
    """The hub row: inserted ``active``; a ``pending`` row becomes active; other statuses stay.

    An archived or suspended instance stays so (``ophelia-db activate`` is the
    way back), and a missing anon key never erases one already stored.
    """
    values = ", ".join(
        (
            literal(answers.subdomain),
            literal(answers.community_name),
            literal(answers.community_type),
            literal(answers.supabase_url),
            literal(anon_key),
            literal("active"),
            json_literal(registry_metadata(answers)),
            literal(False),
            literal(answers.contact_email),
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
        f"INSERT INTO {sql_identifier(*REGISTRY)} AS r ({_columns(_REGISTRY_COLUMNS)})\n"
        f"VALUES ({values})\n"
        f"ON CONFLICT ({sql_identifier('subdomain')}) DO UPDATE SET\n  {assignments}\n"
        f"WHERE ({_columns(new, 'r.')}) IS DISTINCT FROM ({', '.join(new.values())});"
    )


def commented(statement: str) -> str:
    """Comment out every physical line (a value's own line breaks included)."""
    return "\n".join(f"-- {line}" for line in statement.splitlines())


def _script(purpose: list[str], statements: list[str], left_out: list[str]) -> str:
    lines = [f"-- {line}" for line in purpose]
    lines += [
        f"-- Generated by ophelia-db {__version__}. Every statement is an upsert: running the",
        "-- file again changes nothing.",
    ]
    if left_out:
        lines += [
            "--",
            "-- SECRETS LEFT OUT: each is a commented-out statement at the end with a placeholder",
            "-- <SECRET ...>. Replace the placeholder and uncomment the statement, or re-run",
            "-- `ophelia-db provision --include-secrets` (the file is then written mode 0600).",
        ]
    body = ["SET client_encoding = 'UTF8';", "BEGIN;", *statements, "COMMIT;"]
    if left_out:
        body += ["", "-- Secrets left out (placeholders; never run as they are):", *left_out]
    return "\n".join([*lines, "", *body]) + "\n"


def vault_script(answers: Answers, rows: Sequence[SeedRow], missing_secrets: Sequence[SeedRow]) -> str:
    """The vault SQL file: ``rows`` as statements, ``missing_secrets`` as commented placeholders."""
    purpose = [
        f"Instance vault seed for '{answers.subdomain}': paste it on that instance's database",
        "(Supabase SQL editor or psql) once its migrations are applied (`ophelia-db upgrade",
        f"--instance {answers.subdomain}`, or the SQL of `ophelia-db sql`).",
    ]
    left_out = [commented(vault_upsert(row, placeholder(row.key))) for row in missing_secrets]
    return _script(purpose, vault_statements(rows), left_out)


def registry_script(answers: Answers, anon_key: str | None) -> str:
    """The hub SQL file; without the anon key, a commented placeholder update follows."""
    purpose = [
        f"Hub registry row for '{answers.subdomain}': paste it on the hub database, after the",
        "instance's migrations and vault seed are in place.",
    ]
    left_out = []
    if anon_key is None:
        update = (
            f"UPDATE {sql_identifier(*REGISTRY)} SET {sql_identifier('supabase_anon_key')} = "
            f"{literal(placeholder('SUPABASE_ANON_KEY'))} WHERE {sql_identifier('subdomain')} = "
            f"{literal(answers.subdomain)};"
        )
        left_out.append(commented(update))
    return _script(purpose, [registry_upsert(answers, anon_key)], left_out)
