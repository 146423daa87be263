"""adopt on real PostgreSQL: databases built by pasting the chain's SQL by hand, without bookkeeping."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest

import ophelia_db
from ophelia_db import trust
from ophelia_db.errors import ConfigError, IntegrityRefusal
from ophelia_db.fleet import catalog
from ophelia_db.fleet.config import Fleet, load_fleet
from ophelia_db.local.cluster import LocalCluster
from ophelia_db.trust.adopt import BASELINE_MARK
from ophelia_db.trust.reference import References
from tests.helpers import FleetDbs, run_cli
from tests.trust.support import (
    CHAIN,
    HEAD,
    assert_one_error_line,
    execute,
    paste_offline_sql,
    pg_dump,
    rows,
    trust_fleet,
)

pytestmark = pytest.mark.pg


def fingerprint(url: str) -> str:
    with psycopg.connect(url, autocommit=True) as conn:
        return catalog.fingerprint(conn)


@pytest.fixture
def fleet_of(
    tmp_path: Path,
    fleet_dbs: FleetDbs,
    pg_cluster: LocalCluster,
    references: References,  # built first, so the CLI finds them in the cache
) -> tuple[Fleet, Path, str]:
    """A hub at head and one instance ``inst1`` left empty for the test to fill; (fleet, path, url)."""
    hub, urls = fleet_dbs(1)
    path = trust_fleet(tmp_path, pg_cluster, hub, urls)
    fleet = load_fleet(path)
    assert ophelia_db.upgrade(fleet, fleet.select(["hub"]), jobs=1).exit_code == 0
    return fleet, path, urls["inst1"]


def test_pasted_instance_is_adopted_at_the_right_revision_then_upgrades_normally(
    fleet_of: tuple[Fleet, Path, str],
) -> None:
    fleet, path, url = fleet_of
    paste_offline_sql(url, "0003")
    before = pg_dump(url)

    shown = run_cli(["adopt", "--instance", "inst1"], fleet=path)
    assert shown.returncode == 0, shown.stderr
    assert "matches the reference schema of 0003 exactly" in shown.stdout
    assert "not at 0004" in shown.stdout and "public.instance_registry" in shown.stdout
    assert "run again with --yes" in shown.stderr
    assert pg_dump(url) == before, "without --yes adopt changes nothing"

    schema = fingerprint(url)
    done = run_cli(["adopt", "--instance", "inst1", "--yes", "--json"], fleet=path)
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    assert (record["revision"], record["matched"], record["stamped"]) == ("0003", True, True)
    assert fingerprint(url) == schema, "adoption runs no DDL on the chain's schema"

    assert rows(url, "SELECT version_num FROM alembic_version") == [("0003",)]
    history = rows(url, "SELECT version, checksum, applied_by FROM schema_migrations ORDER BY version")
    assert [(v, c) for v, c, _ in history] == [(r.id, r.checksum) for r in CHAIN.revisions[:3]]
    assert all(by.startswith(BASELINE_MARK) for _, _, by in history)
    assert rows(url, "SELECT current_version, instance_id FROM schema_version") == [("0003", "inst1")]
    ((action, revision, details),) = rows(url, "SELECT action, revision, details FROM ophelia_repairs")
    assert (action, revision, details["matched"], details["forced"]) == ("adopt", "0003", True, False)
    # alembic_version is closed to the API roles, as revision 0002 closes it on migrated instances.
    assert rows(url, "SELECT has_table_privilege('anon', 'public.alembic_version', 'UPDATE')") == [(False,)]

    upgraded = ophelia_db.upgrade(fleet, fleet.select(["inst1"]), jobs=1)
    assert [(r.result, r.applied) for r in upgraded.instances] == [("ok", ("0004", "0005"))]
    assert trust.validate(fleet, fleet.select(["inst1"])).exit_code == 0
    status = ophelia_db.status(fleet, fleet.select(["inst1"]))
    assert status.instances[0].state == "up-to-date"
    assert fingerprint(url) == fingerprint(fleet.hub.dsn())


def test_pasted_head_is_adopted_at_head(fleet_of: tuple[Fleet, Path, str], references: References) -> None:
    fleet, _, url = fleet_of
    paste_offline_sql(url, "head")
    target = fleet.get("inst1")
    plan = trust.plan_adoption(target, references)
    assert (plan.revision, plan.matched, plan.differences) == (HEAD, True, ())
    stamped = trust.adopt(target, plan, references)
    assert stamped.stamped
    assert [(r.result, r.applied) for r in ophelia_db.upgrade(fleet, [target], jobs=1).instances] == [
        ("noop", ())
    ]


def test_schema_matching_no_revision_is_refused_with_the_differences(
    fleet_of: tuple[Fleet, Path, str],
) -> None:
    _, path, url = fleet_of
    paste_offline_sql(url, "0003")
    execute(url, "ALTER TABLE instance_config ADD COLUMN added_by_hand text")
    before = pg_dump(url)

    refused = run_cli(["adopt", "--instance", "inst1", "--yes"], fleet=path)
    assert_one_error_line(refused, 4)
    assert "no revision matches exactly; the closest is 0003" in refused.stdout
    assert "column public.instance_config.added_by_hand: extra (text)" in refused.stdout
    assert pg_dump(url) == before

    forced = run_cli(["adopt", "--instance", "inst1", "--at", "0003", "--yes"], fleet=path)
    assert forced.returncode == 0, forced.stderr
    assert "added_by_hand" in forced.stdout and "stamped inst1 at 0003" in forced.stdout
    ((details,),) = rows(url, "SELECT details FROM ophelia_repairs WHERE action = 'adopt'")
    assert details["forced"] is True and details["matched"] is False
    assert any("added_by_hand" in line for line in details["differences"])


def test_versioned_or_empty_databases_are_not_adopted(
    fleet_of: tuple[Fleet, Path, str],
    references: References,
) -> None:
    fleet, path, url = fleet_of
    empty = trust.plan_adoption(fleet.get("inst1"), references)
    assert (empty.revision, empty.matched) == (None, True)
    assert "nothing to adopt" in " ".join(empty.evidence)
    before = pg_dump(url)
    done = run_cli(["adopt", "--instance", "inst1", "--yes"], fleet=path)
    assert done.returncode == 0 and pg_dump(url) == before

    assert_one_error_line(
        run_cli(["adopt", "--instance", "hub"], fleet=path), 2
    )  # already has alembic_version
    assert_one_error_line(run_cli(["adopt", "--instance", "inst1", "--at", "0077"], fleet=path), 2)
    with pytest.raises(ConfigError, match="already has alembic_version"):
        trust.plan_adoption(fleet.hub, references)


def test_adopt_refuses_when_the_schema_changed_since_the_comparison(
    fleet_of: tuple[Fleet, Path, str],
    references: References,
) -> None:
    fleet, _, url = fleet_of
    paste_offline_sql(url, "0002")
    plan = trust.plan_adoption(fleet.get("inst1"), references)
    assert (plan.revision, plan.matched) == ("0002", True)
    execute(url, "CREATE TABLE public.sneaked_in (id int)")
    before = pg_dump(url)
    with pytest.raises(IntegrityRefusal, match="changed since it was compared"):
        trust.adopt(fleet.get("inst1"), plan, references)
    assert pg_dump(url) == before
