"""The schema fingerprint reaches the hub registry's metadata through upgrade and sync."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

import ophelia_db
from ophelia_db.fleet.catalog import fingerprint
from ophelia_db.fleet.config import load_fleet
from ophelia_db.results import RunReport
from tests.helpers import (
    REVISIONS,
    FleetDbs,
    assert_consistent,
    chain_at,
    chain_locations,
    registry,
    scalar,
    write_fleet,
)

pytestmark = pytest.mark.pg


def live_fingerprint(url: str) -> str:
    with psycopg.connect(url, autocommit=True) as conn:
        return fingerprint(conn)


def test_upgrade_and_sync_push_the_fingerprint(fleet_dbs: FleetDbs, tmp_path: Path) -> None:
    hub_url, urls = fleet_dbs(2)
    fleet = load_fleet(write_fleet(tmp_path, hub_url, urls))

    assert ophelia_db.upgrade(fleet, fleet.select(all_=True), jobs=1).exit_code == 0
    pushed = {name: row["metadata"].get("schema_fingerprint") for name, row in registry(hub_url).items()}
    assert pushed["inst1"] == live_fingerprint(urls["inst1"]) == live_fingerprint(urls["inst2"])
    assert pushed["inst1"].startswith("sha256:") or len(pushed["inst1"]) >= 32

    # A hand-made change shows up in the hub after the next sync.
    with psycopg.connect(urls["inst2"], autocommit=True) as conn:
        conn.execute("ALTER TABLE instance_config ADD COLUMN hand_added text")
    report = ophelia_db.sync(fleet, fleet.select(all_=True))
    assert report.hub_report == "ok"
    after = {name: row["metadata"].get("schema_fingerprint") for name, row in registry(hub_url).items()}
    assert after["inst1"] == pushed["inst1"]
    assert after["inst2"] == live_fingerprint(urls["inst2"]) != pushed["inst2"]


def _upgrade_through(
    test_chain: str, fleet_dbs: FleetDbs, tmp_path: Path
) -> tuple[RunReport, str, dict[str, str]]:
    """``upgrade --all`` of a hub and inst1 through the shipped chain and ``test_chain`` after it."""
    hub_url, urls = fleet_dbs(1)
    fleet = load_fleet(write_fleet(tmp_path, hub_url, urls))
    chain = chain_at(chain_locations(test_chain))
    return ophelia_db.upgrade(fleet, fleet.select(all_=True), jobs=1, chain=chain), hub_url, urls


def _advisory_locks(url: str) -> int:
    return int(scalar(url, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"))


def test_the_fingerprint_is_read_on_its_own_when_the_last_revision_runs_online(
    fleet_dbs: FleetDbs, tmp_path: Path
) -> None:
    # 0105 builds an index concurrently: Alembic online runs it, so no batch can carry the fingerprint.
    report, hub_url, urls = _upgrade_through("cic", fleet_dbs, tmp_path)

    assert [(r.name, r.result, r.to_revision) for r in report.instances] == [
        ("hub", "ok", "0105"),
        ("inst1", "ok", "0105"),
    ]
    pushed = registry(hub_url)["inst1"]["metadata"].get("schema_fingerprint")
    assert pushed == live_fingerprint(urls["inst1"])
    assert _advisory_locks(urls["inst1"]) == 0


def test_a_fingerprint_the_last_batch_could_not_read_leaves_the_run_ok_and_the_lock_released(
    fleet_dbs: FleetDbs, tmp_path: Path
) -> None:
    # 0105 leaves a temporary table named pg_proc in the session: the fingerprint's query, sent
    # behind it in the same message, fails there, after every revision committed; so does the
    # fingerprint read on its own after it. The unlock, behind the fingerprint, never ran.
    report, hub_url, urls = _upgrade_through("shadow", fleet_dbs, tmp_path)

    assert [(r.result, r.applied, r.schema_fingerprint) for r in report.instances] == [
        ("ok", (*REVISIONS, "0105"), None),
        ("ok", (*REVISIONS, "0105"), None),
    ], report.instances
    assert_consistent(urls["inst1"], "0105", chain_at(chain_locations("shadow")))
    assert registry(hub_url)["inst1"]["schema_version"] == "0105"
    assert _advisory_locks(urls["inst1"]) == 0
