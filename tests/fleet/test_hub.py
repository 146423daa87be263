"""The hub registry: what a run reports, a hub that is down, and `sync` replaying it."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest

import ophelia_db
from ophelia_db.fleet.config import load_fleet
from ophelia_db.fleet.lock import MIGRATION_LOCK_KEY
from tests.helpers import (
    HEAD,
    REVISIONS,
    FleetDbs,
    alembic_version,
    assert_consistent,
    exists,
    invoke,
    registry,
    rows,
    run_cli,
    silent_server,
    write_fleet,
)

pytestmark = pytest.mark.pg

CLOSED_HUB = "postgresql://postgres@127.0.0.1:1/hub?connect_timeout=2"


def test_registry_after_a_normal_upgrade(fleet_dbs: FleetDbs, tmp_path: Path) -> None:
    hub_url, urls = fleet_dbs(2)
    fleet = load_fleet(write_fleet(tmp_path, hub_url, urls))

    report = ophelia_db.upgrade(fleet, fleet.select(all_=True), jobs=2)

    assert report.exit_code == 0, report.as_record()
    assert report.hub_report == "ok"
    rows_ = registry(hub_url)
    assert set(rows_) == {"hub", "inst1", "inst2"}
    hub = rows_["hub"]
    assert hub["is_hub"] is True
    assert hub["community_name"] == "Ophélia hub"
    for name in ("inst1", "inst2"):
        row = rows_[name]
        assert row["is_hub"] is False
        assert row["community_name"] == name.title()  # as write_fleet puts it in fleet.toml
        assert row["community_type"] == "municipality"
        assert row["status"] == "active"
    for name, row in rows_.items():
        assert (row["schema_version"], row["migrations_count"]) == (HEAD, len(REVISIONS)), name
        assert (row["last_run_status"], row["last_error"]) == ("ok", None), name
        assert row["last_run_at"] is not None and row["schema_updated_at"] is not None

    # A second run is a no-op and upserts the same rows (no duplicates).
    again = ophelia_db.upgrade(fleet, fleet.select(all_=True), jobs=2)
    assert {r.result for r in again.instances} == {"noop"}
    after = registry(hub_url)
    assert set(after) == set(rows_)
    assert {row["id"] for row in after.values()} == {row["id"] for row in rows_.values()}
    assert all(row["schema_version"] == HEAD for row in after.values())
    assert all(row["migrations_count"] == len(REVISIONS) for row in after.values())


@pytest.mark.parametrize(
    ("selection", "code", "results", "attempts"),
    [
        # The hub's read ahead (started while the run loads) and its reports share one attempt.
        (["--instance", "inst1"], 7, [("inst1", "ok")], 1),
        # ... and with --all the hub is also a member, looked at once more, and fails the run.
        (["--all"], 8, [("hub", "unreachable"), ("inst1", "skipped")], 2),
    ],
)
def test_a_hub_that_hangs_costs_one_connect_timeout_per_use(
    fleet_dbs: FleetDbs,
    tmp_path: Path,
    selection: list[str],
    code: int,
    results: list[tuple[str, str]],
    attempts: int,
) -> None:
    _, urls = fleet_dbs(1)
    with silent_server() as (port, accepted):
        hung = write_fleet(
            tmp_path, f"postgresql://postgres@127.0.0.1:{port}/hub", urls, defaults='connect_timeout = "1s"'
        )
        done = run_cli(["upgrade", *selection, "--json", "--fleet", str(hung)], cwd=tmp_path)
        record = json.loads(done.stdout)
        assert done.returncode == code, (done.stdout, done.stderr)
        assert record["hub_report"] == "pending" and "ophelia-db sync --all" in done.stderr
        assert [(r["name"], r["result"]) for r in record["instances"]] == results
        assert len(accepted) == attempts, "the hub was tried again"


def test_hub_down_instances_still_upgrade_then_sync_fills_registry(
    fleet_dbs: FleetDbs, tmp_path: Path
) -> None:
    hub_url, urls = fleet_dbs(3)
    down_dir = tmp_path / "hub-down"
    down_dir.mkdir()
    down = write_fleet(down_dir, CLOSED_HUB, urls)

    proc = run_cli(
        ["upgrade", "--instance", "inst1", "--instance", "inst2", "--json", "--fleet", str(down)],
        cwd=tmp_path,
    )

    assert proc.returncode == 7, (proc.stdout, proc.stderr)
    record = json.loads(proc.stdout)
    assert record["hub_report"] == "pending"
    assert [(r["name"], r["result"], r["exit_code"]) for r in record["instances"]] == [
        ("inst1", "ok", 0),
        ("inst2", "ok", 0),
    ]
    assert "ophelia-db sync --all" in proc.stderr, f"stderr: {proc.stderr!r}"
    assert_consistent(urls["inst1"], HEAD)
    assert_consistent(urls["inst2"], HEAD)

    # Without --json: a no-op run, still one pending hub report, the hint on stderr.
    plain = invoke(["upgrade", "--instance", "inst1", "--fleet", str(down)])
    assert plain.exit_code == 7, (plain.stdout, plain.stderr)
    assert "ophelia-db sync --all" in plain.stderr
    assert "pending" in plain.stdout
    assert "sync --all" not in plain.stdout

    # --all with the hub down: the hub fails first, every instance is skipped, untouched.
    everything = invoke(["upgrade", "--all", "--json", "--fleet", str(down)])
    # The skipped instances carry their cause's code: the run exits 8, the hub is unreachable.
    assert everything.exit_code == 8, (everything.stdout, everything.stderr)
    results = {r["name"]: r for r in json.loads(everything.stdout)["instances"]}
    assert (results["hub"]["result"], results["hub"]["exit_code"]) == ("unreachable", 8)
    for name in ("inst1", "inst2", "inst3"):
        assert results[name]["result"] == "skipped", results[name]
        assert results[name]["applied"] == []
        assert "hub" in results[name]["error"]
    assert alembic_version(urls["inst3"]) == []
    assert not exists(urls["inst3"], "public.alembic_version")
    assert_consistent(urls["inst1"], HEAD)
    assert not exists(hub_url, "public.alembic_version"), "the real hub was never reached"

    # The hub is back (the right URL in another fleet.toml): bring it to head, then sync.
    up = write_fleet(tmp_path, hub_url, urls)
    fleet = load_fleet(up)
    assert ophelia_db.upgrade(fleet, fleet.select(["hub"]), jobs=1).exit_code == 0
    assert set(registry(hub_url)) == {"hub"}

    synced = run_cli(["sync", "--all", "--fleet", str(up)], cwd=tmp_path)
    assert synced.returncode == 0, (synced.stdout, synced.stderr)
    first = registry(hub_url)
    assert set(first) == {"hub", "inst1", "inst2", "inst3"}
    for name in ("hub", "inst1", "inst2"):
        row = first[name]
        assert (row["schema_version"], row["migrations_count"]) == (HEAD, len(REVISIONS)), name
        assert first[name]["last_run_status"] == "sync"
    assert first["inst3"]["schema_version"] is None
    assert first["inst3"]["migrations_count"] == 0
    assert first["inst3"]["last_run_status"] == "sync"
    assert first["hub"]["is_hub"] is True and first["inst1"]["is_hub"] is False

    again = invoke(["sync", "--all", "--json", "--fleet", str(up)])
    assert again.exit_code == 0, (again.stdout, again.stderr)
    assert json.loads(again.stdout)["hub_report"] == "ok"
    second = registry(hub_url)
    assert rows(hub_url, "SELECT count(*) FROM public.instance_registry") == [(4,)]
    assert {n: r["id"] for n, r in second.items()} == {n: r["id"] for n, r in first.items()}
    assert {n: (r["schema_version"], r["migrations_count"]) for n, r in second.items()} == {
        n: (r["schema_version"], r["migrations_count"]) for n, r in first.items()
    }


def test_sync_with_hub_down_says_so(fleet_dbs: FleetDbs, tmp_path: Path) -> None:
    _, urls = fleet_dbs(1)
    path = write_fleet(tmp_path, CLOSED_HUB, urls)

    result = invoke(["sync", "--instance", "inst1", "--json", "--fleet", str(path)])

    assert result.exit_code != 0
    assert "hub report" in result.stderr
    record = json.loads(result.stdout)
    assert record["hub_report"] in ("pending", "failed")
    assert record["instances"][0]["name"] == "inst1"


def test_a_locked_run_keeps_the_known_version_in_the_hub(fleet_dbs: FleetDbs, tmp_path: Path) -> None:
    hub_url, urls = fleet_dbs(1)
    path = write_fleet(tmp_path, hub_url, urls, defaults='lock_wait = "200ms"')
    assert invoke(["upgrade", "--all", "--fleet", str(path)]).exit_code == 0
    before = registry(hub_url)["inst1"]
    assert (before["schema_version"], before["migrations_count"], before["last_run_status"]) == (
        HEAD,
        len(REVISIONS),
        "ok",
    )

    with psycopg.connect(urls["inst1"], autocommit=True) as other_runner:
        other_runner.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
        locked = invoke(["upgrade", "--instance", "inst1", "--fleet", str(path)])

    assert locked.exit_code == 3, locked.stdout + locked.stderr
    assert f"inst1 locked {HEAD} -> {HEAD}" in locked.stdout  # what is known, not "base -> base"
    after = registry(hub_url)["inst1"]
    assert (after["schema_version"], after["migrations_count"]) == (HEAD, len(REVISIONS))
    assert after["last_run_status"] == "locked" and "lock is held" in after["last_error"]
    status = json.loads(invoke(["status", "--json", "--fleet", str(path)]).stdout)
    assert {row["name"]: row["current"] for row in status["instances"]}["inst1"] == HEAD


def test_reports_written_together_keep_their_order(fleet_dbs: FleetDbs, tmp_path: Path) -> None:
    # Reports go many to one statement; one instance reported twice in a flush (read, then
    # not read: locked) ends as written one after the other: the version read stays, the last
    # status wins.
    from ophelia_db.fleet.hub import RegistryUpdate, registry_writes

    hub, urls = fleet_dbs(2)
    fleet = load_fleet(write_fleet(tmp_path, hub, urls))
    assert ophelia_db.upgrade(fleet, fleet.select(names=["hub"])).exit_code == 0
    inst1, inst2 = fleet.instances["inst1"], fleet.instances["inst2"]
    updates = [
        RegistryUpdate(inst1, "ok", True, schema_version=REVISIONS[1], migrations_count=2,
                       schema_fingerprint="sha256:one"),
        RegistryUpdate(inst2, "ok", True, schema_version=HEAD, migrations_count=5),
        RegistryUpdate(inst1, "locked", False, error="inst1: locked by another run"),
    ]  # fmt: skip
    writes = registry_writes(updates)
    assert len(writes) == 2  # inst1 and inst2 together, then inst1 again
    with psycopg.connect(hub, autocommit=True) as conn:
        for sql, params in writes:
            conn.execute(sql, params)  # type: ignore[arg-type]
    found = rows(
        hub,
        "SELECT subdomain, schema_version, migrations_count, last_run_status, last_error, "
        "metadata->>'schema_fingerprint' FROM public.instance_registry WHERE NOT is_hub ORDER BY 1",
    )
    assert found == [
        ("inst1", REVISIONS[1], 2, "locked", "inst1: locked by another run", "sha256:one"),
        ("inst2", HEAD, 5, "ok", None, None),
    ]
