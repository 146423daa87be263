"""Catalog snapshots on real PostgreSQL: what they see, what they leave out, diffs and fingerprints."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import psycopg
import pytest
from pydantic import SecretStr

import ophelia_db
from ophelia_db.fleet import catalog
from ophelia_db.fleet.catalog import Snapshot
from ophelia_db.fleet.config import load_fleet
from ophelia_db.trust.reference import References
from tests.helpers import FleetDbs, MakeDatabase, write_fleet
from tests.trust.support import HEAD, execute, paste_offline_sql

pytestmark = pytest.mark.pg


def shot(url: str) -> Snapshot:
    with psycopg.connect(url, autocommit=True) as conn:
        return catalog.snapshot(conn)


@pytest.fixture
def pasted(make_database: MakeDatabase) -> str:
    """A database with the head schema, built fast from the offline SQL."""
    url = make_database("catalog")
    paste_offline_sql(url, HEAD or "head")
    return url


def test_snapshot_sees_the_chains_objects_and_not_the_bookkeeping(
    tmp_path: Path,
    fleet_dbs: FleetDbs,
    references: References,
) -> None:
    hub, urls = fleet_dbs(1)
    fleet = load_fleet(write_fleet(tmp_path, hub, urls))
    assert ophelia_db.upgrade(fleet, fleet.select(all_=True), jobs=2).exit_code == 0
    objects = shot(urls["inst1"]).objects
    assert shot(urls["inst1"]).fingerprint == references.of(HEAD).fingerprint
    assert set(objects["table"]) == {
        "public.instance_config",
        "public.instance_registry",
        "public.schema_migrations",
        "public.schema_version",
        "public.ophelia_runs",
        "public.ophelia_run_shards",
        "public.ophelia_run_instances",
    }
    assert objects["table"]["public.instance_config"]["rls"] is True
    assert objects["column"]["public.schema_migrations.version"]["type"] == "character varying(50)"
    assert objects["column"]["public.instance_config.category"]["default"] == "'general'::text"
    assert "public.instance_config.instance_config_anon_select" in objects["policy"]
    assert objects["grant"]["column public.instance_registry.subdomain to anon"] == {"privileges": "SELECT"}
    assert "table public.instance_registry to anon" not in objects["grant"]
    assert "public.instance_config.instance_config_touch" in objects["trigger"]
    assert any(key.startswith("public.register_migration(") for key in objects["function"])
    assert "public.schema_migrations_pkey" in objects["index"]
    assert "public.schema_migrations_id_seq" in objects["sequence"]
    everything = repr(objects)
    assert "alembic_version" not in everything.replace("to_regclass('public.alembic_version')", "")
    grantees = {key.rsplit(" to ", 1)[-1] for key in objects["grant"]}
    assert "postgres" not in grantees, "the owner's own privileges are left out"
    # What the hub registry stores: the same fingerprint, or None when the instance is down.
    assert catalog.fingerprint_of(fleet.get("inst1")) == references.of(HEAD).fingerprint
    assert catalog.fingerprint_of(replace(fleet.get("inst1"), url=SecretStr(urls["inst1"] + "_gone"))) is None


def test_identical_schemas_share_a_fingerprint_whatever_their_rows(
    pasted: str,
    references: References,
) -> None:
    url = pasted
    first = shot(url)
    # Rows, sequence values, the repair log and the session's search_path do not count.
    execute(url, "INSERT INTO instance_config (key, value) VALUES ('COMMUNITY_NAME', '\"Corte\"')")
    execute(url, "SELECT nextval('schema_migrations_id_seq')")
    execute(url, "CREATE TABLE public.ophelia_repairs (id int)")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET search_path = public, pg_catalog")
        assert catalog.fingerprint(conn) == first.fingerprint
        assert conn.execute("SHOW search_path").fetchone() == ("public, pg_catalog",)
        assert conn.info.transaction_status == 0  # idle: the snapshot left no transaction open
    assert references.of(HEAD).fingerprint == first.fingerprint
    assert first.fingerprint.startswith("sha256:") and len(first.fingerprint) == 71


@pytest.mark.parametrize(
    ("change", "category", "key", "kind"),
    [
        (
            "ALTER TABLE instance_config ADD COLUMN hand text",
            "column",
            "public.instance_config.hand",
            "extra",
        ),
        (
            "DROP POLICY instance_config_anon_select ON instance_config",
            "policy",
            "public.instance_config.instance_config_anon_select",
            "missing",
        ),
        (
            "ALTER TABLE instance_config ALTER COLUMN category SET DEFAULT 'misc'",
            "column",
            "public.instance_config.category",
            "changed",
        ),
        (
            "GRANT INSERT ON instance_registry TO anon",
            "grant",
            "table public.instance_registry to anon",
            "extra",
        ),
        (
            "REVOKE SELECT ON schema_version FROM anon",
            "grant",
            "table public.schema_version to anon",
            "missing",
        ),
        ("CREATE INDEX hand_idx ON instance_config (category)", "index", "public.hand_idx", "extra"),
        (
            "ALTER TABLE instance_config DISABLE ROW LEVEL SECURITY",
            "table",
            "public.instance_config",
            "changed",
        ),
        (
            "DROP TRIGGER instance_config_touch ON instance_config",
            "trigger",
            "public.instance_config.instance_config_touch",
            "missing",
        ),
        (
            "CREATE OR REPLACE FUNCTION instance_registry_touch() RETURNS trigger LANGUAGE plpgsql "
            "AS $$ BEGIN RETURN NEW; END $$",
            "function",
            "public.instance_registry_touch()",
            "changed",
        ),
        (
            "ALTER TABLE instance_config DROP CONSTRAINT instance_config_secret_not_public",
            "constraint",
            "public.instance_config.instance_config_secret_not_public",
            "missing",
        ),
        ("CREATE TYPE mood AS ENUM ('ok', 'sad')", "type", "public.mood", "extra"),
    ],
    ids=[
        "column",
        "policy",
        "default",
        "grant",
        "revoke",
        "index",
        "rls",
        "trigger",
        "function",
        "check",
        "enum",
    ],
)
def test_diff_names_each_kind_of_change(
    pasted: str,
    references: References,
    change: str,
    category: str,
    key: str,
    kind: str,
) -> None:
    execute(pasted, change)
    differences = catalog.diff(references.of(HEAD), shot(pasted))
    assert [(d.category, d.key, d.change) for d in differences] == [(category, key, kind)]
    assert key in differences[0].describe()


# One of each kind of object a snapshot reads. Its fingerprint is pinned: the hub
# registry stores fingerprints, so a change in how snapshots are read or
# normalised must not change the fingerprint of a schema that did not change.
GOLDEN_SCHEMA = """
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN positive AS integer CHECK (VALUE > 0);
CREATE TABLE things (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  name text COLLATE "C" NOT NULL DEFAULT 'x' UNIQUE,
  mood mood,
  size positive,
  double_size int GENERATED ALWAYS AS (size * 2) STORED,
  CHECK (length(name) < 100) NOT VALID
);
CREATE TABLE notes (id serial PRIMARY KEY, thing bigint REFERENCES things (id), body varchar(20));
CREATE INDEX notes_body ON notes (lower(body)) WHERE body IS NOT NULL;
CREATE SEQUENCE tickets START 5 INCREMENT 3 CACHE 2 CYCLE;
CREATE VIEW sized AS SELECT id, name FROM things WHERE size > 1;
CREATE MATERIALIZED VIEW note_count AS SELECT count(*) FROM notes;
CREATE FUNCTION label(a int, b text DEFAULT 'z') RETURNS text LANGUAGE sql STABLE STRICT SECURITY DEFINER
  SET search_path = public AS $$ SELECT b || a $$;
CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;
CREATE TRIGGER notes_touch BEFORE INSERT ON notes FOR EACH ROW EXECUTE FUNCTION touch();
ALTER TABLE notes DISABLE TRIGGER notes_touch;
CREATE PROCEDURE noop() LANGUAGE sql AS $$ SELECT 1 $$;
ALTER TABLE things ENABLE ROW LEVEL SECURITY;
ALTER TABLE things FORCE ROW LEVEL SECURITY;
CREATE POLICY things_read ON things FOR SELECT TO PUBLIC USING (size > 0);
CREATE POLICY things_named ON things AS RESTRICTIVE FOR INSERT WITH CHECK (name <> '');
GRANT SELECT, INSERT ON things TO PUBLIC;
GRANT SELECT (body) ON notes TO PUBLIC;
GRANT USAGE ON SEQUENCE tickets TO PUBLIC;
REVOKE EXECUTE ON FUNCTION label(int, text) FROM PUBLIC;
CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY);
"""
GOLDEN_FINGERPRINT = "sha256:78aa7e3b2ca8e80a4cecf9d35b635ef4d8a16790705c142d560095d583a614e5"


class CountingConnection:
    """A real psycopg connection that counts the statements sent through it."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn
        self.statements = 0

    def execute(self, *args: object, **kwargs: object) -> object:
        self.statements += 1
        return self.conn.execute(*args, **kwargs)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> object:
        return getattr(self.conn, name)


def test_a_snapshot_is_one_catalog_query_and_its_fingerprint_does_not_move(
    make_database: MakeDatabase,
) -> None:
    url = make_database("golden")
    execute(url, GOLDEN_SCHEMA)
    with psycopg.connect(url, autocommit=True) as conn:
        counted = CountingConnection(conn)
        found = catalog.snapshot(counted)
        # The search_path pin and the one catalog query (there were eleven queries).
        assert counted.statements == 2
    assert {category: len(objects) for category, objects in found.objects.items()} == {
        "schema": 1,
        "table": 4,
        "column": 11,
        "sequence": 3,
        "index": 4,
        "constraint": 5,
        "function": 3,
        "trigger": 1,
        "policy": 2,
        "type": 2,
        "grant": 6,
    }
    assert found.fingerprint == GOLDEN_FINGERPRINT


def test_snapshot_record_round_trip(pasted: str) -> None:
    first = shot(pasted)
    again = Snapshot.from_record(first.as_record())
    assert again is not None and again.fingerprint == first.fingerprint
    assert Snapshot.from_record({"format": -1, "objects": {}}) is None
