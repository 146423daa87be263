"""Fleet-scale runs against real PostgreSQL: locks, concurrency, time boxes, interrupts, waves."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time

import psycopg
import pytest

import ophelia_db
from ophelia_db.fleet.config import load_fleet
from ophelia_db.fleet.lock import MIGRATION_LOCK_KEY
from ophelia_db.run import fanout
from ophelia_db.run import select_shard as shard
from ophelia_db.run.upgrade import Progress
from tests.helpers import CHAIN, HEAD, OPHELIA_DB, chain_at, chain_locations, run_cli, write_fleet

SLOW_CHAIN = chain_locations("slow")
SHIPPED = [r.id for r in CHAIN.revisions]


def query(url: str, sql: str, *params):
    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.execute(sql, params)
        return cursor.fetchall() if cursor.description else None


def revision_of(url: str) -> str | None:
    rows = query(url, "SELECT version_num FROM alembic_version") if _has(url, "alembic_version") else []
    return rows[0][0] if rows else None


def _has(url: str, table: str) -> bool:
    return query(url, "SELECT to_regclass(%s) IS NOT NULL", f"public.{table}")[0][0]


def mirror_consistent(url: str) -> bool:
    """alembic_version, schema_version and schema_migrations tell the same story."""
    revision = revision_of(url)
    if not _has(url, "schema_version"):
        return revision in (None, "0001")
    current = query(url, "SELECT current_version FROM schema_version")
    history = [v for (v,) in query(url, "SELECT version FROM schema_migrations ORDER BY id")]
    expected = [*SHIPPED, "0105"]
    return current == [(revision,)] and history == expected[: expected.index(revision) + 1]


def test_lock_held_by_another_runner_exits_3_naming_it(tmp_path, fleet_dbs):
    hub, instances = fleet_dbs(1)
    fleet = write_fleet(tmp_path, hub, instances, defaults='lock_wait = "300ms"')
    with psycopg.connect(instances["inst1"], autocommit=True, application_name="other-runner") as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
        pid = holder.info.backend_pid
        done = run_cli(["upgrade", "--instance", "inst1", "--json"], fleet=fleet)
    assert done.returncode == 3, done.stderr
    result = json.loads(done.stdout)["instances"][0]
    assert result["result"] == "locked"
    assert f"pid {pid}" in result["error"] and "other-runner" in result["error"]
    assert revision_of(instances["inst1"]) is None


def test_eight_runners_at_once_apply_each_revision_exactly_once(tmp_path, fleet_dbs):
    hub, instances = fleet_dbs(3)
    fleet = write_fleet(tmp_path, hub, instances)
    env = {**os.environ, "OPHELIA_FLEET": str(fleet)}
    runs = [
        subprocess.Popen(
            [*OPHELIA_DB, "upgrade", "--all", "--json"], env=env, stdout=subprocess.PIPE, text=True
        )
        for _ in range(8)
    ]
    outputs = [(run.communicate(timeout=180)[0], run.returncode) for run in runs]
    assert [code for _, code in outputs] == [0] * 8
    applied: dict[str, list[str]] = {}
    for stdout, _ in outputs:
        for row in json.loads(stdout)["instances"]:
            applied.setdefault(row["name"], []).extend(row["applied"])
    assert {name: sorted(revs) for name, revs in applied.items()} == {
        name: SHIPPED for name in ["hub", *instances]
    }
    for url in [hub, *instances.values()]:
        assert revision_of(url) == SHIPPED[-1]
        history = query(url, "SELECT version, count(*) FROM schema_migrations GROUP BY version ORDER BY 1")
        assert history == [(rev, 1) for rev in SHIPPED]


def test_lock_timeout_retries_then_gives_up_at_previous_revision(tmp_path, fleet_dbs):
    hub, instances = fleet_dbs(1)
    url = instances["inst1"]
    fleet = write_fleet(tmp_path, hub, instances, defaults='lock_timeout = "1h"')
    assert run_cli(["upgrade", "--all"], fleet=fleet).returncode == 0
    query(url, "CREATE TABLE slow_target (id integer)")
    with psycopg.connect(url, application_name="long-report") as blocker:
        blocker.execute("SELECT * FROM slow_target")  # holds ACCESS SHARE until rollback
        done = run_cli(["upgrade", "--instance", "inst1", "--json"], fleet=fleet, locations=SLOW_CHAIN)
        blocker_pid = blocker.info.backend_pid
        blocker.rollback()
    assert done.returncode == 3, done.stderr
    error = json.loads(done.stdout)["instances"][0]["error"]
    # The revision file's own 300ms wins over the fleet's 1h.
    assert "0105" in error and "0.3s" in error and "3 attempts" in error
    assert f"pid {blocker_pid}" in error and "long-report" in error
    assert revision_of(url) == HEAD and not _has(url, "slow_marker")
    assert mirror_consistent(url)


def _wait_for_sleeping(urls: list[str], deadline: float) -> None:
    while time.monotonic() < deadline:
        for url in urls:
            rows = query(
                url,
                "SELECT 1 FROM pg_stat_activity WHERE wait_event = 'PgSleep'",
            )
            if rows:
                return
        time.sleep(0.05)
    raise AssertionError("no revision reached its long statement")


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_mid_run_rolls_back_releases_locks_and_next_run_completes(tmp_path, fleet_dbs, sig, code):
    hub, instances = fleet_dbs(3)
    fleet = write_fleet(tmp_path, hub, instances)
    assert run_cli(["upgrade", "--all"], fleet=fleet).returncode == 0
    for url in [hub, *instances.values()]:
        query(url, "CREATE TABLE slow_target (id integer)")
        dbname = query(url, "SELECT current_database()")[0][0]
        query(url, f"ALTER DATABASE {dbname} SET ophelia.test_sleep = '60'")
    env = {**os.environ, "OPHELIA_FLEET": str(fleet), "OPHELIA_VERSION_LOCATIONS": SLOW_CHAIN}
    hub_dbname = query(hub, "SELECT current_database()")[0][0]
    query(hub, f"ALTER DATABASE {hub_dbname} SET ophelia.test_sleep = '0'")
    run = subprocess.Popen(
        [*OPHELIA_DB, "upgrade", "--all", "--jobs", "2", "--json"], env=env, stdout=subprocess.PIPE, text=True
    )
    _wait_for_sleeping(list(instances.values()), time.monotonic() + 60)
    run.send_signal(sig)
    stdout, _ = run.communicate(timeout=60)
    assert run.returncode == code
    report = {row["name"]: row for row in json.loads(stdout)["instances"]}
    assert report["hub"]["result"] == "ok"
    for name, url in instances.items():
        assert revision_of(url) == HEAD, name  # the interrupted revision was rolled back
        assert not _has(url, "slow_marker")
        assert mirror_consistent(url)
        assert report[name]["result"] in ("failed", "skipped")
        held = query(url, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")
        assert held == [(0,)]
        dbname = query(url, "SELECT current_database()")[0][0]
        query(url, f"ALTER DATABASE {dbname} SET ophelia.test_sleep = '0'")
    again = subprocess.run(
        [*OPHELIA_DB, "upgrade", "--all"], env=env, capture_output=True, text=True, timeout=120
    )
    assert again.returncode == 0, again.stdout + again.stderr
    for url in instances.values():
        assert revision_of(url) == "0105" and mirror_consistent(url)


def test_dry_run_changes_nothing_and_takes_no_lock(tmp_path, fleet_dbs):
    hub, instances = fleet_dbs(2)
    fleet = write_fleet(tmp_path, hub, instances, defaults='lock_wait = "100ms"')
    with psycopg.connect(instances["inst1"], autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
        done = run_cli(["upgrade", "--all", "--dry-run", "--json"], fleet=fleet)
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)["instances"]
    assert [(r["name"], r["result"], r["applied"]) for r in rows] == [
        (name, "planned", SHIPPED) for name in ["hub", "inst1", "inst2"]
    ]
    assert json.loads(done.stdout)["hub_report"] == "ok"
    for url in [hub, *instances.values()]:
        assert not _has(url, "alembic_version")


def test_failed_canary_stops_the_rest(tmp_path, fleet_dbs):
    hub, instances = fleet_dbs(3)
    fleet = write_fleet(tmp_path, hub, instances, tags={"inst2": ["canary"]})
    query(instances["inst2"], "CREATE TABLE alembic_version (version_num varchar(32) primary key)")
    query(instances["inst2"], "INSERT INTO alembic_version VALUES ('9999')")
    done = run_cli(["upgrade", "--all", "--canary", "canary", "--json"], fleet=fleet)
    assert done.returncode == 7
    rows = {r["name"]: r for r in json.loads(done.stdout)["instances"]}
    assert rows["hub"]["result"] == "ok"
    assert rows["inst2"]["result"] == "refused" and rows["inst2"]["exit_code"] == 4
    assert rows["inst1"]["result"] == rows["inst3"]["result"] == "skipped"
    assert "canary" in rows["inst1"]["error"]
    assert revision_of(instances["inst1"]) is None and revision_of(instances["inst3"]) is None


def test_max_failures_halts_the_run(tmp_path, fleet_dbs):
    hub, instances = fleet_dbs(3)
    fleet = write_fleet(tmp_path, hub, instances)
    query(instances["inst1"], "CREATE TABLE alembic_version (version_num varchar(32) primary key)")
    query(instances["inst1"], "INSERT INTO alembic_version VALUES ('9999')")
    done = run_cli(["upgrade", "--all", "--max-failures", "1", "--jobs", "1", "--json"], fleet=fleet)
    assert done.returncode == 7
    rows = {r["name"]: r["result"] for r in json.loads(done.stdout)["instances"]}
    assert rows == {"hub": "ok", "inst1": "refused", "inst2": "skipped", "inst3": "skipped"}


def test_shards_cover_the_selection_exactly_once_without_the_hub(tmp_path):
    names = {f"town-{i}": f"postgresql://u@h/db{i}" for i in range(40)}
    fleet = load_fleet(write_fleet(tmp_path, "postgresql://u@h/hub", names))
    everyone = fleet.select(all_=True)
    shards = [shard(everyone, f"{k}/3") for k in (1, 2, 3)]
    covered = sorted(t.name for part in shards for t in part)
    assert covered == sorted(names)
    assert all(part for part in shards)
    assert shard(everyone, "2/3") == shards[1]
    bad = run_cli(["upgrade", "--all", "--shard", "0/3"], fleet=tmp_path / "fleet.toml")
    assert bad.returncode == 2 and bad.stderr.startswith("error: --shard")


def test_transaction_pooler_is_refused_before_any_lock(tmp_path):
    pooler = "postgresql://postgres.abc@aws-0-eu-west-3.pooler.supabase.com:6543/postgres"
    fleet = write_fleet(tmp_path, "postgresql://postgres@127.0.0.1:1/hub", {"corte": pooler})
    done = run_cli(["upgrade", "--instance", "corte", "--json"], fleet=fleet)
    assert done.returncode == 2
    error = json.loads(done.stdout)["instances"][0]["error"]
    assert "6543" in error and "5432" in error and "direct connection" in error


def test_lock_holder_named_by_application_name(tmp_path, fleet_dbs):
    """Every runner connection says who it is, so a waiting runner can name the holder."""
    from ophelia_db.fleet.lock import migration_lock

    hub, instances = fleet_dbs(1)
    fleet = write_fleet(tmp_path, hub, instances, defaults='lock_wait = "200ms"')
    target = load_fleet(fleet).get("inst1")
    with migration_lock(target):
        done = run_cli(["upgrade", "--instance", "inst1", "--json"], fleet=fleet)
    assert done.returncode == 3
    assert "(ophelia-db/" in json.loads(done.stdout)["instances"][0]["error"]


def test_a_bug_of_ours_fails_one_instance_with_exit_70_and_the_rest_carry_on(
    tmp_path, fleet_dbs, monkeypatch, caplog
):
    import ophelia_db
    from ophelia_db.run.mirror import MirrorHook

    hub, instances = fleet_dbs(2)
    fleet = load_fleet(write_fleet(tmp_path, hub, instances))
    original = MirrorHook.batch_sql

    def broken(self, revision, **where):
        if self.instance_id == "inst1" and revision == "0003":
            raise ZeroDivisionError("simulated bug")
        return original(self, revision, **where)

    monkeypatch.setattr(MirrorHook, "batch_sql", broken)
    report = ophelia_db.upgrade(fleet, fleet.select(["inst1", "inst2"]), jobs=1)
    rows = {r.name: r for r in report.instances}
    assert rows["inst1"].exit_code == 70 and "internal error" in rows["inst1"].error
    assert rows["inst2"].result == "ok"
    assert report.exit_code == 7
    # The bug struck while the message of all its revisions was being built: nothing was sent.
    assert revision_of(instances["inst1"]) is None and not _has(instances["inst1"], "schema_migrations")
    assert "Traceback" in caplog.text or any(r.exc_info for r in caplog.records)


def test_offline_sql_carries_each_revisions_time_box(tmp_path):
    from ophelia_db.run import offline_sql

    fleet = load_fleet(
        write_fleet(
            tmp_path, "postgresql://u@h/hub", {"inst1": "postgresql://u@h/i"}, defaults='lock_timeout = "7s"'
        )
    )
    chain = chain_at(SLOW_CHAIN)
    text = offline_sql(fleet.get("inst1"), start="0003", chain=chain)
    section_0004 = text[text.index("-- Running upgrade 0003 -> 0004") :]
    assert section_0004.splitlines()[1] == "SET LOCAL lock_timeout = '7000ms';"
    section_0005 = text[text.index("-- Running upgrade 0005 -> 0105") :]
    assert section_0005.splitlines()[1] == "SET LOCAL lock_timeout = '300ms';"


def test_offline_sql_time_boxes_the_first_revision_too(tmp_path):
    from ophelia_db.run import offline_sql

    fleet = load_fleet(write_fleet(tmp_path, "postgresql://u@h/hub", {"inst1": "postgresql://u@h/i"}))
    text = offline_sql(fleet.get("inst1"), from_database=False)
    # Alembic writes the first revision's line with no "from": "-- Running upgrade  -> 0001".
    first = text[text.index("-> 0001") :].splitlines()
    assert first[1] == "SET LOCAL lock_timeout = '5000ms';", first[:3]
    assert text.count("SET LOCAL lock_timeout") == len(CHAIN.revisions)


def test_pasted_offline_sql_records_the_instance_id(tmp_path, make_database):
    from ophelia_db.run import offline_sql

    url = make_database("pasted")
    fleet = load_fleet(write_fleet(tmp_path, "postgresql://u@h/hub", {"corte": url}))
    script = offline_sql(fleet.get("corte"), from_database=False)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(script)
    assert query(url, "SELECT current_version, instance_id FROM schema_version") == [(CHAIN.head, "corte")]


def test_a_killed_runner_releases_the_instance_within_seconds(tmp_path, fleet_dbs):
    hub, instances = fleet_dbs(1)
    url = instances["inst1"]
    fleet = write_fleet(tmp_path, hub, instances)
    assert run_cli(["upgrade", "--all"], fleet=fleet).returncode == 0
    query(url, "CREATE TABLE slow_target (id integer)")
    dbname = query(url, "SELECT current_database()")[0][0]
    query(url, f"ALTER DATABASE {dbname} SET ophelia.test_sleep = '600'")
    env = {**os.environ, "OPHELIA_FLEET": str(fleet), "OPHELIA_VERSION_LOCATIONS": SLOW_CHAIN}
    run = subprocess.Popen(
        [*OPHELIA_DB, "upgrade", "--instance", "inst1"], env=env, stdout=subprocess.DEVNULL
    )
    _wait_for_sleeping([url], time.monotonic() + 60)
    (runner_pid,) = query(
        # pg_stat_activity keeps a query's first kilobyte (track_activity_query_size), where the
        # lock's opening heads the message: the comment ahead of it names what runs.
        url,
        "SELECT pid FROM pg_stat_activity WHERE query LIKE '/* ophelia-db: inst1 0105 */%%' "
        "AND wait_event = 'PgSleep'",
    )[0]
    run.kill()  # SIGKILL: no handler runs, nothing is rolled back by the client
    run.wait(timeout=10)
    # The server notices the dead client within client_connection_check_interval (2 s by default):
    # its backend, transaction and advisory lock end, although the statement had 10 minutes to run.
    deadline = time.monotonic() + 5
    while query(url, "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", runner_pid) != [(0,)]:
        assert time.monotonic() < deadline, "the dead runner's session is still there after 5 s"
        time.sleep(0.1)
    assert query(url, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") == [(0,)]
    query(url, f"ALTER DATABASE {dbname} SET ophelia.test_sleep = '0'")
    again = run_cli(["upgrade", "--instance", "inst1"], fleet=fleet, locations=SLOW_CHAIN)
    assert again.returncode == 0, again.stdout + again.stderr
    assert revision_of(url) == "0105" and mirror_consistent(url)


def test_worker_processes_start_while_the_hub_migrates(tmp_path, fleet_dbs, monkeypatch):
    hub, instances = fleet_dbs(2)
    fleet = load_fleet(write_fleet(tmp_path, hub, instances))
    chain = chain_at(chain_locations("cic"))  # 0105 needs Alembic online: on every instance, in a worker
    warmed = threading.Event()
    original = fanout.Workers.warm

    def warm(self: fanout.Workers) -> None:
        warmed.set()
        original(self)

    monkeypatch.setattr(fanout.Workers, "warm", warm)
    hub_waited: list[bool] = []

    def on_start(target) -> None:
        if target.role == "hub":
            # The hub's migration is held until the workers are asked to start: it waited for
            # them (the fork server's start, ≈ 0.4 s) where they started only after it.
            hub_waited.append(warmed.wait(timeout=60))

    report = ophelia_db.upgrade(
        fleet, fleet.select(all_=True), jobs=4, chain=chain, progress=Progress(on_start=on_start)
    )
    assert hub_waited == [True]
    assert [(r.name, r.result, r.to_revision) for r in report.instances] == [
        ("hub", "ok", "0105"),
        ("inst1", "ok", "0105"),
        ("inst2", "ok", "0105"),
    ]
    for url in instances.values():
        assert mirror_consistent(url)
