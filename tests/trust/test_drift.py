"""drift on real PostgreSQL: hand-made changes found per instance, instances grouped by fingerprint."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest

import ophelia_db
from ophelia_db import trust
from ophelia_db.fleet import catalog
from ophelia_db.fleet.config import load_fleet
from ophelia_db.local.cluster import LocalCluster
from ophelia_db.trust.reference import References
from tests.helpers import FleetDbs, MakeDatabase, run_cli
from tests.trust.support import HEAD, execute, trust_fleet

pytestmark = pytest.mark.pg


@pytest.fixture
def fleet_path(
    tmp_path: Path,
    fleet_dbs: FleetDbs,
    pg_cluster: LocalCluster,
    references: References,  # built first, so the CLI finds them in the cache
) -> Path:
    """A hub and inst1..inst3, all at head."""
    hub, urls = fleet_dbs(3)
    path = trust_fleet(tmp_path, pg_cluster, hub, urls)
    fleet = load_fleet(path)
    assert ophelia_db.upgrade(fleet, fleet.select(all_=True), jobs=3).exit_code == 0
    return path


def test_drift_finds_a_hand_added_column_and_a_dropped_policy(fleet_path: Path) -> None:
    fleet = load_fleet(fleet_path)
    execute(fleet.get("inst2").dsn(), "ALTER TABLE instance_registry ADD COLUMN notes text")
    execute(fleet.get("inst3").dsn(), "DROP POLICY instance_config_anon_select ON instance_config")

    done = run_cli(["drift", "--all"], fleet=fleet_path)
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "2 identical, 2 differ" in done.stdout
    assert "column public.instance_registry.notes: extra (text)" in done.stdout
    assert "policy public.instance_config.instance_config_anon_select: missing (SELECT)" in done.stdout

    record = json.loads(run_cli(["drift", "--all", "--json"], fleet=fleet_path).stdout)
    states = {row["name"]: row["state"] for row in record["instances"]}
    assert states == {"hub": "identical", "inst1": "identical", "inst2": "drifted", "inst3": "drifted"}
    groups = [(sorted(g["instances"]), g["identical_to_reference"]) for g in record["groups"]]
    assert groups[0] == (["hub", "inst1"], True)
    assert sorted(groups[1:]) == [(["inst2"], False), (["inst3"], False)]
    (policy,) = next(row for row in record["instances"] if row["name"] == "inst3")["differences"]
    assert (policy["category"], policy["change"]) == ("policy", "missing")


def test_no_drift_exits_0_with_one_group(fleet_path: Path, references: References) -> None:
    fleet = load_fleet(fleet_path)
    report = trust.drift(fleet.select(all_=True), references)
    assert (report.exit_code, report.summary) == (0, "4 identical, 0 differ")
    (group,) = report.groups
    assert group.identical and group.revision == HEAD and len(group.instances) == 4
    with psycopg.connect(fleet.get("inst1").dsn(), autocommit=True) as conn:
        assert catalog.fingerprint(conn) == group.fingerprint == references.of(HEAD).fingerprint


def test_unknown_revision_and_unversioned_instances(
    tmp_path: Path,
    fleet_path: Path,
    make_database: MakeDatabase,
    pg_cluster: LocalCluster,
    references: References,
) -> None:
    fleet = load_fleet(fleet_path)
    execute(fleet.get("inst1").dsn(), "UPDATE alembic_version SET version_num = '0099'")
    members = {"inst1": fleet.get("inst1").dsn(), "fresh": make_database("fresh")}
    (tmp_path / "other").mkdir()
    fleet = load_fleet(trust_fleet(tmp_path / "other", pg_cluster, fleet.hub.dsn(), members))
    report = trust.drift(fleet.select(all_=True), references)
    by_name = {row.name: row for row in report.instances}
    assert {name: row.state for name, row in by_name.items()} == {
        "hub": "identical",
        "inst1": "ahead",
        "fresh": "identical",
    }
    assert "0099" in (by_name["inst1"].error or "") and by_name["fresh"].revision is None
    # One rule for every command (docs/design.md §3): some passed, one refused → 7.
    assert (report.exit_code, report.summary) == (7, "2 identical, 0 differ, 1 not compared")


SUPABASE_DEFAULT_PRIVILEGES = [
    f"ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON {kind} TO anon, authenticated, service_role"
    for kind in ("TABLES", "SEQUENCES", "FUNCTIONS")
] + [
    # Supabase's own grants on schema public, to roles the chain does not manage.
    "GRANT USAGE ON SCHEMA public TO postgres",
    "DO $$ BEGIN CREATE ROLE supabase_admin NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$",
    "GRANT ALL ON SCHEMA public TO supabase_admin",
]


def test_supabase_default_privileges_are_not_drift(
    tmp_path: Path,
    make_database: MakeDatabase,
    pg_cluster: LocalCluster,
    references: References,
) -> None:
    """A Supabase project grants the API roles everything new in public by default; the
    chain sets every ACL it relies on itself, so such an instance matches the reference."""
    hub, supabase_like = make_database("hub"), make_database("supa")
    for statement in SUPABASE_DEFAULT_PRIVILEGES:
        execute(supabase_like, statement)
    fleet = load_fleet(trust_fleet(tmp_path, pg_cluster, hub, {"supa": supabase_like}))
    assert ophelia_db.upgrade(fleet, fleet.select(all_=True), jobs=1).exit_code == 0

    report = trust.drift(fleet.select(["supa"]), references)
    (row,) = report.instances
    assert (row.state, row.differences) == ("identical", ()), [d.describe() for d in row.differences]
    with psycopg.connect(supabase_like, autocommit=True) as conn:
        columns = catalog.snapshot(conn).objects["column"]
    assert not [key for key in columns if key.endswith((".last_value", ".log_cnt", ".is_called"))]
