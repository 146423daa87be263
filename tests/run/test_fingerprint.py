"""The schema fingerprint reaches the hub registry's metadata through upgrade and sync."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

import ophelia_db
from ophelia_db.fleet.catalog import fingerprint
from ophelia_db.fleet.config import load_fleet
from tests.helpers import FleetDbs, registry, write_fleet

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
